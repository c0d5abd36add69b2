"""A loaded model: manifest + engine + the task head, behind ``infer``.

Owns the path of one inference: images -> preprocess into one batch buffer -> ``Engine.run`` ->
decode -> results. Engine errors are translated here into the ``edge_agent.errors`` tree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.errors import EngineFailure, InvalidInput
from edge_agent.heads import InferenceParams, detect, segment
from edge_agent.heads import classify as classify_head
from edge_agent.heads.preprocess import Transform, preprocess_into
from edge_agent.images import ImageLimits, load_image
from edge_agent.models.manifest import Manifest
from edge_agent.results import Classification, Detections, Result
from engines import Engine, EngineError


class Model:
    """Run a stored model. Thread-safe as long as the engine is (ONNX Runtime sessions are)."""

    def __init__(self, manifest: Manifest, engine: Engine) -> None:
        self.manifest = manifest
        self.engine = engine
        self.model_id = manifest.model_id
        self.task = manifest.task

    def __repr__(self) -> str:
        return f"Model({self.model_id!r}, task={self.task!r}, engine={self.engine.name!r})"

    def infer(
        self,
        images: Any,
        params: InferenceParams | None = None,
        limits: ImageLimits = ImageLimits(),
        **options: Any,
    ) -> Result | list[Result]:
        """Infer on one image or a list of images (any form ``load_image`` accepts).

        Options are the fields of ``InferenceParams`` (confidence, iou_threshold, class_filter, ...).
        A list in gives a list out; one image gives one result.
        """
        if params is None:
            if "class_filter" in options and options["class_filter"] is not None:
                options["class_filter"] = tuple(options["class_filter"])
            try:
                params = InferenceParams(**options)
            except TypeError as exc:
                raise InvalidInput(f"unknown inference option: {exc}") from None
        single = not isinstance(images, (list, tuple))
        sources = [images] if single else list(images)
        orient = self.manifest.preprocess.auto_orient and not params.disable_preproc_auto_orient
        decoded = [load_image(s, limits, auto_orient=orient) for s in sources]
        results = self.infer_arrays(decoded, params)
        return results[0] if single else results

    def infer_arrays(self, images: Sequence[np.ndarray], params: InferenceParams) -> list[Result]:
        """Infer on decoded H x W x 3 BGR images, in chunks of at most the engine's batch size."""
        results: list[Result] = []
        step = self.engine.max_batch
        for start in range(0, len(images), step):
            results.extend(self._run_chunk(images[start:start + step], params))
        return results

    def _run_chunk(self, images: Sequence[np.ndarray], params: InferenceParams) -> list[Result]:
        t0 = time.perf_counter()
        spec = self.manifest.input
        static = spec.batch
        batch = np.empty((static or len(images), 3, spec.height, spec.width), dtype=np.float32)
        transforms = [
            preprocess_into(image, self.manifest.preprocess, batch[i], params) for i, image in enumerate(images)
        ]
        if static and static > len(images):
            batch[len(images):] = 0.0  # pad a static batch; the extra rows are ignored
        try:
            outputs = self.engine.run(batch)
        except EngineError as exc:
            raise EngineFailure(f"model {self.model_id}: {exc}") from exc
        results: list[Result] = []
        for i, image in enumerate(images):
            results.append(self._decode(outputs, i, transforms[i], image.shape[:2], params))
        elapsed = time.perf_counter() - t0
        for r in results:
            r.time = elapsed
        return results

    def _decode(
        self,
        outputs: list[np.ndarray],
        i: int,
        transform: Transform,
        image_hw: tuple[int, int],
        params: InferenceParams,
    ) -> Result:
        m = self.manifest
        size = (int(image_hw[0]), int(image_hw[1]))
        if m.task == "classification":
            scores = classify_head.scores(outputs[0][i], m.output.layout, m.multilabel)
            return Classification(scores, m.class_names, size, m.multilabel, params.confidence)

        cand = detect.select(outputs[0][i], m.output.layout, len(m.class_names), params, m.class_names)
        xyxy = transform.boxes_to_original(cand.xyxy)
        polygons = keypoints = names = None
        if m.task == "instance-segmentation":
            nm = m.output.mask_channels
            polygons = segment.polygons(
                cand.extra[:, :nm], outputs[1][i], cand.xyxy, (m.input.height, m.input.width), transform, params
            )
        elif m.task == "keypoint-detection":
            k, d = m.output.keypoints, m.output.keypoint_dims
            raw = cand.extra[:, : k * d].reshape(-1, k, d)
            keypoints = np.ones((len(raw), k, 3), dtype=np.float32)
            keypoints[..., :2] = transform.points_to_original(raw[..., :2])
            if d == 3:
                keypoints[..., 2] = raw[..., 2]
            names = [m.keypoint_names_for(int(c)) for c in cand.class_id]
        return Detections(
            xyxy=xyxy,
            confidence=cand.confidence,
            class_id=cand.class_id,
            class_names=m.class_names,
            image_size=size,
            task=m.task,
            polygons=polygons,
            keypoints=keypoints,
            keypoint_names=names,
            keypoint_threshold=params.keypoint_confidence,
        )

    def close(self) -> None:
        self.engine.close()
