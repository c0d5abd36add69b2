"""The one exception tree of edge-agent: every error the project raises is a member.

Each class carries an HTTP status and a stable ``code``. The root and the engines' branch are defined
in ``engines/base.py`` (the lowest layer, so that ``engines``, which never imports ``edge_agent``,
raises members of this tree); the rest are defined here, except the three drawn with their module.

::

    EdgeAgentError                 500 internal_error       (engines/base.py) the root
    ├── EngineError                500 internal_error       (engines/base.py) anything an engine raises;
    │   │                                                   the serving layer translates it at its
    │   │                                                   boundary (EngineFailure, ModelLoadFailed)
    │   ├── EngineUnavailable      the runtime is not installed or no device answers
    │   │   └── TensorRTUnavailable  (serving/accelerate_setup.py) no TensorRT here to build with
    │   ├── EngineLoadError        the model file cannot be loaded by this runtime
    │   ├── EngineRunError         a run failed (input shape, memory, device)
    │   ├── BuildFailed            (engines/trt_build.py) a TensorRT build or its check made no usable plan
    │   ├── BuildOutdated          (engines/trt_queue.py) the model was replaced while its plan was built
    │   └── PycudaBuildError       (engines/pycuda_build.py) the pycuda wheel could not be built
    │       └── BuildSkipped       an earlier build failed with the same prerequisites
    ├── InvalidInput               400 invalid_input        bad parameters from the caller
    │   ├── ImageLoadError         400 image_load_failed    "Could not load input image. Cause: ..."
    │   ├── InvalidModelId         400 invalid_model_id     not "<project>/<version>"
    │   ├── ModelImportError       400 model_import_failed  a file offered to the store is unusable
    │   │   └── ModelAlreadyInstalled  400 model_import_failed  its id is installed (``model_id``); replace it
    │   ├── ChecksumMismatch       400 checksum_mismatch    a file is not the one its sha256 names
    │   ├── GstSourceError         400 video_source_unavailable  a GStreamer reference this device cannot run
    │   └── CommandError           400 invalid_command      an MQTT command's arguments are wrong
    │       ├── CommandNotJson     400 invalid_json         its payload is not a JSON object
    │       ├── UnknownCommand     404 unknown_command      no command of that name
    │       └── CommandTooLarge    413 too_large            its payload is over the size cap
    ├── Unauthorized               401 unauthorized         Roboflow's API refused the api_key
    ├── Forbidden                  403 forbidden            the key may not read that model / no upload key
    ├── ModelNotFound              404 model_not_found      no such id in the model store (or at Roboflow)
    ├── PipelineNotFound           404 pipeline_not_found   no pipeline of that id
    ├── ActivationRefused          409 activation_refused   a new version failed its checks; the old serves
    ├── ModelInUse                 409 model_in_use         a running pipeline uses the model to be removed
    ├── PayloadTooLarge            413 payload_too_large    an upload or download over its size cap
    ├── ModelLoadFailed            500 model_package_broken the stored package cannot be loaded
    ├── UnsupportedModel           501 unsupported_model    a task or layout we do not decode
    ├── EngineFailure              500 engine_failure       the runtime failed while running
    ├── ConfigError                500 config_error         the configuration cannot be used (key and source)
    ├── DownloadFailed             502 download_failed      a model download broke off or was refused
    ├── UploadFailed               502 upload_failed        an active-learning target refused or was away
    ├── Overloaded                 503 overloaded           queue full: retry later
    ├── CloudUnavailable           503 cloud_unavailable    Roboflow's API cannot be reached (reason given)
    └── NotReady                   503 not_ready            still starting or loading: retry later

Mapped to answers in one place each: HTTP in the error handler of ``http/app.py`` (a member without a
status of its own, such as an ``EngineError``, answers 500 "Internal error." and its detail goes only to
the log), MQTT in ``mqtt.commands.Commands.handle`` (``type`` = ``code``). Nothing here imports Flask.

Outside the tree, on purpose: exceptions that never leave the module raising them and are control flow,
not errors (``pipelines.sources.EndOfStream``, ``pipelines.gst.GstOpenError``,
``provisioning.download._Broken``: a body that broke off, fetched again).
"""

from __future__ import annotations

from engines.base import EdgeAgentError, EngineError

__all__ = ["EdgeAgentError", "EngineError"]  # the root and the engines' branch, defined in engines/base.py


class InvalidInput(EdgeAgentError):
    status = 400
    code = "invalid_input"


class ImageLoadError(InvalidInput):
    """An image could not be read; ``cause`` is the public detail (docs/http-api.md §5 strings)."""

    code = "image_load_failed"

    def __init__(self, cause: str) -> None:
        super().__init__(f"Could not load input image. Cause: {cause}")
        self.cause = cause


class InvalidModelId(InvalidInput):
    code = "invalid_model_id"


class ModelImportError(InvalidInput):
    code = "model_import_failed"


class ModelAlreadyInstalled(ModelImportError):
    """An install without ``replace`` of an id the store has; ``model_id`` names it."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"{model_id!r} is already installed; remove it first or replace it")
        self.model_id = model_id


class ModelNotFound(EdgeAgentError):
    status = 404
    code = "model_not_found"


class ModelLoadFailed(EdgeAgentError):
    code = "model_package_broken"


class UnsupportedModel(EdgeAgentError):
    status = 501
    code = "unsupported_model"


class EngineFailure(EdgeAgentError):
    code = "engine_failure"


class Overloaded(EdgeAgentError):
    status = 503
    code = "overloaded"


class NotReady(EdgeAgentError):
    status = 503
    code = "not_ready"


class ChecksumMismatch(InvalidInput):
    code = "checksum_mismatch"


class Unauthorized(EdgeAgentError):
    status = 401
    code = "unauthorized"


class Forbidden(EdgeAgentError):
    status = 403
    code = "forbidden"


class ActivationRefused(EdgeAgentError):
    status = 409
    code = "activation_refused"


class ModelInUse(EdgeAgentError):
    status = 409
    code = "model_in_use"


class PayloadTooLarge(EdgeAgentError):
    status = 413
    code = "payload_too_large"


class DownloadFailed(EdgeAgentError):
    status = 502
    code = "download_failed"


class CloudUnavailable(EdgeAgentError):
    status = 503
    code = "cloud_unavailable"


class PipelineNotFound(EdgeAgentError):
    status = 404
    code = "pipeline_not_found"


class ConfigError(EdgeAgentError):
    """The configuration cannot be used; the message names the key and its source (file and line,
    environment variable, or flag)."""

    code = "config_error"


class GstSourceError(InvalidInput):
    """A GStreamer video reference this device cannot run, and why; trying again will not help."""

    code = "video_source_unavailable"


class CommandError(InvalidInput):
    """An MQTT command the device cannot take; its ``code`` is the reply's ``error.type``."""

    code = "invalid_command"


class CommandNotJson(CommandError):
    code = "invalid_json"


class UnknownCommand(CommandError):
    status = 404
    code = "unknown_command"


class CommandTooLarge(CommandError):
    status = 413
    code = "too_large"


class UploadFailed(EdgeAgentError):
    """An active-learning upload target refused a sample or could not be reached (the sample waits in
    the spool and is tried again)."""

    status = 502
    code = "upload_failed"
