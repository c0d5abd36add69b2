"""Pose outputs: the keypoint columns of each detection to points in original-image pixels.

The columns are the ``extra`` of ``detect.Candidates``: per detection, K keypoints of ``dims``
values each, x and y in network-input pixels, then (when ``dims`` is 3) a visibility score.
"""

from __future__ import annotations

import numpy as np

from edge_agent.heads.preprocess import Transform


def points(extra: np.ndarray, count: int, dims: int, transform: Transform) -> np.ndarray:
    """(N, K, 3) float32: x and y mapped back through ``transform``, then the visibility score
    (1.0 for every keypoint when the model gives only x and y)."""
    raw = extra[:, : count * dims].reshape(-1, count, dims)
    out = np.ones((len(raw), count, 3), dtype=np.float32)
    out[..., :2] = transform.points_to_original(raw[..., :2])
    if dims == 3:
        out[..., 2] = raw[..., 2]
    return out
