"""The ``edge-agent`` command: parse flags, build Settings, call into the library. No logic of its own.

    edge-agent [--config FILE] config check | show
    edge-agent serve [--host H] [--port P] [--threads N] [--preload ID ...] [--batching auto|on|off]
    edge-agent infer IMAGE [--model ID] [--confidence C] [--visualize OUT.jpg]
    edge-agent models add SOURCE|URL [--id PROJECT/VERSION] [--task TASK] [--classes a,b] [--replace]
                          [--sha256 HEX] [--no-activate]
    edge-agent models list | show ID | remove ID | rollback ID [--to REVISION] | activate ID REVISION
    edge-agent models evict
    edge-agent compile ID [--force] [--precision fp16|fp32|int8] [--dla-core N]
    edge-agent selftest [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.errors import EdgeAgentError, ModelAlreadyInstalled, ModelImportError
from edge_agent.params import InferenceParams  # light: dataclasses and the error tree

if TYPE_CHECKING:  # annotations only: each command imports what it runs (``edge-agent config check`` stays light)
    from edge_agent.provisioning.provisioner import Provisioner
    from edge_agent.settings import Settings
    from edge_agent.store.model_store import ModelStore, StoredModel

DEFAULT_MODEL = "shapes/1"
SAMPLE_IMAGE = Path(__file__).resolve().parent / "demo" / "sample.jpg"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="Computer-vision appliance daemon and tools.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("--config", type=Path, help="configuration file (default: EDGE_AGENT_CONFIG, else "
                                               "/etc/edge-agent/config.toml when it exists)")
    p.add_argument("--state-dir", type=Path, help="model store and state folder (overrides paths.state_dir)")
    sub = p.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="check or show the effective configuration")
    csub = config.add_subparsers(dest="action", required=True)
    csub.add_parser("check", help="validate the file, environment and flags; exit 2 naming the bad key")
    csub.add_parser("show", help="print the effective settings as JSON (secrets masked)")

    serve = sub.add_parser("serve", help="run the HTTP server (Roboflow-compatible API on port 9001)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="TCP port (default 9001)")
    serve.add_argument("--threads", type=int, help="request threads (default 8)")
    serve.add_argument("--preload", action="append", metavar="ID", help="load this model at start (repeatable)")
    serve.add_argument("--batching", choices=["auto", "on", "off"],
                       help="gather concurrent requests into one engine run (auto: on for GPU engines)")
    serve.add_argument("--no-batching", dest="batching", action="store_const", const="off",
                       help="same as --batching off")
    serve.add_argument("--max-queue-delay-ms", type=float, help="wait up to this long to fill a batch (default 0)")

    infer = sub.add_parser("infer", help="run a model on image files and print Roboflow JSON")
    infer.add_argument("images", nargs="*", help="image files or URLs (default: the bundled sample image)")
    infer.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default {DEFAULT_MODEL})")
    infer.add_argument("--confidence", type=float, default=0.4)
    infer.add_argument("--iou-threshold", type=float, default=0.3)
    infer.add_argument("--max-detections", type=int, default=300)
    infer.add_argument("--class-filter", help="comma-separated class names to keep")
    infer.add_argument("--class-agnostic-nms", action="store_true")
    infer.add_argument("--keypoint-confidence", type=float, default=0.0)
    infer.add_argument("--visualize", type=Path, metavar="OUT.jpg",
                       help="write the drawing here (with several images: OUT-0.jpg, OUT-1.jpg, ...)")
    infer.add_argument("--no-labels", action="store_true", help="draw without class labels")

    models = sub.add_parser("models", help="manage the model store")
    msub = models.add_subparsers(dest="action", required=True)
    add = msub.add_parser("add", help="import an ultralytics ONNX file, a Roboflow model folder or an archive "
                                      "(a path, or an http(s) URL to download)")
    add.add_argument("source")
    add.add_argument("--id", dest="model_id", help="project/version (Roboflow folders may name their own)")
    add.add_argument("--task", choices=["object-detection", "instance-segmentation", "keypoint-detection",
                                        "classification"], help="when the ONNX file has no metadata")
    add.add_argument("--classes", help="comma-separated class names, when the ONNX file has none")
    add.add_argument("--replace", action="store_true", help="install as a new version of an installed id (the "
                                                            "old one is kept for rollback; implied by a URL)")
    add.add_argument("--sha256", help="refuse a file with another sha256 (recommended for URLs)")
    add.add_argument("--no-activate", dest="activate", action="store_false",
                     help="keep a new version of an installed id as a revision (activate it later)")
    rollback = msub.add_parser("rollback", help="go back to the previous version of a model (after checks)")
    rollback.add_argument("model_id")
    rollback.add_argument("--to", help="a revision ('models show' lists them); default: the newest earlier one")
    activate = msub.add_parser("activate", help="make a kept revision the version that serves (after checks)")
    activate.add_argument("model_id")
    activate.add_argument("revision")
    msub.add_parser("evict", help="bring the store under [models] disk_budget_mb now")
    msub.add_parser("list", help="list installed models")
    show = msub.add_parser("show", help="print a model's manifest")
    show.add_argument("model_id")
    remove = msub.add_parser("remove", help="remove a model from the store")
    remove.add_argument("model_id")

    compile_ = sub.add_parser("compile", help="build a model's TensorRT engine now (with a progress bar), "
                                              "or confirm the cached one")
    compile_.add_argument("model_id")
    compile_.add_argument("--force", action="store_true", help="build even when a valid engine is cached, or "
                                                               "when the last build failed")
    compile_.add_argument("--precision", choices=["fp16", "fp32", "int8"], help="overrides engine.precision")
    compile_.add_argument("--dla-core", type=int, help="overrides engine.dla_core")

    selftest = sub.add_parser("selftest", help="check this device: demo models on ONNX Runtime and, where "
                                               "TensorRT is used, engine build, cache reload and rebuild")
    selftest.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    """File, then environment, then these flags (``section.key`` -> value; None = not given)."""
    from edge_agent.settings import load_settings  # lazy: pydantic

    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.state_dir:
        overrides["paths.state_dir"] = args.state_dir
    return load_settings(args.config, overrides=overrides)


def _config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "check":
        source = settings.config_file or "no file (defaults and environment)"
        sys.stdout.write(f"configuration ok: {source}\n")
    else:
        _print(settings.public())
    return 0


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _infer(args: argparse.Namespace) -> int:
    import edge_agent  # lazy: numpy, onnxruntime
    from edge_agent.images import load_image  # lazy: cv2

    settings = _settings(args)
    model = edge_agent.get_model(args.model, settings=settings)
    params = InferenceParams(
        confidence=args.confidence, iou_threshold=args.iou_threshold, max_detections=args.max_detections,
        class_agnostic_nms=args.class_agnostic_nms, keypoint_confidence=args.keypoint_confidence,
        class_filter=tuple(c.strip() for c in args.class_filter.split(",")) if args.class_filter else None)
    # Command-line arguments are URLs or file paths, never base64 text.
    sources = [s if s.startswith(("http://", "https://")) else Path(s) for s in args.images] or [SAMPLE_IMAGE]
    images = [load_image(src, auto_orient=model.auto_orient(params)) for src in sources]
    results = model.run(images, params)
    bodies = [r.to_json() for r in results]
    _print(bodies[0] if len(bodies) == 1 else bodies)
    if args.visualize:
        import cv2  # lazy: cv2

        from edge_agent.visualize import draw  # lazy: cv2

        for i, (image, result) in enumerate(zip(images, results)):
            out = args.visualize if len(images) == 1 else args.visualize.with_name(
                f"{args.visualize.stem}-{i}{args.visualize.suffix}")
            canvas = draw(image, result, labels=not args.no_labels, colours=model.manifest.colors)
            if not cv2.imwrite(str(out), canvas):
                raise EdgeAgentError(f"could not write {out} (unknown image extension or unwritable folder?)")
    return 0


def _summary(stored: StoredModel) -> dict[str, Any]:
    m = stored.manifest
    return {"model_id": m.model_id, "task": m.task, "classes": len(m.class_names),
            "input": f"{m.input.width}x{m.input.height}", "builtin": stored.builtin}


def _models(args: argparse.Namespace) -> int:
    import edge_agent  # lazy: numpy, onnxruntime

    settings = _settings(args)
    store = edge_agent.open_store(settings)
    if args.action == "add":
        classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
        source = str(args.source)
        if source.startswith(("http://", "https://")) or args.sha256 or not args.activate or \
                (args.replace and args.model_id is not None and store.has(args.model_id)):
            _print(_changed(settings, _provisioner(settings, store).install_any(
                source, args.model_id, sha256=args.sha256, activate=args.activate, task=args.task,
                class_names=classes)))
        else:
            try:
                manifest = store.install(Path(source), args.model_id, task=args.task, class_names=classes,
                                         replace=args.replace)
            except ModelAlreadyInstalled as exc:
                raise ModelImportError(
                    f"{exc.model_id!r} is already installed: add --replace to install this as its new version (the "
                    "installed one is kept for `edge-agent models rollback`), or run `edge-agent models remove` "
                    "first") from exc
            _print(manifest.model_dump(mode="json"))
    elif args.action == "list":
        _print([_summary(s) for s in store.list()])
    elif args.action == "show":
        stored = store.get(args.model_id)
        revisions = [] if stored.builtin else [{"revision": r.stamp, "sha256": r.sha256}
                                               for r in store.revisions(args.model_id)]
        _print({**stored.manifest.model_dump(mode="json"), "path": str(stored.path), "builtin": stored.builtin,
                "revisions": revisions})
    elif args.action == "remove":
        store.remove(args.model_id)
        _print(_changed(settings, {"removed": args.model_id, "model_id": args.model_id}, removed=True))
    elif args.action in ("rollback", "activate"):
        provisioner = _provisioner(settings, store)
        to = args.to if args.action == "rollback" else args.revision
        _print(_changed(settings, provisioner.rollback(args.model_id, to)))
    elif args.action == "evict":  # the daemon's loaded models count as recently used (.usage.json)
        _print({"evicted": _provisioner(settings, store).evict()})
    return 0


def _provisioner(settings: Settings, store: ModelStore) -> Provisioner:
    """A provisioner of this process: a new version is checked against the stored one (golden set
    included), eviction protects what the configuration names, as in the daemon."""
    from edge_agent.provisioning.provisioner import Provisioner  # lazy: urllib3, onnxruntime
    from edge_agent.serving.manager import ModelManager  # lazy: numpy, onnxruntime
    from engines import choose_backend  # lazy: the device probe

    manager = ModelManager(store, choose_backend(settings.engine_prefs).ort_prefs)
    return Provisioner(settings.models, store, manager, "cli", server_key=settings.server_key(),
                       protected=settings.named_models)


# What the running daemon does after `models add --replace`/`rollback`/`activate`, and after `models remove`.
CHANGED_NOTE = ("the running daemon unloaded its old version; the next request for this model id loads the version "
                "now installed")
REMOVED_NOTE = ("the running daemon unloaded it; requests for this model id now answer 404, unless the daemon "
                "can pull it from Roboflow again (online, with an API key)")


def _changed(settings: Settings, result: dict[str, Any], removed: bool = False) -> dict[str, Any]:
    """Ask a daemon running here to unload the model, so its next request loads the store's new version
    (or, ``removed``, finds it gone)."""
    import urllib.error  # lazy: only for URLs
    import urllib.request  # lazy: only for URLs

    s = settings.server
    body = json.dumps({"model_id": result["model_id"]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{s.port}/model/remove", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if s.api_key is not None:
        request.add_header("Authorization", f"Bearer {s.api_key.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=5):
            result["daemon"] = REMOVED_NOTE if removed else CHANGED_NOTE
    except (urllib.error.URLError, OSError) as exc:
        result["daemon"] = f"no daemon answered on port {s.port} ({getattr(exc, 'reason', exc)})"
    return result


class _ProgressBar:
    """One line on stderr, redrawn in place on a terminal; one line per phase otherwise (journal, pipes)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.phase: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "note":
            sys.stderr.write(f"note: {event.get('message')}\n")
            return
        phase, fraction = str(event.get("phase")), event.get("fraction")
        if self.tty:
            bar = f"[{'#' * int(30 * fraction):<30}] {fraction * 100:3.0f}%" if fraction is not None else "[ ... ]"
            sys.stderr.write(f"\r{bar} {phase[:60]:<60}")
        elif phase != self.phase:
            sys.stderr.write(f"{phase}\n")
        self.phase = phase
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.phase is not None:
            sys.stderr.write("\n")


def _compile(args: argparse.Namespace) -> int:
    from edge_agent.serving.accelerate_setup import (  # lazy: numpy and the serving modules
        TensorRTUnavailable,
        compile_model,
        offline_accelerator,
    )

    settings = _settings(args, **{"engine.precision": args.precision, "engine.dla_core": args.dla_core})
    try:
        accelerator, manager = offline_accelerator(settings)
    except TensorRTUnavailable as exc:
        sys.stderr.write(f"edge-agent: cannot build a TensorRT engine here: {exc}\n")
        return 2
    bar = _ProgressBar()
    try:
        status = compile_model(accelerator, manager, args.model_id, force=args.force, on_event=bar)
    finally:
        bar.end()
    _print({"model_id": args.model_id, **status.as_dict(),
            "plan": str(accelerator.cache.paths(accelerator.key(manager.store.get(args.model_id).manifest))[0])})
    return 0 if status.state == "tensorrt" else 1


def _selftest(args: argparse.Namespace) -> int:
    from edge_agent import selftest  # lazy: onnxruntime, numpy

    def line(check: selftest.Check) -> None:
        if not args.json:
            sys.stdout.write(selftest.text_line(check))
            sys.stdout.flush()

    checks = selftest.run(_settings(args), report=line)
    report = selftest.as_dict(checks)
    if args.json:
        _print(report)
    else:
        counts = {v: sum(c.verdict == v for c in checks) for v in ("PASS", "FAIL", "SKIP")}
        sys.stdout.write(f"selftest {'passed' if report['ok'] else 'FAILED'}: "
                         + ", ".join(f"{n} {v.lower()}" for v, n in counts.items()) + "\n")
    return 0 if report["ok"] else 1


def _serve(args: argparse.Namespace) -> int:
    from edge_agent.server import serve  # lazy: gunicorn, flask
    from edge_agent.settings import systemd_environment  # lazy: pydantic
    from edge_agent.systemd import setup_logging  # lazy: systemd-python

    sd_env = systemd_environment(consume=True)
    setup_logging(under_journal=sd_env.journal_stream is not None)
    flags = {"server.host": args.host, "server.port": args.port, "server.threads": args.threads,
             "server.max_queue_delay_ms": args.max_queue_delay_ms,
             "server.preload_models": tuple(args.preload) if args.preload else None,
             "server.batching": args.batching}
    serve(_settings(args, **flags), sd_env, reread=lambda: _settings(args, **flags))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            return _config(args)
        if args.command == "infer":
            return _infer(args)
        if args.command == "compile":
            return _compile(args)
        if args.command == "selftest":
            return _selftest(args)
        return _models(args)
    except EdgeAgentError as exc:
        sys.stderr.write(f"edge-agent: error: {exc.message}\n")
        return 2
