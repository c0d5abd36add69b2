"""The checks a new version of a model passes before it serves, and their report.

Owns ``check_candidate`` (the candidate runs, its raw outputs fit its manifest, it does the serving
version's task, and on the golden images it agrees with the serving version), ``CheckReport``,
``require_ok`` and ``golden_images``. It loads, stores and swaps nothing: the caller stages
(``ModelStore.stage`` / ``stage_revision``), loads (``serving.loading.load_model``), checks here,
and only then commits (``ModelStore.commit``) and swaps (``ModelManager.swap``).

The golden-set rule: every golden image is run through both versions with the default
``InferenceParams``; an image disagrees when ``compare.disagreement`` finds a difference beyond
``VERSION_TOLERANCE`` (a confident box with no box of the same class at IoU >= 0.5 and a score
within 0.2 on the other side; for classification, scores within 0.2 and the same top class). The
candidate is refused when more than ``tolerance`` of the images disagree: ``disagreeing / compared >
tolerance``. With 16 images and 0.1, one image may disagree and two may not; with fewer than 10
images, 0.1 lets none disagree. The golden set is compared only when both versions have the same
class list (a new version may add classes; the report's ``note`` says the comparison was skipped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ActivationRefused, EdgeAgentError
from edge_agent.params import InferenceParams
from edge_agent.results import Result
from edge_agent.serving.accelerate_setup import folder_images
from edge_agent.serving.compare import Tolerance, disagreement
from edge_agent.serving.model import Model
from edge_agent.store import importers
from edge_agent.store.manifest import Manifest

log = logging.getLogger(__name__)

# A new version is retrained, not recompiled: its boxes and scores move more than an engine's do.
VERSION_TOLERANCE = Tolerance(box_iou=0.5, confidence=0.2, min_confidence=0.5, keypoint_px=10.0,
                              keypoint_min_confidence=0.5)
GOLDEN_LIMIT = 16


@dataclass(frozen=True)
class CheckReport:
    model_id: str
    ok: bool
    reason: str | None  # why it was refused; None when ok
    seconds: float
    images_compared: int = 0
    disagreeing: int = 0
    first_disagreement: str | None = None
    note: str | None = None  # what was not checked, and why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_ok(report: CheckReport) -> None:
    """Raise ``ActivationRefused`` (409) with the report's reason when the candidate failed."""
    if not report.ok:
        raise ActivationRefused(f"{report.model_id}: the new version was not activated: {report.reason}")


def golden_images(folder: Path | None, limit: int = GOLDEN_LIMIT) -> list[np.ndarray]:
    """Up to ``limit`` images (.jpg, .jpeg, .png, .bmp, .webp, sorted by name) of ``folder`` as BGR
    arrays; unreadable files are skipped, a missing or empty folder gives none (and a warning)."""
    if folder is None:
        return []
    images = folder_images(Path(folder), limit)
    if not images:
        log.warning("golden images: none readable in %s; new versions are not compared with the serving one",
                    folder)
    return images


def output_problem(manifest: Manifest, outputs: Sequence[np.ndarray]) -> str | None:
    """Why one image's raw outputs (leading axis 1) do not fit ``manifest``, or None: the importer's
    rule (``importers.shape_problem``) applied to the shapes that came out."""
    return importers.shape_problem(manifest, [tuple(int(d) for d in o.shape) for o in outputs],
                                   Path(manifest.model_id))


def synthetic_image(manifest: Manifest) -> np.ndarray:
    """A fixed noise image of the model's input size, for a warm-up without a real image."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (manifest.input.height, manifest.input.width, 3), dtype=np.uint8)


def _warm_up(candidate: Model, image: np.ndarray) -> str | None:
    """Run the candidate once, step by step to see its raw outputs; why it cannot serve, or None."""
    params = InferenceParams()
    try:
        prepared = candidate.prepare(image, params)
        outputs = candidate.forward([prepared.tensor])[0]
    except EdgeAgentError as exc:
        return f"it does not run: {exc}"
    why = output_problem(candidate.manifest, outputs)
    if why:
        return why
    if not all(np.isfinite(o).all() for o in outputs):
        return "its outputs contain NaN or infinity"
    try:
        candidate.decode(outputs, prepared, params)
    except (EdgeAgentError, ValueError, IndexError) as exc:
        return f"its outputs cannot be decoded: {exc}"
    return None


def _disagreeing(reference: Sequence[Result], results: Sequence[Result],
                 tolerance: Tolerance) -> tuple[int, str | None]:
    """How many images disagree, and the first difference in words."""
    disagreeing, first = 0, None
    for n, (ref, cand) in enumerate(zip(reference, results), 1):
        why = disagreement([ref], [cand], tolerance)
        if why:
            disagreeing += 1
            first = first or f"image {n}: {why.removeprefix('image 1: ')}"
    return disagreeing, first


def check_candidate(candidate: Model, *, serving: Model | None, images: Sequence[np.ndarray] = (),
                    tolerance: float = 0.1, compare_tolerance: Tolerance = VERSION_TOLERANCE) -> CheckReport:
    """Whether ``candidate`` may replace ``serving`` (None: nothing serves this id yet).

    The candidate runs on a warm-up image (the first golden image, else ``synthetic_image``) and its
    raw outputs must fit its manifest; it must do the serving version's task; and on ``images`` the
    share of images whose predictions disagree with the serving version's must be at most
    ``tolerance`` (the module docstring has the rule).
    """
    t0 = time.perf_counter()

    def report(reason: str | None = None, **fields: Any) -> CheckReport:
        return CheckReport(candidate.model_id, reason is None, reason, time.perf_counter() - t0, **fields)

    if serving is not None and serving.task != candidate.task:
        return report(f"the task changed: the serving version does {serving.task}, the new one {candidate.task}")
    why = _warm_up(candidate, images[0] if len(images) else synthetic_image(candidate.manifest))
    if why:
        return report(why)
    if serving is None or not len(images):
        return report(note="not compared: " + ("nothing serves this id" if serving is None else "no golden images"))
    if serving.manifest.class_names != candidate.manifest.class_names:
        return report(note="not compared: the class lists differ "
                           f"({len(serving.manifest.class_names)} -> {len(candidate.manifest.class_names)} classes)")
    params = InferenceParams()
    try:
        reference = serving.run(images, params)
    except EdgeAgentError as exc:  # nothing to compare with; the candidate's own checks passed
        return report(note=f"not compared: the serving version fails on the golden images: {exc}")
    try:
        results = candidate.run(images, params)
    except EdgeAgentError as exc:
        return report(f"it fails on the golden images: {exc}")
    disagreeing, first = _disagreeing(reference, results, compare_tolerance)
    figures: dict[str, Any] = {"images_compared": len(images), "disagreeing": disagreeing,
                               "first_disagreement": first}
    if disagreeing / len(images) > tolerance:
        return report(f"{disagreeing} of {len(images)} golden images disagree with the serving version (at most "
                      f"{tolerance:.0%} may); {first}", **figures)
    return report(**figures)
