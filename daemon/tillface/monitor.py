"""`tillface monitor`: a live view for the technician standing in front of the unit.

It runs the daemon's own loop (`app.Daemon`: the same camera code, detector, tracker, quality gate,
matcher and visit rules) as a dry run, with no MQTT link, no customer display and no frame capture,
and shows per frame what the loop saw: the faces, the customer face's size, pose, sharpness and
brightness against the `[quality]` limits, the gate's verdict, the best two members and the margin
against `match_threshold` / `margin`, and the decisions the daemon would publish, as they happen.

Nothing is written: no frame, no crop, no embedding, no event file. Embeddings stay in this process's
memory like the daemon's; only scores and member ids are shown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .app import Daemon, FrameReport, pid_file, running_daemon_pid
from .config import Config, QualityConfig
from .system.notify import Notifier
from .vision.quality import Quality, gate

EXIT_DAEMON_RUNNING = 75  # EX_TEMPFAIL: try again once the service is stopped


def dry_run_config(config: Config) -> Config:
    """The config with every side effect off: no MQTT link, no customer display, no frame capture."""
    return config.model_copy(
        update={
            "mqtt": config.mqtt.model_copy(update={"host": None}),
            "display": config.display.model_copy(update={"driver": "none"}),
            "debug": config.debug.model_copy(update={"capture_frames": False}),
        }
    )


@dataclass(frozen=True)
class Measure:
    name: str
    value: str
    limit: str
    ok: bool


def measures(q: Quality, limits: QualityConfig) -> list[Measure]:
    """Every quality measure with its limit from `[quality]`, and whether it passes."""
    return [
        Measure(
            "eyes",
            f"{q.eye_distance_px:.1f} px",
            f"≥ {limits.min_eye_distance_px:g} px",
            q.eye_distance_px >= limits.min_eye_distance_px,
        ),
        Measure(
            "yaw",
            f"{q.yaw_deg:+.1f}°",
            f"|·| ≤ {limits.max_yaw_deg:g}°",
            abs(q.yaw_deg) <= limits.max_yaw_deg,
        ),
        Measure(
            "pitch",
            f"{q.pitch_deg:+.1f}°",
            f"|·| ≤ {limits.max_pitch_deg:g}°",
            abs(q.pitch_deg) <= limits.max_pitch_deg,
        ),
        Measure(
            "sharp", f"{q.sharpness:.0f}", f"≥ {limits.min_sharpness:g}", q.sharpness >= limits.min_sharpness
        ),
        Measure(
            "bright",
            f"{q.brightness:.0f}",
            f"{limits.min_brightness:g}..{limits.max_brightness:g}",
            limits.min_brightness <= q.brightness <= limits.max_brightness,
        ),
        Measure("clipped", f"{q.clipped:.2f}", f"≤ {limits.max_clipped:g}", q.clipped <= limits.max_clipped),
    ]


@dataclass(frozen=True)
class FrameView:
    """One frame as shown: numbers, ids and verdicts only."""

    seq: int
    ts: float
    faces: int
    quality: Quality | None = None
    measures: tuple[Measure, ...] = ()
    verdict: str | None = None  # gate reason; None = pass (when quality is set)
    top: tuple[tuple[str, float], ...] = ()  # best two members and their scores
    margin: float | None = None
    frame_says: str | None = None  # "match" / "visitor": what this frame alone would decide
    visit: str | None = None  # short visit id and its state

    def gate_text(self) -> str:
        if self.quality is None:
            return "-"
        if self.verdict is None:
            return "pass"
        failing = "; ".join(f"{m.name} {m.value} not {m.limit}" for m in self.measures if not m.ok)
        return f"FAIL[{self.verdict}: {failing}]"

    def line(self) -> str:
        parts = [f"frame={self.seq}", f"t={self.ts:.2f}s", f"faces={self.faces}"]
        if self.quality is not None:
            parts += [f"{m.name}={m.value.replace(' ', '')}" for m in self.measures]
            parts.append(f"gate={self.gate_text()}")
        for i, (member, score) in enumerate(self.top, start=1):
            parts.append(f"top{i}={member}:{score:.4f}")
        if self.margin is not None:
            parts.append(f"margin={self.margin:.4f}")
        if self.frame_says:
            parts.append(f"frame_says={self.frame_says}")
        if self.visit:
            parts.append(f"visit={self.visit}")
        return "  ".join(parts)


@dataclass
class MonitorStats:
    frames: int = 0
    frames_with_face: int = 0
    gate_failures: dict[str, int] = field(default_factory=dict)
    decisions: int = 0


class Monitor:
    """Observes a Daemon (app.DaemonObserver) and renders what it sees."""

    def __init__(
        self,
        daemon: Daemon,
        out: TextIO,
        plain: bool = True,
        max_frames: int | None = None,
        hz: float = 5.0,
    ) -> None:
        self.daemon = daemon
        self.out = out
        self.plain = plain
        self.max_frames = max_frames
        self.interval_s = 1.0 / hz if hz > 0 else 0.0
        self.stats = MonitorStats()
        self.view: FrameView | None = None
        self.events: deque[str] = deque(maxlen=8)
        self._next_line_ts: float | None = None
        self._lock = threading.Lock()
        self._loop_times: deque[float] = deque(maxlen=30)

    # ---- DaemonObserver ----
    def on_frame(self, report: FrameReport) -> None:
        view = self.describe(report)
        with self._lock:
            self.view = view
            self.stats.frames += 1
            self.stats.frames_with_face += view.quality is not None
            if view.verdict is not None:
                self.stats.gate_failures[view.verdict] = self.stats.gate_failures.get(view.verdict, 0) + 1
            self._loop_times.append(time.monotonic())
        if self.plain and (self._next_line_ts is None or report.frame.ts >= self._next_line_ts):
            # Paced by the camera's clock (~`hz` lines per second of video), so a replay run as fast
            # as possible prints the same lines as one in real time.
            self._next_line_ts = report.frame.ts + self.interval_s
            print(view.line(), file=self.out, flush=True)
        if self.max_frames is not None and self.stats.frames >= self.max_frames:
            self.daemon.request_stop()

    def on_event(self, record: dict[str, Any]) -> None:
        rules = self.daemon.config.recognition
        kind = record["event"]
        label = "DECISION" if kind in ("match", "visitor") else "EVENT"
        parts = [f"{label} {kind}", f"visit={str(record.get('visit_id', ''))[:8]}"]
        if kind == "match":
            parts.append(f"member={record.get('member_id')}")
        if kind == "visitor":
            parts.append(f"code={record.get('visitor_code')}")
        if kind in ("match", "visitor"):
            parts.append(f"score={record.get('score', float('nan')):.3f}")
            parts.append(f"margin={record.get('margin', float('nan')):.3f}")
            parts.append(f"(match_threshold={rules.match_threshold:.3f} margin>={rules.margin:.3f})")
            if record.get("upgrade"):
                parts.append("upgrade")
        if kind == "left":
            parts.append(f"after={record.get('duration_s')}s")
        text = "  ".join(parts)
        with self._lock:
            self.events.append(f"{time.strftime('%H:%M:%S')}  {text}")
            self.stats.decisions += kind in ("match", "visitor")
        if self.plain:
            print(text, file=self.out, flush=True)

    # ---- what a frame shows ----
    def describe(self, report: FrameReport) -> FrameView:
        frame, person = report.frame, report.customer
        base = FrameView(frame.seq, frame.ts, report.faces)
        if person is None:
            return base
        pipeline, config = self.daemon.pipeline, self.daemon.config
        quality, verdict, embedding = report.quality, report.verdict, report.embedding
        if embedding is None:
            # The loop skipped this face (decided visit, or a frame the gate refused): measure and
            # embed it here with the same pipeline, for the numbers only; it changes no decision.
            chip, quality = pipeline.assess(frame.image, person.detection)
            verdict = gate(quality, config.quality)
            embedding = pipeline.embedder.embed(chip)
            del chip
        assert quality is not None
        top: tuple[tuple[str, float], ...] = ()
        margin = None
        says = None
        matcher = self.daemon.gallery.matcher()
        if matcher.size:
            decision = matcher.decide(
                embedding, config.recognition.match_threshold, config.recognition.margin
            )
            top = tuple((c.member_id, c.score) for c in decision.candidates)
            margin, says = decision.margin, decision.kind
        else:
            says = "visitor (empty gallery)"
        del embedding
        visit = report.visit
        visit_text = None
        if visit is not None:
            state = visit.decided_kind or f"deciding {visit.good_frames}/{config.recognition.min_frames} good"
            visit_text = f"{visit.id[:8]}:{state.replace(' ', '_')}"
        return FrameView(
            frame.seq,
            frame.ts,
            report.faces,
            quality,
            tuple(measures(quality, config.quality)),
            verdict,
            top,
            margin,
            says,
            visit_text,
        )

    # ---- the live screen ----
    def loop_fps(self) -> float:
        with self._lock:
            times = list(self._loop_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        config = self.daemon.config
        with self._lock:
            view, events = self.view, list(self.events)
        cam = self.daemon.camera.status
        rec = config.recognition
        header = Text(
            f"tillface monitor   camera {cam.description} ({cam.state})   frames {cam.frames}, "
            f"dropped {cam.dropped}   loop {self.loop_fps():.1f} fps   "
            f"gallery {len(self.daemon.gallery.members())} members   Ctrl-C to stop",
            style="bold",
        )
        parts: list[Any] = [header]
        if view is None:
            parts.append(Text("waiting for the first frame…"))
            return Group(*parts)
        parts.append(Text(f"frame {view.seq}   faces in the region of interest: {view.faces}"))
        if view.quality is None:
            parts.append(Text("no customer face", style="dim"))
        else:
            table = Table(title="customer face (limits from \\[quality])", show_edge=False)
            for col in ("measure", "value", "limit", ""):
                table.add_column(col)
            for m in view.measures:
                table.add_row(
                    m.name, m.value, m.limit, Text("ok" if m.ok else "FAIL", "green" if m.ok else "red")
                )
            parts.append(table)
            verdict = Text(
                f"quality gate: {view.gate_text()}", style="green" if view.verdict is None else "red"
            )
            parts.append(verdict)
            scores = Table(title="this frame against the gallery", show_edge=False)
            for col in ("", "member", "score"):
                scores.add_column(col)
            for i, (member, score) in enumerate(view.top, start=1):
                style = "green" if i == 1 and score >= rec.match_threshold else ""
                scores.add_row(f"top-{i}", member, Text(f"{score:.4f}", style))
            parts.append(scores)
            margin = "-" if view.margin is None else f"{view.margin:.4f}"
            parts.append(
                Text(
                    f"margin {margin}   (match needs score ≥ {rec.match_threshold:.3f} and margin ≥ "
                    f"{rec.margin:.3f})   this frame alone: {view.frame_says}   visit: {view.visit or '-'}"
                )
            )
        parts.append(Text("decisions:", style="bold"))
        parts += [Text(e) for e in events] or [Text("none yet", style="dim")]
        return Group(*parts)

    def summary(self) -> str:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.stats.gate_failures.items())) or "none"
        return (
            f"monitor: {self.stats.frames} frames, {self.stats.frames_with_face} with a customer face, "
            f"{self.stats.decisions} decisions; quality gate failures: {failures}"
        )


def run_monitor(
    config_path: Path,
    config: Config,
    plain: bool = False,
    max_frames: int | None = None,
    hz: float = 5.0,
    lockstep_replay: bool = False,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    pid = running_daemon_pid(config)
    if pid is not None:
        print(
            f"tillface monitor: the daemon is running (pid {pid}, {pid_file(config)}) and has the camera; "
            "stop it first with `sudo systemctl stop tillface` (start it again afterwards)",
            file=sys.stderr,
        )
        return EXIT_DAEMON_RUNNING
    daemon = Daemon(
        dry_run_config(config), config_path, None, lockstep_replay=lockstep_replay, notifier=Notifier({})
    )
    daemon.install_signal_handlers()
    monitor = Monitor(daemon, out, plain=plain, max_frames=max_frames, hz=hz)
    daemon.observers.append(monitor)
    if plain:
        code = daemon.run()
        print(monitor.summary(), file=out, flush=True)
    else:
        from rich.console import Console
        from rich.live import Live
        from rich.logging import RichHandler

        console = Console(file=out)
        # Log lines (warnings: camera lost, ...) go above the live screen instead of through it.
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(RichHandler(console=console, show_path=False))
        with Live(get_renderable=monitor.render, console=console, refresh_per_second=max(hz, 1.0)):
            code = daemon.run()
        if not console.is_terminal:
            console.line()  # the last screen, printed once, has no final newline off a terminal
        console.print(monitor.summary())
    return code
