"""`tillface doctor`: one line per check of a unit's set-up, for the technician at the till."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ..vision.runtime import RuntimeReport


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<10} {self.detail}"


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except Exception as exc:  # every failure becomes a line, never a traceback
        return Check(name, False, str(exc) or type(exc).__name__)


def check_models(config: Config) -> str:
    from ..models import load_manifest

    manifest = load_manifest()
    wanted = [f"blazeface-{config.vision.detector}", config.vision.embedder]
    for model_id in wanted:
        manifest.verify(model_id)
    return f"{', '.join(wanted)} match the manifest in {manifest.directory}"


def check_runtime() -> str:
    import platform

    from ..vision.runtime import runtime_name

    return f"{runtime_name()} on {platform.machine()}"


def load_runtime_reports(config: Config) -> Mapping[str, RuntimeReport]:
    """Loads the configured models as the daemon does and returns what each runs on."""
    from ..vision.pipeline import FacePipeline

    pipeline = FacePipeline.from_manifest(
        detector=config.vision.detector,
        embedder=config.vision.embedder,
        num_threads=config.vision.num_threads,
    )
    return pipeline.runtime_reports()


def check_xnnpack(reports: Mapping[str, RuntimeReport]) -> str:
    """ok when every model runs on XNNPACK; else raises with what it means and what to do."""
    from ..vision.runtime import xnnpack_problem, xnnpack_summary

    problem = xnnpack_problem(reports)
    if problem is not None:
        raise RuntimeError(problem)
    return f"XNNPACK: {xnnpack_summary(reports)}"


def check_cpu() -> str:
    from ..vision.runtime import cpu_summary

    return cpu_summary()


def check_gallery(config: Config) -> str:
    from ..recognition.gallery import GalleryError, GalleryStore, load_key

    try:
        key = load_key(config.gallery.key_file, config.gallery.key_credential)
    except GalleryError as exc:
        raise RuntimeError(f"gallery.key_file: {exc}") from None
    store = GalleryStore(config.gallery.file, key, embedder=config.vision.embedder)
    store.load()
    if not config.gallery.file.exists():
        return f"no gallery file yet at {config.gallery.file} (empty gallery); key ok"
    return f"{config.gallery.file} decrypts: {len(store.members())} members, version {store.version}"


def check_camera(config: Config, timeout_s: float = 5.0) -> str:
    from ..camera import make_source

    source = make_source(config.camera, realtime_replay=False)
    result: dict[str, object] = {}

    def grab() -> None:
        try:
            source.open()
            result["frame"] = source.read()
        except Exception as exc:
            result["error"] = exc
        finally:
            source.close()

    worker = threading.Thread(target=grab, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RuntimeError(f"camera.source {config.camera.source}: no frame within {timeout_s:g} s")
    if "error" in result:
        raise RuntimeError(f"camera.source {config.camera.source}: {result['error']}")
    frame = result["frame"]
    h, w = frame.image.shape[:2]  # type: ignore[attr-defined]
    return f"{config.camera.source} gives {w}x{h} frames"


def check_state_dir(config: Config) -> str:
    folder = config.unit.state_dir
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise RuntimeError(f"unit.state_dir {folder} is not writable by uid {os.geteuid()}")
    return f"{folder} writable"


def check_clock() -> str:
    year = time.gmtime().tm_year
    if year < 2025:
        raise RuntimeError(f"system clock says {year}: event timestamps would be wrong (no NTP yet?)")
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def check_display(config: Config) -> str:
    """Opens the display port as the daemon would (shared, so it works while the daemon holds it);
    writes nothing, so the customer sees no change."""
    from ..display.transport import SerialTransport

    if config.display.driver == "none":
        return "no customer display configured"
    transport = SerialTransport(config.display, exclusive=False)
    try:
        transport.open()
    except Exception as exc:
        raise RuntimeError(
            f"display.port {config.display.port} cannot be opened (is the display plugged in?): {exc}"
        ) from None
    finally:
        transport.close(discard=False)  # unsent bytes may be the running daemon's
    return f"{config.display.driver} display port opens: {transport.description}"


def check_broker(config: Config) -> str:
    if config.mqtt.host is None:
        return "no MQTT broker configured (mqtt.host unset): decisions stay local"
    from ..link.mqtt import probe_broker

    return probe_broker(config)


def run_doctor(config_path: Path) -> tuple[list[Check], int]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Check("config", False, str(exc))], 1
    checks = [
        Check("config", True, f"{config_path} valid"),
        _run("clock", check_clock),
        _run("state", lambda: check_state_dir(config)),
        _run("models", lambda: check_models(config)),
        _run("runtime", check_runtime),
        _run("xnnpack", lambda: check_xnnpack(load_runtime_reports(config))),
        _run("cpu", check_cpu),
        _run("gallery", lambda: check_gallery(config)),
        _run("camera", lambda: check_camera(config)),
        _run("display", lambda: check_display(config)),
        _run("broker", lambda: check_broker(config)),
    ]
    return checks, 0 if all(c.ok for c in checks) else 1
