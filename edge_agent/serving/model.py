"""A loaded model (manifest + engine + the task heads) and the one way to run it, ``Model.run``.

Every inference in the project goes through ``run``: HTTP requests and pipeline frames (through
``LoadedModel.infer``, which hands it the model's batcher), the Python API's ``Model.infer`` (Roboflow's
response objects, ``edge_agent.responses``) and ``Model.infer_numpy`` (the numpy results), the CLI's
``infer``, the checks before a switch, selftest and the watchdog. One run: images ->
``prepare`` (preprocess each into its own (1, 3, H, W) tensor) -> ``forward`` (one engine run per
chunk of at most the engine's maximum batch) -> ``decode`` (the task heads) -> results, timed.
Engine errors are translated here into the ``edge_agent.errors`` tree.
"""

from __future__ import annotations

import difflib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.errors import EngineFailure, InvalidInput
from edge_agent.heads import classify as classify_head
from edge_agent.heads import detect, keypoints, segment
from edge_agent.heads.preprocess import Transform, preprocess_into
from edge_agent.images import ImageLimits, load_image
from edge_agent.params import InferenceParams
from edge_agent.results import Classification, Detections, Result
from edge_agent.store.manifest import Manifest
from engines import Engine, EngineError

if TYPE_CHECKING:
    from edge_agent.responses import CvInferenceResponse

log = logging.getLogger(__name__)

# Per tensor, its rows of every output: ``Model.forward``, or a batcher that gathers several callers.
Forward = Callable[[Sequence[np.ndarray]], list[list[np.ndarray]]]


@dataclass(frozen=True)
class Prepared:
    """One image ready for the engine: its input tensor and the way back to its pixels."""

    tensor: np.ndarray  # (1, 3, H, W) float32
    transform: Transform
    image_hw: tuple[int, int]


class Model:
    """Run a stored model. Thread-safe as long as the engine is (ONNX Runtime sessions are)."""

    def __init__(self, manifest: Manifest, engine: Engine) -> None:
        self.manifest = manifest
        self.engine = engine
        self.model_id = manifest.model_id
        self.task = manifest.task

    def __repr__(self) -> str:
        return f"Model({self.model_id!r}, task={self.task!r}, engine={self.engine.name!r})"

    def infer(self, image: Any, **kwargs: Any) -> list[CvInferenceResponse]:
        """Roboflow's ``model.infer``: one image or a list (any form ``load_image`` accepts) to a list
        of response objects, one per image (``edge_agent.responses``: ``.predictions``, ``.dict()``,
        ``sv.Detections.from_inference(response)``; ``response.result`` is the numpy result).

        Keywords that are ``InferenceParams`` fields (confidence, iou_threshold, class_agnostic_nms,
        max_detections, max_candidates, class_filter, keypoint_confidence, mask_decode_mode,
        tradeoff_factor, disable_preproc_*) apply; a value of None means the default. Any other
        keyword (Roboflow's ``fix_batch_size``, ``disable_active_learning``, ``source``, ...) is
        accepted and ignored, as Roboflow does, with a debug log (a warning for a near miss of a
        supported name, such as ``confidance``).
        """
        from edge_agent.responses import from_result  # lazy: pydantic

        params = roboflow_params(kwargs, self.model_id)
        results = self.run(self.load(image if isinstance(image, (list, tuple)) else [image], params), params)
        inference_id = str(uuid.uuid4())  # one per call, as one HTTP request's batch shares one
        return [from_result(r, inference_id) for r in results]

    def infer_numpy(
        self,
        images: Any,
        params: InferenceParams | None = None,
        limits: ImageLimits = ImageLimits(),
        **options: Any,
    ) -> Result | list[Result]:
        """The fast path: one image or a list of images to the numpy results (``Detections`` /
        ``Classification``), with no response objects built.

        Options are the fields of ``InferenceParams`` (confidence, iou_threshold, class_filter, ...);
        any other name is an ``InvalidInput``. A list in gives a list out; one image gives one result.
        """
        if params is None:
            try:
                params = InferenceParams(**options)
            except TypeError as exc:
                raise InvalidInput(f"unknown inference option: {exc}") from None
        single = not isinstance(images, (list, tuple))
        results = self.run(self.load([images] if single else images, params, limits), params)
        return results[0] if single else results

    def load(self, sources: Sequence[Any], params: InferenceParams,
             limits: ImageLimits = ImageLimits()) -> list[np.ndarray]:
        """Images in any form ``load_image`` accepts to BGR arrays, turned upright as ``auto_orient`` says."""
        orient = self.auto_orient(params)
        return [load_image(s, limits, auto_orient=orient) for s in sources]

    def auto_orient(self, params: InferenceParams) -> bool:
        """Whether an image is turned upright by its EXIF orientation before it is run: the model's
        preprocessing asks for it and the request does not turn it off."""
        return self.manifest.preprocess.auto_orient and not params.disable_preproc_auto_orient

    def run(self, images: Sequence[np.ndarray], params: InferenceParams,
            forward: Forward | None = None) -> list[Result]:
        """Loaded H x W x 3 BGR images to their results, in chunks of at most the engine's batch size.

        Each chunk is prepared, run through ``forward`` (default: the engine itself, in this thread)
        and decoded before the next is prepared, so memory stays bounded for any number of images.
        Every result's ``time`` is the seconds the whole call took.
        """
        run_engine = self.forward if forward is None else forward
        t0 = time.perf_counter()
        results: list[Result] = []
        step = self.engine.max_batch
        for start in range(0, len(images), step):
            prepared = [self.prepare(image, params) for image in images[start:start + step]]
            outputs = run_engine([p.tensor for p in prepared])
            results.extend(self.decode(out, p, params) for out, p in zip(outputs, prepared))
        elapsed = time.perf_counter() - t0
        for r in results:
            r.time = elapsed
        return results

    # The three steps of ``run``, separable so that a batcher can gather the ``forward`` of several
    # callers while each caller prepares and decodes its own images in its own thread, and so that
    # the checks before a switch can look at the raw outputs.

    def prepare(self, image: np.ndarray, params: InferenceParams) -> Prepared:
        """Preprocess one loaded BGR image into its own (1, 3, H, W) input tensor."""
        spec = self.manifest.input
        tensor = np.empty((1, 3, spec.height, spec.width), dtype=np.float32)
        transform = preprocess_into(image, self.manifest.preprocess, tensor[0], params)
        return Prepared(tensor, transform, (int(image.shape[0]), int(image.shape[1])))

    def forward(self, tensors: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Run the engine once on the stacked tensors; per tensor, its rows of every output.

        One tensor goes to the engine as it is (no copy); several are stacked into one batch. A
        static-batch engine gets its batch padded with zeros (the extra rows are ignored).
        """
        n = len(tensors)
        if n > self.engine.max_batch:
            raise InvalidInput(f"batch of {n} exceeds the engine's maximum of {self.engine.max_batch}")
        static = self.manifest.input.batch
        if n == 1 and not (static and static > 1):
            batch = tensors[0]
        else:
            spec = self.manifest.input
            batch = np.empty((static or n, 3, spec.height, spec.width), dtype=np.float32)
            for i, t in enumerate(tensors):
                batch[i] = t[0]
            if static and static > n:
                batch[n:] = 0.0
        try:
            outputs = self.engine.run(batch)
        except EngineError as exc:
            raise EngineFailure(f"model {self.model_id}: {exc}", public=f"model {self.model_id}: {exc.public}") from exc
        return [[out[i:i + 1] for out in outputs] for i in range(n)]

    def decode(self, outputs: list[np.ndarray], prepared: Prepared, params: InferenceParams) -> Result:
        """One image's engine outputs (leading axis of 1) to its result, in original-image pixels."""
        m = self.manifest
        size = prepared.image_hw
        if m.task == "classification":
            scores = classify_head.scores(outputs[0][0], m.output.layout, m.multilabel)
            return Classification(scores, m.class_names, size, m.multilabel, params.confidence)

        transform = prepared.transform
        cand = detect.select(outputs[0][0], m.output.layout, len(m.class_names), params, m.class_names)
        polygons = points = names = None
        if m.task == "instance-segmentation":
            nm = m.output.mask_channels
            polygons = segment.polygons(
                cand.extra[:, :nm], outputs[1][0], cand.xyxy, (m.input.height, m.input.width), transform, params
            )
        elif m.task == "keypoint-detection":
            points = keypoints.points(cand.extra, m.output.keypoints, m.output.keypoint_dims, transform)
            names = [m.keypoint_names_for(int(c)) for c in cand.class_id]
        return Detections(
            xyxy=transform.boxes_to_original(cand.xyxy),
            confidence=cand.confidence,
            class_id=cand.class_id,
            class_names=m.class_names,
            image_size=size,
            task=m.task,
            polygons=polygons,
            keypoints=points,
            keypoint_names=names,
            keypoint_threshold=params.keypoint_confidence,
        )

    def close(self) -> None:
        self.engine.close()


_PARAMS = frozenset(f.name for f in fields(InferenceParams))


_FLOATS = frozenset({"confidence", "iou_threshold", "keypoint_confidence", "tradeoff_factor"})
_INTS = frozenset({"max_detections", "max_candidates"})
_BOOLS = frozenset({"class_agnostic_nms", "disable_preproc_auto_orient", "disable_preproc_contrast",
                    "disable_preproc_grayscale", "disable_preproc_static_crop"})


def _typed(name: str, value: Any) -> Any:
    """A keyword of ``infer`` as ``InferenceParams`` takes it, or an ``InvalidInput`` naming it and the
    accepted forms: ``confidence="best"``/``"default"`` is the default threshold (as on HTTP), numbers
    may come as text (``max_detections="5"``), and one class name is a class filter of one."""
    if name == "confidence" and isinstance(value, str) and value.lower() in ("best", "default"):
        return InferenceParams.confidence
    if name in _FLOATS or name in _INTS:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)):
            extra = ' or "best"/"default"' if name == "confidence" else ""
            raise InvalidInput(f"{name} must be a number{extra}, got {value!r}")
        if name in _FLOATS:
            return float(number)
        if float(number) != int(number):
            raise InvalidInput(f"{name} must be a whole number, got {value!r}")
        return int(number)
    if name in _BOOLS:
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInput(f"{name} must be True or False, got {value!r}")
        return bool(value)
    if name == "class_filter":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise InvalidInput(f"class_filter must be a class name or a list of class names, got {value!r}")
        return tuple(names)
    if name == "mask_decode_mode" and not isinstance(value, str):
        raise InvalidInput(f"mask_decode_mode must be a string, got {value!r}")
    return value


def roboflow_params(options: dict[str, Any], model_id: str = "") -> InferenceParams:
    """``InferenceParams`` from the keywords of Roboflow's ``infer``: its own fields apply (None means
    the default; each checked and converted by ``_typed``), every other keyword is ignored with a log
    line, as Roboflow ignores what it does not use."""
    known: dict[str, Any] = {}
    for name, value in options.items():
        if name in _PARAMS:
            if value is not None:
                known[name] = _typed(name, value)
            continue
        near = difflib.get_close_matches(name, _PARAMS, n=1, cutoff=0.8)
        if near:
            log.warning("%s: ignored option %s=%r (did you mean %r?)", model_id, name, value, near[0])
        else:
            log.debug("%s: ignored option %s=%r (not used by edge-agent)", model_id, name, value)
    return InferenceParams(**known)
