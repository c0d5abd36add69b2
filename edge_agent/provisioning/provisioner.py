"""``Provisioner``: how models reach the store and start serving, and how they leave it.

- **Pull** (``pull``): an id the store does not have, asked for with an ``api_key``, is fetched from
  Roboflow's API (``roboflow_api.pull_package``) into the store's staging area and installed like any
  other package, so it serves from then on, offline too. Concurrent first requests for one id wait for
  one download; other ids are never held up. ``[models] offline`` turns this off.
- **Push** (``install_file``, ``install_url``): an uploaded file, or a URL with a sha256, is staged,
  verified and activated.
- **Activation** (``_activate``): the candidate is loaded beside the version that serves, warmed up
  and checked (``checks.check_candidate``: it runs, its outputs have the expected shapes, the task is
  the same, and on the golden set of ``[models] check_images`` its predictions agree with the serving
  ones); only then is it committed to the store and swapped in (``ModelManager.swap``: requests in
  flight finish on the old one, no request fails). A candidate that fails any check is discarded and
  the reason raised as ``ActivationRefused``; the old version serves on, untouched.
- **Rollback** (``rollback``): an earlier revision kept by the store goes through the same checks
  and swap.
- **Eviction** (``evict``): beyond ``[models] disk_budget_mb``, old revisions and then models unused
  for ``evict_after_days`` go, least recently used first; pinned, loaded, preloaded and pipeline
  models never do.

One activation runs at a time (a lock); pulls of different ids run in parallel.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import (
    CloudUnavailable,
    DownloadFailed,
    EdgeAgentError,
    Forbidden,
    InvalidInput,
    ModelImportError,
    ModelNotFound,
    NotReady,
    Unauthorized,
)
from edge_agent.provisioning import checks
from edge_agent.provisioning.download import DownloadPolicy, download, redact
from edge_agent.provisioning.roboflow_api import pull_package
from edge_agent.serving.loading import load_model, load_stored
from edge_agent.serving.manager import ModelManager
from edge_agent.settings import ModelsSettings
from edge_agent.store.manifest import parse_model_id
from edge_agent.store.model_store import ModelStore, Staged

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_CONCURRENT_PULLS = 2  # ids downloading from Roboflow at once
PULL_WAIT_S = 10.0  # a request for an id being pulled waits this long, then gets 503 + Retry-After
KEY_ERRORS = (Unauthorized, Forbidden)  # outcomes of one caller's key, never shared or remembered


def check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not SHA256.match(sha256):
        raise InvalidInput(f"sha256 must be 64 hexadecimal digits, got {sha256[:80]!r}")
    return sha256.lower()


def pull_into_store(store: ModelStore, model_id: str, api_key: str, cfg: ModelsSettings, device_id: str,
                    progress: Progress | None = None, commit_lock: threading.Lock | None = None) -> bool:
    """Fetch ``model_id`` from Roboflow's API (``cfg``: ``[models]``) and install it (no checks beyond
    the importer's: nothing serves this id yet; loading it is the check). A package the importer
    refuses is Roboflow's fault, not the caller's: ``DownloadFailed`` (502). Under ``commit_lock`` the
    install is skipped (False) when another install of the id got there first."""
    policy = DownloadPolicy.from_settings(cfg)
    staging = store.root / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="pull.", dir=staging))
    t0 = time.perf_counter()
    try:
        def on_bytes(done: int, total: int | None) -> None:
            if progress is not None:
                progress({"phase": "downloading", "bytes": done, "total": total})

        pull_package(model_id, api_key, folder, api_url=cfg.api_url, device_id=device_id, policy=policy,
                     progress=on_bytes)
        with commit_lock if commit_lock is not None else contextlib.nullcontext():
            if store.has(model_id):
                return False
            try:
                staged = store.stage(folder, model_id)
            except ModelImportError as exc:
                raise DownloadFailed(f"Roboflow's package of {model_id} cannot be used: {exc.message}",
                                     public=f"Roboflow's package of {model_id} cannot be used: "
                                            f"{_scrubbed(exc.public, folder)}") from exc
            store.commit(staged)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info("pulled %s from %s in %.2f s", model_id, cfg.api_url, time.perf_counter() - t0)
    return True


def _scrubbed(text: str, folder: Path) -> str:
    """``text`` without the local folder a file was staged in (for network callers)."""
    return text.replace(f"{folder}/", "").replace(str(folder), "the upload")


@dataclass
class _Pull:
    """One pull of an id in progress, or failed a moment ago: later callers wait for it or get its error."""

    done: threading.Event = field(default_factory=threading.Event)
    error: EdgeAgentError | None = None
    failed_at: float = 0.0


class Provisioner:
    def __init__(self, cfg: ModelsSettings, store: ModelStore, manager: ModelManager, device_id: str, *,
                 server_key: str | None = None, protected: Callable[[], set[str]] = set) -> None:
        """``cfg``: the ``[models]`` section; ``server_key``: this device's own HTTP API key (never sent to
        Roboflow); ``protected()``: ids eviction must leave alone beyond ``[models] pinned`` and what is
        loaded (the ones the configuration names, the running pipelines' models)."""
        self.cfg = cfg
        self.server_key = server_key
        self.engine_prefs = manager.engine_prefs
        self.store = store
        self.manager = manager
        self.device_id = device_id
        self.protected = protected
        self.policy = DownloadPolicy.from_settings(self.cfg)
        self._pulls: dict[str, _Pull] = {}
        self._lock = threading.Lock()
        self._activation = threading.Lock()
        self._downloads = threading.BoundedSemaphore(MAX_CONCURRENT_PULLS)
        self.pulls = 0
        self.activations = 0
        self.refusals = 0

    def counts(self) -> dict[str, int]:
        return {"pulled": self.pulls, "activated": self.activations, "refused": self.refusals}

    # -- pull --------------------------------------------------------------------------------

    def cloud_key(self, given: str | None) -> str | None:
        """The key to ask Roboflow with: the caller's, unless it is this device's own server key (never
        sent out), else ``[models] api_key``."""
        local = self.server_key
        if given and not (local is not None and hmac.compare_digest(given.encode(), local.encode())):
            return given
        return self.cfg.api_key.get_secret_value() if self.cfg.api_key is not None else None

    def pull(self, model_id: str, api_key: str | None) -> bool:
        """Fetch ``model_id`` from Roboflow when the store lacks it and a key is at hand; True when this
        call (or the one it waited for) installed it.

        One pull per id: concurrent callers wait for it (up to ``PULL_WAIT_S``, then 503 with
        Retry-After) and share its outcome, except a refused key (401/403), which says nothing about
        theirs; a failure is remembered for ``[models] pull_retry_s`` (callers get the same error at
        once instead of each waiting out the cloud); at most ``MAX_CONCURRENT_PULLS`` ids download at
        once (beyond: 503 at once). So a dead cloud never ties up every request thread."""
        if self.cfg.offline or self.manager.peek(model_id) is not None:  # every request passes here: cheap first
            return False
        api_key = self.cloud_key(api_key)
        if not api_key:
            return False
        model_id = self.manager.resolve(model_id)
        parse_model_id(model_id)
        if self.store.has(model_id):
            return False
        for _attempt in range(3):  # a waiter whose pull failed on another caller's key tries its own
            with self._lock:
                now, memory = time.monotonic(), self.cfg.pull_retry_s
                for stale in [k for k, v in self._pulls.items() if v.done.is_set() and now - v.failed_at > memory]:
                    del self._pulls[stale]
                pull = self._pulls.get(model_id)
                if pull is None:
                    if not self._downloads.acquire(blocking=False):  # not remembered: it says nothing of the id
                        raise CloudUnavailable(f"{MAX_CONCURRENT_PULLS} models are being downloaded already; "
                                               "retry in a moment")
                    pull = self._pulls[model_id] = _Pull()
                    break
            if not pull.done.wait(PULL_WAIT_S):
                raise NotReady(f"model {model_id} is being downloaded from Roboflow; retry in a moment")
            if pull.error is None:
                return True
            if not isinstance(pull.error, KEY_ERRORS):
                raise copy.copy(pull.error).with_traceback(None)  # each caller its own traceback
            with self._lock:  # the key was refused: that says nothing about this caller's key
                if self._pulls.get(model_id) is pull:
                    del self._pulls[model_id]
        else:
            raise CloudUnavailable(f"model {model_id}: Roboflow refused the pulls tried; retry in a moment")
        try:
            try:
                pull_into_store(self.store, model_id, api_key, self.cfg, self.device_id,
                                commit_lock=self._activation)
            finally:
                self._downloads.release()
            self.pulls += 1
            with self._lock:
                self._pulls.pop(model_id, None)
        except EdgeAgentError as exc:
            pull.error, pull.failed_at = exc, time.monotonic()
            if isinstance(exc, KEY_ERRORS):  # a bad key is not remembered for the id
                with self._lock:
                    if self._pulls.get(model_id) is pull:
                        del self._pulls[model_id]
            raise
        except BaseException:
            with self._lock:
                self._pulls.pop(model_id, None)
            raise
        finally:
            pull.done.set()
        self.evict_quietly(model_id)
        return True

    # -- push --------------------------------------------------------------------------------

    def install_any(self, source: str, model_id: str | None, **options: Any) -> dict[str, Any]:
        """``install_url`` for an http(s) URL, else ``install_file`` (the CLI's ``models add``)."""
        if model_id is None:
            raise InvalidInput("give the model id to install it under: --id project/version")
        if source.startswith(("http://", "https://")):
            return self.install_url(source, model_id, **options)
        return self.install_file(Path(source), model_id, **options)

    def install_file(self, source: Path, model_id: str, *, sha256: str | None = None, activate: bool = True,
                     progress: Progress | None = None, task: str | None = None,
                     class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Stage ``source`` (ONNX file, archive or Roboflow folder) as ``model_id``, check it and, with
        ``activate``, make it the version that serves; without, keep it as a revision to activate later."""
        parse_model_id(model_id)
        sha256 = check_sha256(sha256)
        if progress is not None:
            progress({"phase": "verifying"})
        try:
            staged = self.store.stage(source, model_id, task=task, class_names=class_names, sha256=sha256)
        except EdgeAgentError as exc:  # network callers never see where the device staged their file
            exc.public = _scrubbed(exc.public, Path(source).parent)
            raise
        return self._activate(staged, activate, progress)

    def install_url(self, url: str, model_id: str, *, sha256: str | None, activate: bool = True,
                    progress: Progress | None = None, **options: Any) -> dict[str, Any]:
        """Download ``url`` (its sha256 checked while it arrives), then ``install_file``."""
        parse_model_id(model_id)
        sha256 = check_sha256(sha256)
        staging = self.store.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="download.", dir=staging))
        try:
            target = folder / "package.onnx"  # the store reads an archive by its first bytes

            def on_bytes(done: int, total: int | None) -> None:
                if progress is not None:
                    progress({"phase": "downloading", "bytes": done, "total": total})

            t0 = time.perf_counter()
            _, size = download(url, target, self.policy, sha256=sha256, progress=on_bytes)
            log.info("downloaded %s (%d bytes) for %s in %.2f s", redact(url), size, model_id,
                     time.perf_counter() - t0)
            return self.install_file(target, model_id, sha256=None, activate=activate, progress=progress, **options)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- activation --------------------------------------------------------------------------

    def _reference(self, model_id: str) -> tuple[Any, bool]:
        """What a candidate is checked against: the loaded model of the id, else its current version
        loaded from the store for the check (True: close it afterwards), else None (a new id)."""
        serving = self.manager.peek(model_id)
        if serving is not None:
            return serving.model, False
        try:
            stored = self.store.get(model_id)
        except ModelNotFound:
            return None, False
        if stored.builtin:
            return None, False
        try:
            return load_stored(self.store, model_id, self.engine_prefs), True
        except (EdgeAgentError, OSError) as exc:  # a damaged current version must not block its repair
            log.warning("checking the new version of %s without the stored one, which cannot be loaded: %s",
                        model_id, exc)
            return None, False

    def _activate(self, staged: Staged, activate: bool, progress: Progress | None) -> dict[str, Any]:
        model_id = staged.model_id
        with self._activation:
            try:
                if progress is not None:
                    progress({"phase": "checking"})
                candidate = load_model(staged.manifest, staged.onnx, self.engine_prefs)
                try:
                    reference, temporary = self._reference(model_id)
                    try:
                        report = checks.check_candidate(candidate, serving=reference, images=self._golden(),
                                                        tolerance=self.cfg.check_tolerance)
                    finally:
                        if temporary:
                            reference.close()
                    if not report.ok:
                        self.refusals += 1
                        log.warning("refused the new version of %s: %s", model_id, report.reason)
                    checks.require_ok(report)
                    if not activate:
                        candidate.close()
                        revision = self.store.commit(staged, current=False)
                    else:
                        manifest = self.store.commit(staged)
                except BaseException:
                    candidate.close()
                    raise
            except BaseException:
                self.store.discard(staged)
                raise
            if not activate:
                self.evict_quietly(model_id)
                return {"model_id": model_id, "activated": False, "revision": revision.stamp,
                        "sha256": revision.sha256, "check": report.as_dict()}
            swapped = self.manager.swap(model_id, candidate, only_if_loaded=True)
            if swapped is None:
                candidate.close()
                self.manager.invalidate(model_id)  # a load of the old version in flight is not kept
            self.manager.schedule_engine(model_id)  # the new ONNX file has its own engine key
            self.activations += 1
            self.evict_quietly(model_id)
            log.info("activated %s (sha256 %s)%s", model_id, manifest.weights.sha256[:12],
                     ", now serving" if swapped is not None else "")
            return {"model_id": model_id, "activated": True, "serving": swapped is not None,
                    "sha256": manifest.weights.sha256, "check": report.as_dict()}


    def _golden(self) -> list[Any]:
        return checks.golden_images(self.cfg.check_images) if self.cfg.check_images else []

    def rollback(self, model_id: str, to: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Serve the newest earlier revision (or the one ``to`` names) again, after the same checks."""
        model_id = self.manager.resolve(model_id)
        staged = self.store.stage_revision(model_id, to)
        return self._activate(staged, True, progress)

    def activate(self, model_id: str, revision: str, progress: Progress | None = None) -> dict[str, Any]:
        """Make a kept revision (an install made with ``activate=False``) the version that serves."""
        return self.rollback(model_id, revision, progress)

    def describe(self, model_id: str) -> dict[str, Any]:
        stored = self.store.get(model_id)
        m = stored.manifest
        return {"model_id": m.model_id, "task": m.task, "sha256": m.weights.sha256, "bytes": m.weights.bytes,
                "builtin": stored.builtin, "loaded": self.manager.peek(model_id) is not None,
                "revisions": [{"revision": r.stamp, "sha256": r.sha256} for r in self.store.revisions(model_id)]
                if not stored.builtin else []}

    # -- disk budget -------------------------------------------------------------------------

    def in_use(self) -> set[str]:
        """Ids eviction leaves alone: pinned, loaded or being loaded, and what ``protected`` adds (the
        ids the configuration names, the running pipelines' models)."""
        ids = set(self.cfg.pinned) | {m.model_id for m in self.manager.loaded()} | self.manager.loading()
        ids |= self.protected()
        return {self.manager.resolve(i) for i in ids}

    def evict(self, *also_keep: str) -> list[str]:
        """Bring the store under its budget (no-op without one); what was removed."""
        if not self.cfg.disk_budget_mb:
            return []
        removed: list[str] = self.store.evict(self.cfg.disk_budget_mb * 1024 * 1024,
                                              self.cfg.evict_after_days * 86400.0, self.in_use() | set(also_keep))
        return removed

    def evict_quietly(self, *also_keep: str) -> None:
        """``evict``, logging instead of raising (after an install, keeping what was just installed;
        at start)."""
        try:
            self.evict(*also_keep)
        except OSError as exc:
            log.warning("cannot bring the model store under its disk budget: %s", exc)
