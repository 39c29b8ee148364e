"""The `tillface` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .models import DEFAULT_EMBEDDER

if TYPE_CHECKING:
    from .config import Config

EXIT_USAGE = 64
EXIT_DATAERR = 65
EXIT_SOFTWARE = 70
EXIT_DAEMON_RUNNING = 75  # EX_TEMPFAIL: try again once the service is stopped
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops restart loops on a bad config


def _default_faces() -> Path:
    return Path(os.environ.get("TILLFACE_FACES", "../shared/faces-dev"))


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.runner import StillPipeline, TillfaceStillPipeline, format_report, run_eval, write_json

    images = args.images or _default_faces()
    labels = args.labels or images / "labels.csv"
    if not labels.is_file():
        print(f"tillface eval: labels file {labels} does not exist (give --labels)", file=sys.stderr)
        return EXIT_DATAERR

    def make_pipeline() -> StillPipeline:
        if args.pipeline == "dlib-reference":
            from .evaluation.reference import DlibReferencePipeline

            return DlibReferencePipeline()
        from .vision.pipeline import FacePipeline

        return TillfaceStillPipeline(
            FacePipeline.from_manifest(
                detector=args.detector, embedder=args.embedder, num_threads=args.threads
            )
        )

    result = run_eval(make_pipeline, images, labels, limit=args.limit, progress=not args.quiet)
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from .evaluation.plot import plot_det

        plot_det(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, format_bench, run_bench

    result = run_bench(
        BenchOptions(
            frames=args.frames,
            threads=args.threads,
            detector=args.detector,
            image=args.image,
            with_dlib=not args.no_dlib,
        )
    )
    print(format_bench(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import ModelError, load_manifest

    try:
        manifest = load_manifest(args.dir)
        for entry in manifest.models:
            if args.action == "verify":
                manifest.verify(entry.id)
                print(f"ok  {entry.id:<22} {entry.file}  sha256 {entry.sha256[:16]}…  ({entry.licence})")
            else:
                print(f"{entry.id:<22} {entry.kind:<9} {entry.quantization:<40} {entry.licence}")
    except ModelError as exc:
        print(f"tillface models: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    return 0


def _setup_logging(level: str = "INFO") -> None:
    """journald with structured fields under systemd (with systemd-python), else lines on stderr."""
    from .system.journal import setup_logging

    setup_logging(level)


def _load(path: Path, prefix: str = "") -> Config | None:
    """The config, or None after printing its one-line error (the caller exits with 78)."""
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    print(
        f"{args.config}: ok (store {config.unit.store_id}, till {config.unit.till_id}, "
        f"camera {config.camera.source})"
    )
    for warning in config.warnings():
        print(f"warning: {warning}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Create the state folder and the gallery key if missing (idempotent)."""
    from .recognition.gallery import create_key_file

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    config.unit.state_dir.mkdir(parents=True, exist_ok=True)
    key = config.gallery.key_file
    if key.exists():
        print(f"gallery key {key} exists; left as it is")
    else:
        create_key_file(key)
        print(f"created gallery key {key} (mode 0600)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .app import run_daemon
    from .config import ConfigError
    from .recognition.gallery import GalleryError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    _setup_logging(config.unit.log_level)
    try:
        return run_daemon(args.config, args.events_jsonl, lockstep_replay=args.lockstep)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except GalleryError as exc:
        print(f"tillface run: {exc}", file=sys.stderr)
        return EXIT_DATAERR


def cmd_reload(args: argparse.Namespace) -> int:
    import signal

    from .app import pid_file

    config = _load(args.config, prefix="not reloading: ")
    if config is None:
        return EXIT_CONFIG
    pid_path = pid_file(config)
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        print(f"tillface reload: no running daemon (no live pid in {pid_path})", file=sys.stderr)
        return EXIT_SOFTWARE
    print(f"sent SIGHUP to tillface (pid {pid})")
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from .app import open_gallery
    from .config import ConfigError
    from .recognition.gallery import GalleryError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.action != "list":
        from .app import running_daemon_pid

        pid = running_daemon_pid(config)
        if pid is not None:
            # The daemon holds the gallery in memory and would write over this change.
            print(
                f"tillface gallery {args.action}: the daemon is running (pid {pid}) and owns the gallery; "
                "stop it first (systemctl stop tillface), or erase store-wide from the store server",
                file=sys.stderr,
            )
            return EXIT_DAEMON_RUNNING
    try:
        gallery = open_gallery(config, args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except GalleryError as exc:
        print(f"tillface gallery: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    if args.action == "list":
        for member in gallery.members():
            print(f"{member}\t{len(gallery.templates_of(member))} templates")
        print(f"{len(gallery.members())} members, {gallery.size} templates, version {gallery.version}")
        return 0
    if args.action == "rekey":
        from .recognition.gallery import create_key_file, read_key_file

        new_file = Path(args.new_key)
        try:
            if not new_file.exists():
                create_key_file(new_file)
            old_id, new_id = gallery.rekey(read_key_file(new_file))
        except GalleryError as exc:
            print(f"tillface gallery rekey: {exc}", file=sys.stderr)
            return EXIT_DATAERR
        print(
            f"gallery {config.gallery.file} re-encrypted: key {old_id} -> {new_id} "
            f"(version {gallery.version}).\n"
            f"Now make {new_file} the gallery key (e.g. sudo install -m 600 -o tillface {new_file} "
            f"/etc/tillface/credentials/gallery.key), start the daemon, and destroy the old key."
        )
        return 0
    if args.action == "erase":
        if not gallery.erase(args.member_id):
            print(f"tillface gallery erase: member {args.member_id} is not in the gallery", file=sys.stderr)
            return EXIT_DATAERR
        print(f"erased {args.member_id} (gallery version {gallery.version})")
        return 0
    from .enrol import import_photos

    return import_photos(
        gallery, config, args.images, args.labels, progress=not args.quiet, consent_ref=args.consent_ref
    )


def cmd_monitor(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .monitor import run_monitor
    from .recognition.gallery import GalleryError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    # Only warnings: the screen is for the technician, the daemon's info lines would scroll it away.
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_monitor(
            args.config,
            config,
            plain=args.plain,
            max_frames=args.frames,
            hz=args.hz,
            lockstep_replay=args.lockstep,
        )
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except GalleryError as exc:
        print(f"tillface monitor: {exc}", file=sys.stderr)
        return EXIT_DATAERR


def cmd_doctor(args: argparse.Namespace) -> int:
    from .system.doctor import run_doctor

    checks, code = run_doctor(args.config)
    for check in checks:
        print(check.line())
    return code


def cmd_store(args: argparse.Namespace) -> int:
    """The reference store server (needs the `store` extra): MQTT events in, HTTP API, database."""
    try:
        from .store.api import serve
        from .store.config import load_store_config
    except ImportError as exc:
        print(f"tillface store needs the store extra (pip install 'tillface[store]'): {exc}", file=sys.stderr)
        return 1
    overrides = {
        "store": {"id": args.store_id, "database_url": args.database_url},
        "mqtt": {
            "host": args.mqtt_host,
            "port": args.mqtt_port,
            "tls": True if args.mqtt_tls else None,
            "ca_file": args.mqtt_ca_file,
        },
        "http": {"host": args.http_host, "port": args.http_port},
    }
    try:
        config = load_store_config(args.config, overrides)
    except (OSError, ValueError) as exc:
        print(f"store config: {exc}", file=sys.stderr)
        return 78
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(config)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole system on this machine: broker, store server, one unit on a replay, the display."""
    try:
        from .demo import run_demo
        from .store.api import serve  # noqa: F401  (the demo runs `tillface store`)
    except ImportError as exc:
        print(
            f"tillface demo needs the store and demo extras (pip install 'tillface[store,demo]'): {exc}",
            file=sys.stderr,
        )
        return 1
    return run_demo(args.state, fps=args.fps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillface", description="Face recognition for loyalty members at a till."
    )
    parser.add_argument("--version", action="version", version=f"tillface {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="accuracy and speed on a labelled photo folder (DESIGN §7)")
    p.add_argument(
        "--images", type=Path, help="image folder (default $TILLFACE_FACES or ../shared/faces-dev)"
    )
    p.add_argument(
        "--labels", type=Path, help="labels CSV: path,identity[,source,tags] (default IMAGES/labels.csv)"
    )
    p.add_argument("--pipeline", choices=["tillface", "dlib-reference"], default="tillface")
    p.add_argument("--detector", choices=["short", "full"], default="short", help="BlazeFace variant")
    p.add_argument(
        "--embedder", default=DEFAULT_EMBEDDER, help=f"embedder model id (default {DEFAULT_EMBEDDER})"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N labelled images (quick checks)")
    p.add_argument("--json", type=Path, help="write all figures as JSON")
    p.add_argument("--plot", type=Path, help="write the DET curve (FNIR vs FPIR) as PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bench", help="pipeline latency, gallery search, memory, and the dlib pipeline for scale"
    )
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--detector", choices=["short", "full"], default="short")
    p.add_argument(
        "--image", type=Path, help="photo to build the frames from (default: bundled demo portrait)"
    )
    p.add_argument("--no-dlib", action="store_true", help="skip the dlib reference pipeline")
    p.add_argument("--json", type=Path)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--events-jsonl", type=Path, help="also append every event as one JSON line to this file")
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="replay sources only: process every frame, as fast as possible (reproducible experiments)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file (exit 78 if invalid)")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("init", help="create the state folder and gallery key of a config (idempotent)")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("reload", help="make the running daemon re-read its config (SIGHUP)")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("gallery", help="the local member gallery: list, import consented photos, erase")
    gsub = p.add_subparsers(dest="action", required=True)
    g = gsub.add_parser("list")
    g.add_argument("--config", type=Path, required=True)
    g = gsub.add_parser(
        "import", help="enrol members from consented photos (CSV: path,identity[,consent_ref])"
    )
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("--images", type=Path, required=True)
    g.add_argument("--labels", type=Path, required=True)
    g.add_argument(
        "--consent-ref",
        help="where the consent of every member in the CSV is recorded (for rows without consent_ref)",
    )
    g.add_argument("--quiet", action="store_true")
    g = gsub.add_parser(
        "rekey", help="re-encrypt the gallery with a new key (created 0600 if the file does not exist)"
    )
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("--new-key", type=Path, required=True, help="the new key file (32 bytes, mode 0600)")
    g = gsub.add_parser("erase")
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("member_id")
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("doctor", help="check the unit's set-up, one line per check (exit 1 if any fails)")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "monitor",
        help="live view for the technician: faces, quality gate, scores, decisions (stop the service first)",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument(
        "--plain", action="store_true", help="print lines (about --hz per second) instead of a live screen"
    )
    p.add_argument("--frames", type=int, help="stop after N frames (default: Ctrl-C, or the end of a replay)")
    p.add_argument("--hz", type=float, default=5.0, help="screen refreshes (or --plain lines) per second")
    p.add_argument(
        "--lockstep", action="store_true", help="replay sources only: every frame, as fast as possible"
    )
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser(
        "demo",
        help="the whole system on this machine: mosquitto, store server, one unit on a replay, its display",
    )
    p.add_argument(
        "--state",
        type=Path,
        default=Path(".tillface-state/demo"),
        help="the demo's folder: configs, databases, logs (wiped at start; default .tillface-state/demo)",
    )
    p.add_argument("--fps", type=int, default=15, help="replay frames per second")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the installed models or verify them against the manifest")
    p.add_argument("action", choices=["list", "verify"])
    p.add_argument("--dir", type=Path, help="models folder (default: the installed one)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("store", help="run the reference store server (MQTT + HTTP API + database)")
    p.add_argument("--config", type=Path, help="store.toml (flags below override it)")
    p.add_argument("--store-id")
    p.add_argument("--database-url", help="SQLAlchemy URL (default sqlite:///store.db)")
    p.add_argument("--mqtt-host")
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--mqtt-tls", action="store_true")
    p.add_argument("--mqtt-ca-file", type=Path)
    p.add_argument("--http-host")
    p.add_argument("--http-port", type=int)
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("store-admin", help="administer the store server: API keys, till provisioning")
    try:
        from .store.admin import register as register_store_admin
    except ImportError:  # without the store extra the group is empty and says what to install
        p.set_defaults(func=lambda _a: _need_store_extra("store-admin"))
    else:
        admin = p.add_subparsers(dest="admin_command", required=True)
        register_store_admin(admin)
    return parser


def _need_store_extra(command: str) -> int:
    print(f"tillface {command} needs the store extra (pip install 'tillface[store]')", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
