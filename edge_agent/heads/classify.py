"""Classification outputs to per-class scores (docs/http-api.md §10.7.5)."""

from __future__ import annotations

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    probabilities: np.ndarray = e / e.sum()
    return probabilities


def scores(row: np.ndarray, layout: str, multilabel: bool) -> np.ndarray:
    """Probabilities for one image's output row.

    Single-label: softmax, unless the row already is a probability distribution (ultralytics exports
    include the softmax; applying it twice would squash the scores). Multi-label: sigmoid unless the
    values already lie in [0, 1].
    """
    row = row.astype(np.float32).ravel()
    in_unit = bool(row.min() >= 0.0 and row.max() <= 1.0)
    if multilabel:
        return row if in_unit else (1.0 / (1.0 + np.exp(-row))).astype(np.float32)
    if layout == "probabilities" and in_unit and abs(float(row.sum()) - 1.0) < 1e-3:
        return row
    return _softmax(row).astype(np.float32)
