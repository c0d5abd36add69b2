"""edge-agent: a computer-vision appliance daemon, and its Python API.

    from edge_agent import get_model
    model = get_model("shapes/1")                     # the bundled demo detector
    results = model.infer("image.jpg", confidence=0.5)  # Roboflow's response objects, one per image
    print(results[0].predictions[0].class_name)       # or sv.Detections.from_inference(results[0])
    fast = model.infer_numpy("image.jpg")             # the numpy result (Detections), no objects built

    pipeline = edge_agent.InferencePipeline.init("shapes/1", "video.mp4", on_prediction=print)
    pipeline.start(); pipeline.join()                 # every frame's result to the callback

Importing this package does no work: heavy modules load when first used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edge_agent.api import InferencePipeline
    from edge_agent.serving.model import Model
    from edge_agent.settings import Settings
    from edge_agent.store.model_store import ModelStore

__all__ = ["InferencePipeline", "__version__", "get_model", "open_store"]


def __getattr__(name: str) -> object:
    if name == "InferencePipeline":  # loaded on first use: it brings OpenCV and the runtime
        from edge_agent.api import InferencePipeline  # lazy: the runtime

        return InferencePipeline
    raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")


def open_store(settings: Settings | None = None) -> ModelStore:
    """The model store the settings point at (environment by default)."""
    from edge_agent.settings import Settings  # lazy: pydantic
    from edge_agent.store.model_store import ModelStore  # lazy: pydantic

    settings = settings or Settings.from_env()
    return ModelStore(settings.models_dir, keep_revisions=settings.models.keep_revisions)


def get_model(model_id: str, api_key: str | None = None, *, settings: Settings | None = None,
              **kwargs: Any) -> Model:
    """Load ``model_id`` ("project/version") from the model store, ready to ``infer``: Roboflow's
    ``inference.get_model``, whose ``infer`` returns Roboflow's response objects (``Model.infer``).

    With an ``api_key``, a model the store lacks is first pulled from Roboflow's API (unless the
    settings say ``[models] offline``) and kept in the store. Each call loads a fresh model; keep the
    returned object to reuse it. Other keywords of Roboflow's ``get_model`` are ignored (debug log).
    """
    if api_key is not None and not isinstance(api_key, str):  # get_model(id, settings): the old order
        raise TypeError(f"get_model's second argument is the api_key (a str), got {type(api_key).__name__}: "
                        "settings is keyword-only, get_model(model_id, settings=...)")
    if kwargs:
        logging.getLogger(__name__).debug("get_model(%r): ignored options %s", model_id, sorted(kwargs))
    from edge_agent.serving.loading import load_stored  # lazy: pydantic, the engines
    from edge_agent.settings import Settings  # lazy: pydantic
    from engines import choose_backend  # lazy: the device probe

    settings = settings or Settings.from_env()
    store = open_store(settings)
    api_key = api_key or (settings.models.api_key.get_secret_value() if settings.models.api_key else None)
    if api_key and not settings.models.offline and not store.has(model_id):
        from edge_agent.provisioning.provisioner import pull_into_store  # lazy: the download stack

        pull_into_store(store, model_id, api_key, settings.models, settings.mqtt.device_id)
    # ONNX Runtime's preferences (CUDA provider where present): TensorRT plans are the daemon's, built
    # and checked in the background; ``engine.backend = "trt"`` must not stop the Python API.
    return load_stored(store, model_id, choose_backend(settings.engine_prefs).ort_prefs)
