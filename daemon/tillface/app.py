"""The daemon: wires camera → vision → tracker → visits → sinks. The only module that knows them all.

Threads: the camera worker (newest frame only) and this loop, which owns the interpreters. Signals
only set flags; the loop acts on them between frames.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import __version__
from .camera import CameraWorker, Frame, make_source
from .config import Config, ConfigError, load_config
from .display import make_display
from .events import JsonlSink, decision_wait_ms, event_record, latency_ms, log_decision
from .link.mqtt import Link
from .link.schemas import DisplayCommand
from .recognition.enrolment import EnrolmentCache
from .recognition.gallery import GalleryError, GalleryStore, load_key, read_credential_key, read_key_file
from .recognition.session import CustomerSession, Look, SessionRules
from .recognition.tracker import Track
from .recognition.visitor_codes import VisitorCodes
from .recognition.visits import DecisionRules, Visit, VisitEvent, VisitManager
from .system.notify import Notifier
from .vision.detector import Detection
from .vision.pipeline import FacePipeline
from .vision.quality import Quality, gate
from .vision.runtime import log_runtime, runtime_health

log = logging.getLogger("tillface")


def open_gallery(config: Config, config_path: Path | None) -> GalleryStore:
    """Load the gallery; a missing or unsafe key is a configuration error naming `gallery.key_file`."""
    try:
        key = load_key(config.gallery.key_file, config.gallery.key_credential)
    except GalleryError as exc:
        raise ConfigError(f"{config_path or 'config'}: gallery.key_file: {exc}") from None
    gallery = GalleryStore(config.gallery.file, key, embedder=config.vision.embedder)
    gallery.load()
    return gallery


def wire_key(config: Config, config_path: Path | None) -> bytes:
    """The store key for templates on the wire: the credential `mqtt.gallery_key_credential`, else
    `mqtt.gallery_key_file`, else the gallery key (a till on its own)."""
    m = config.mqtt
    try:
        key = read_credential_key(m.gallery_key_credential)
        if key is not None:
            return key
        if m.gallery_key_file is not None:
            return read_key_file(m.gallery_key_file)
        return load_key(config.gallery.key_file, config.gallery.key_credential)
    except GalleryError as exc:
        key_name = "mqtt.gallery_key_file" if m.gallery_key_file else "gallery.key_file"
        raise ConfigError(f"{config_path or 'config'}: {key_name}: {exc}") from None


def cpu_temperature() -> float | None:
    """°C from the kernel's first thermal zone (Pi and Jetson have one); None where unreadable."""
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def pid_file(config: Config) -> Path:
    return config.unit.state_dir / "tillface.pid"


def running_daemon_pid(config: Config) -> int | None:
    """The pid of a live daemon from `<state_dir>/tillface.pid`, or None (no file, a stale pid)."""
    try:
        pid = int(pid_file(config).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    try:
        if b"tillface" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # the pid was reused by something else after a crash
    except OSError:
        pass
    return pid


def decision_rules(config: Config) -> DecisionRules:
    r = config.recognition
    return DecisionRules(
        match_threshold=r.match_threshold,
        margin=r.margin,
        min_frames=r.min_frames,
        decision_timeout_ms=r.decision_timeout_ms,
        fuse_best_n=r.fuse_best_n,
        allow_upgrade=r.allow_upgrade,
        min_presence_s=r.min_presence_ms / 1000.0,
    )


def session_rules(config: Config) -> SessionRules:
    r = config.recognition
    return SessionRules(
        same_person_threshold=r.same_person_threshold,
        other_person_threshold=r.other_person_threshold,
        leave_after_s=r.leave_after_ms / 1000.0,
        recheck_interval_s=r.recheck_interval_ms / 1000.0,
        min_presence_s=r.min_presence_ms / 1000.0,
    )


def roi_pixels(config: Config, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = config.camera.roi
    return x0 * width, y0 * height, x1 * width, y1 * height


@dataclass
class RunStats:
    frames: int = 0
    frames_with_face: int = 0
    embeddings: int = 0
    events: int = 0


@dataclass
class FrameReport:
    """What the loop made of one frame, for observers such as `tillface monitor`. In memory only:
    an observer must never log or store the frame, the embedding or anything derived from them."""

    frame: Frame
    faces: int = 0  # faces inside the region of interest
    customer: Track | None = None  # the face the loop took for the customer
    quality: Quality | None = None  # measured when the visit still wanted an embedding
    verdict: str | None = None  # the quality gate's reason (None: passed, or not measured)
    embedding: np.ndarray | None = None  # this frame's embedding, if one was computed
    visit: Visit | None = None


class DaemonObserver(Protocol):
    def on_frame(self, report: FrameReport) -> None: ...

    def on_event(self, record: dict[str, Any]) -> None: ...


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        events_jsonl: Path | None = None,
        lockstep_replay: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.stats = RunStats()
        self.latencies_ms: deque[float] = deque(maxlen=500)
        self.decision_waits_ms: deque[float] = deque(maxlen=500)  # after the presence rule allowed it
        self.observers: list[DaemonObserver] = []  # e.g. `tillface monitor`; called from the loop
        self.last_status = ""
        self.started = time.monotonic()
        self._health_mark = (self.started, 0)

        config.unit.state_dir.mkdir(parents=True, exist_ok=True)
        self.gallery = open_gallery(config, config_path)
        self.pipeline = FacePipeline.from_manifest(
            detector=config.vision.detector,
            embedder=config.vision.embedder,
            num_threads=config.vision.num_threads,
            score_threshold=config.vision.detector_score_threshold,
        )
        # What the models run on, once; a model without XNNPACK is a loud warning (other embeddings).
        log_runtime(self.pipeline, log)
        self._runtime_health = runtime_health(self.pipeline)
        self.enrolments = EnrolmentCache(config.recognition.enroll_ttl_s)
        visits = VisitManager(
            decision_rules(config),
            matcher=self.gallery.matcher,
            gallery_version=lambda: self.gallery.version,
            codes=VisitorCodes(),
            enrolments=self.enrolments,
            model_id=config.vision.embedder,
            emit=self._on_event,
            matches_confirmed=lambda: self.link is None or self.link.gallery_confirmed(),
        )
        self.session = CustomerSession(session_rules(config), visits)
        self.link = (
            Link(config, self.gallery, self.enrolments, self, wire_key(config, config_path))
            if config.mqtt.host
            else None
        )
        self._jsonl = JsonlSink(events_jsonl) if events_jsonl else None
        self.display = make_display(config.display)  # its own thread: a dead port never blocks us
        lockstep = lockstep_replay and config.camera.source_kind == "replay"
        self.camera = CameraWorker(
            make_source(config.camera, realtime_replay=not lockstep),
            rotation=config.camera.rotation,
            backoff_s=config.camera.reopen_backoff_s,
            lockstep=lockstep,
        )
        for warning in config.warnings():
            log.warning("%s", warning)

    # ---- control (called from signal handlers or other threads) ----
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # ---- the loop ----
    def run(self) -> int:
        log.info(
            "tillface running: camera %s, gallery %d members / %d templates (version %d), models %s",
            self.config.camera.source,
            len(self.gallery.members()),
            self.gallery.size,
            self.gallery.version,
            self.pipeline.model_ids,
        )
        if self.link:
            self.link.start()
        self.display.start()
        self.camera.start()
        last_ts = 0.0
        camera_ok = True
        ready = False
        next_status = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if ready:
                    # The loop itself pings the watchdog: a stalled pipeline stops the pings and
                    # systemd restarts the unit (systemd arms the watchdog once READY=1 is sent).
                    self.notifier.watchdog(now)
                    if now >= next_status:
                        self.notifier.status(self.status_line())
                        next_status = now + 5.0
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                frame = self.camera.newest(timeout=0.25)
                if not ready and (frame is not None or self.camera.status.state == "reconnecting"):
                    ready = True
                    self.notifier.ready(self.status_line())
                if frame is None:
                    state = self.camera.status.state
                    if state == "finished" or self.camera.finished:
                        break
                    if state == "reconnecting" and camera_ok:
                        camera_ok = False
                        self.session.end(last_ts)  # nobody can be seen: the visit is over
                    continue
                camera_ok = True
                last_ts = frame.ts
                self.process(frame)
                self.enrolments.purge()
        finally:
            self.notifier.stopping()
            self.session.end(last_ts)
            self.camera.stop()
            self.display.stop()  # after session.end: its `left` puts the idle screen up
            if self.link:
                self.link.stop()
            if self._jsonl:
                self._jsonl.close()
        log.info(
            "tillface stopped: %d frames, %d with a face, %d embeddings, %d events",
            self.stats.frames,
            self.stats.frames_with_face,
            self.stats.embeddings,
            self.stats.events,
        )
        return 0

    def process(self, frame: Frame) -> None:
        report = FrameReport(frame)
        self._process(frame, report)
        for observer in self.observers:
            observer.on_frame(report)

    def _process(self, frame: Frame, report: FrameReport) -> None:
        image, ts = frame.image, frame.ts
        self.stats.frames += 1
        h, w = image.shape[:2]
        x0, y0, x1, y1 = roi_pixels(self.config, w, h)
        faces = [
            d
            for d in self.pipeline.detect(image)
            if x0 <= (d.box[0] + d.box[2]) / 2 <= x1 and y0 <= (d.box[1] + d.box[3]) / 2 <= y1
        ]
        report.faces = len(faces)

        def look(detection: Detection, fallback: bool) -> Look:
            chip, quality = self.pipeline.assess(image, detection)
            reason = gate(quality, self.config.quality)
            embedding = None
            if reason is None or (fallback and reason != "too small"):
                embedding = self.pipeline.embedder.embed(chip)
                self.stats.embeddings += 1
            del chip  # the crop never outlives this frame (privacy rule 1)
            return Look(quality, reason, embedding)

        # Held (briefly) after a (re)connect until the store gallery caught up: a member erased while
        # this unit was away must not be recognised.
        decide = self.link is None or self.link.decisions_allowed()
        seen = self.session.on_frame(faces, ts, frame.captured, (w, h), look, decide)
        if seen.customer is None:
            return
        self.stats.frames_with_face += 1
        report.customer, report.visit = seen.customer, seen.visit
        if seen.look is not None:
            report.quality, report.verdict, report.embedding = (
                seen.look.quality,
                seen.look.reason,
                seen.look.embedding,
            )

    def _on_event(self, event: VisitEvent) -> None:
        record = event_record(event, self.config.unit.store_id, self.config.unit.till_id)
        latency = latency_ms(event)
        if latency is not None and event.event in ("match", "visitor"):
            self.latencies_ms.append(latency)
            record["latency_ms"] = round(latency, 1)
            wait = decision_wait_ms(event)
            if wait is not None:
                self.decision_waits_ms.append(wait)
        self.stats.events += 1
        log_decision(record, latency)
        for observer in self.observers:
            observer.on_event(record)
        self.display.on_event(record)  # only updates the screen state; the display thread writes
        if self.link:
            # The outbox first: whatever the JSONL file shows is already safe on disk for the store.
            try:
                self.link.publish_event(record)
            except Exception:  # a bug here must not stop recognition; the log line above has it
                log.exception("event %s could not be queued for MQTT", record.get("event_id"))
        if self._jsonl:
            self._jsonl.write(record)

    # ---- services for the link (called from its worker thread) ----
    def show_crm(self, command: DisplayCommand) -> None:
        display = getattr(self, "display", None)
        if display is None:
            return
        display.show_crm(
            visit_id=command.visit_id,
            member_id=command.member_id,
            name=command.name,
            points=command.points,
            last_purchase=command.last_purchase,
            suggestions=tuple(command.suggestions),
            message=command.message,
            ttl_s=command.ttl_s,
        )

    def reload(self) -> None:
        """SIGHUP: apply thresholds, quality and display settings without dropping the camera."""
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        restart_needed = [
            name
            for name in ("unit", "camera", "vision", "gallery")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if restart_needed:
            log.warning(
                "reload: changes to [%s] need a restart; they are not applied", ", ".join(restart_needed)
            )
        self.config = self.config.model_copy(
            update={"recognition": new.recognition, "quality": new.quality, "display": new.display}
        )
        self.display.reconfigure(self.config.display)
        self.session.visits.rules = decision_rules(self.config)
        self.session.rules = session_rules(self.config)
        self.enrolments.ttl_s = self.config.recognition.enroll_ttl_s
        log.info(
            "reloaded %s: match_threshold %.3f, margin %.3f",
            self.config_path,
            self.config.recognition.match_threshold,
            self.config.recognition.margin,
        )

    def status_line(self) -> str:
        """One line for `systemctl status`."""
        cam = self.camera.status
        return (
            f"camera {cam.state}, {self.stats.frames} frames, {self.stats.events} events, "
            f"gallery {len(self.gallery.members())} members (v{self.gallery.version})"
        )

    def health(self) -> dict[str, Any]:
        """The DESIGN §4 health fields this loop knows (the link adds its own state and outbox depth)."""
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else None
        now = time.monotonic()
        last_t, last_frames = self._health_mark
        self._health_mark = (now, self.stats.frames)
        stats = self.gallery.stats()
        display = getattr(self, "display", None)
        return {
            "version": __version__,
            "uptime_s": round(now - self.started, 1),
            "fps": round((self.stats.frames - last_frames) / max(now - last_t, 1e-3), 2),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat is not None else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat is not None else None,
            "camera": self.camera.status.state,
            "display": display.state if display is not None else "off",
            "link": self.link.state if self.link else "off",
            "gallery_version": stats["version"],
            "gallery_members": stats["members"],
            "gallery_templates": stats["templates"],
            "models": sorted(self.pipeline.model_ids.values()),
            "outbox_depth": self.link.outbox.depth() if self.link else 0,
            "matches_withheld": self.session.visits.matches_withheld,
            "cpu_temp_c": cpu_temperature(),
            **self._runtime_health,
        }


def run_daemon(config_path: Path, events_jsonl: Path | None = None, lockstep_replay: bool = False) -> int:
    config = load_config(config_path)
    daemon = Daemon(config, config_path, events_jsonl, lockstep_replay=lockstep_replay)
    daemon.install_signal_handlers()
    pid = pid_file(config)
    pid.write_text(f"{os.getpid()}\n", encoding="ascii")
    try:
        return daemon.run()
    finally:
        pid.unlink(missing_ok=True)
