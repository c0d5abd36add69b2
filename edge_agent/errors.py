"""The one exception tree of edge-agent. Each class carries an HTTP status and a stable ``code``.

::

    EdgeAgentError                 500 internal_error
    ├── InvalidInput               400 invalid_input        bad parameters from the caller
    │   ├── ImageLoadError         400 image_load_failed    "Could not load input image. Cause: ..."
    │   ├── InvalidModelId         400 invalid_model_id     not "<project>/<version>"
    │   ├── ModelImportError       400 model_import_failed  a file offered to the store is unusable
    │   └── ChecksumMismatch       400 checksum_mismatch    a file is not the one its sha256 names
    ├── Unauthorized               401 unauthorized         Roboflow's API refused the api_key
    ├── Forbidden                  403 forbidden            the key may not read that model / no upload key
    ├── ModelNotFound              404 model_not_found      no such id in the model store (or at Roboflow)
    ├── ActivationRefused          409 activation_refused   a new version failed its checks; the old serves
    ├── PayloadTooLarge            413 payload_too_large    an upload or download over its size cap
    ├── ModelLoadFailed            500 model_package_broken the stored package cannot be loaded
    ├── UnsupportedModel           501 unsupported_model    a task or layout we do not decode
    ├── EngineFailure              500 engine_failure       the runtime failed while running
    ├── DownloadFailed             502 download_failed      a model download broke off or was refused
    ├── Overloaded                 503 overloaded           queue full: retry later
    ├── CloudUnavailable           503 cloud_unavailable    Roboflow's API cannot be reached (reason given)
    └── NotReady                   503 not_ready            still starting or loading: retry later

Engines raise ``engines.EngineError``; the model layer translates those at its boundary and chains
the original. Nothing here imports Flask: the HTTP layer maps this tree to JSON in one handler.
"""

from __future__ import annotations

from engines.base import EdgeAgentError, EngineError

__all__ = ["EdgeAgentError", "EngineError"]  # the root and the engines' branch, defined in engines/base.py


class InvalidInput(EdgeAgentError):
    status = 400
    code = "invalid_input"


class ImageLoadError(InvalidInput):
    """An image could not be read; ``cause`` is the public detail (spec §5 strings)."""

    code = "image_load_failed"

    def __init__(self, cause: str) -> None:
        super().__init__(f"Could not load input image. Cause: {cause}")
        self.cause = cause


class InvalidModelId(InvalidInput):
    code = "invalid_model_id"


class ModelImportError(InvalidInput):
    code = "model_import_failed"


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


class PayloadTooLarge(EdgeAgentError):
    status = 413
    code = "payload_too_large"


class DownloadFailed(EdgeAgentError):
    status = 502
    code = "download_failed"


class CloudUnavailable(EdgeAgentError):
    status = 503
    code = "cloud_unavailable"
