"""`tillface demo`: the whole system on one machine, no camera and no root (the README's first command).

It starts, each in its own process and talking MQTT and HTTP as in a store: a local mosquitto (a free
port, in the demo's folder; never the system service) running the closed store configuration we ship
(config/mosquitto/tillface-store.conf: no anonymous clients, an account per till and one for the store
server, each confined by an ACL; the demo provisions both as `tillface store-admin` would), the
reference store server (`tillface store`, SQLite in the demo's folder) and one unit (`tillface run`,
with its credentials bundle) on a replay camera, whose customer display (the `escpos` driver) is a
pseudo-terminal: the demo decodes its bytes as a 2×20 VFD would and prints the screen, boxed, whenever
it changes. The replay is rendered from scikit-image's public-domain astronaut portrait: one customer
visiting three times.

1. A stranger: the unit decides `visitor` and the display shows her a visitor code.
2. She agrees to join. The demo, as the cashier, finds the code with `GET /visitors` and calls
   `POST /members` with her phone number, name, the code and her consent; the store sends `cmd/enroll`,
   the unit turns that visit's embeddings (held in RAM only) into her template and answers
   `event/enrolled`.
3. She comes back: the unit decides `match`, the store answers `cmd/display` with her name and points.
4. Her receipt (`POST /receipts`) earns points; on her third visit the display shows the new total.

Every HTTP call carries an API key of the role that makes it in a store (cashier: visitors and
enrolment; till-pos: the receipt; manager: the store's readiness via `GET /tills`), created in the store
database before the store server starts (`demo_keys`, the code behind `tillface store-admin key-create`).

The demo only watches (an MQTT subscriber and the display's pty) and plays the cashier. When the replay
ends the unit stops by itself; the demo then stops the store server and the broker and exits 0 if the
story happened, 1 if not (saying which step failed; the logs are in the demo's folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")

STORE, TILL = "demo", "till-1"
MARKER = ".tillface-demo"  # the demo wipes its folder at start only when this file says it is its own
CUSTOMER = {"name": "Eileen Collins", "phone": "+44 7911 123456"}
CONSENT = {"text_version": "2026-01", "channel": "till-screen"}
ITEMS = [
    {"sku": "C1", "name": "Espresso beans", "qty": 1, "price": "12.99"},
    {"sku": "M1", "name": "Oat milk", "qty": 2, "price": "1.80"},
]
TOTAL = "16.59"  # 1 point per whole unit: 16 points
GAP_S = 5.0  # empty shop between visits: time for the cashier's enrolment and receipt


class StoryError(Exception):
    """A step of the story did not happen."""


@dataclass
class Message:
    at: float
    topic: str
    payload: dict[str, Any]


class Watch:
    """An MQTT subscriber on the store's topics: what the unit and the store said, in order."""

    def __init__(self, port: int, login: tuple[str, str]) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tillface-demo-watch")
        self.client.username_pw_set(*login)  # the store server's account: it reads the whole store
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise StoryError("the demo could not subscribe at the broker")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"tillface/{STORE}/#", 1)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = {"text": message.payload.decode(errors="replace")}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        with self._lock:
            self.messages.append(Message(time.monotonic(), message.topic, payload))

    def on(self, suffix: str, **fields: Any) -> list[Message]:
        """Messages whose topic ends with `suffix` and whose payload has these field values."""
        with self._lock:
            return [
                m
                for m in self.messages
                if m.topic.endswith(suffix) and all(m.payload.get(k) == v for k, v in fields.items())
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Screen:
    """The display as the demo prints it: each distinct settled screen, with when it appeared."""

    shown: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def texts(self, since: float = 0.0) -> list[tuple[str, ...]]:
        """The screens (lines stripped) that appeared at `since` (time.monotonic()) or later."""
        return [tuple(line.strip() for line in s) for at, s in self.shown if at >= since]


class Narrator:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        ascii_only = not _can_encode(out, "┌─┐│└┘→×")
        self.box = "+-+|++" if ascii_only else "┌─┐│└┘"
        self.arrow = "->" if ascii_only else "→"

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.t0:5.1f}s] {text}", file=self.out, flush=True)

    def plain(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def screen(self, lines: tuple[str, ...], at: float) -> None:
        tl, h, tr, v, bl, br = tuple(self.box)
        width = max(len(line) for line in lines)
        rows = [f"{tl}{h * width}{tr}", *(f"{v}{line}{v}" for line in lines), f"{bl}{h * width}{br}"]
        pad = " " * 9
        with self._lock:
            print(f"[{at - self.t0:5.1f}s] customer display:", file=self.out)
            print("\n".join(pad + row for row in rows), file=self.out, flush=True)


def _can_encode(out: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(out, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class ScreenPrinter(threading.Thread):
    """Prints the emulated display's screen whenever it changed and then held for a moment (a screen
    is written row by row; the moment skips the half-written state in between)."""

    def __init__(self, read: Callable[[], tuple[str, ...]], narrator: Narrator, settle_s: float = 0.06):
        super().__init__(name="demo-screen", daemon=True)
        self.read, self.narrator, self.settle_s = read, narrator, settle_s
        self.screen = Screen()
        self._halt = threading.Event()

    def run(self) -> None:
        seen: tuple[str, ...] | None = None
        since = 0.0
        printed: tuple[str, ...] | None = None
        while not self._halt.wait(0.02):
            now, screen = time.monotonic(), self.read()
            if screen != seen:
                seen, since = screen, now
            elif screen != printed and now - since >= self.settle_s and any(s.strip() for s in screen):
                printed = screen
                self.screen.shown.append((since, screen))
                self.narrator.screen(screen, since)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def prepare_folder(folder: Path) -> None:
    """An empty demo folder: created, or wiped when it is the demo's own (never another folder)."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise StoryError(f"{folder} is not empty and not a tillface demo folder; give another --state")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by `tillface demo`; wiped by its next run\n", encoding="utf-8")


def render_replay(out: Path, fps: int) -> int:
    """The customer's three visits (the second a little darker, as if another day), from
    the bundled portrait framed like a passport photo; returns the number of frames."""
    import cv2
    import numpy as np

    from .demo_data import astronaut_photo
    from .imageio import read_rgb
    from .scenario import ScriptedVisit, render_visits
    from .vision.pipeline import FacePipeline, face_size

    photo = read_rgb(astronaut_photo())
    with _quiet_stderr():  # LiteRT's one-line "created a delegate" notice, not for the story
        pipeline = FacePipeline.from_manifest()
    face = max(pipeline.detect(photo, pad_if_none=True), key=face_size).box
    side = int(2.2 * (face[2] - face[0]))
    cx, cy = int((face[0] + face[2]) / 2), int((face[1] + face[3]) / 2)
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    photo = np.ascontiguousarray(photo[y0 : y0 + side, x0 : x0 + side])
    again = cv2.convertScaleAbs(photo, alpha=0.85, beta=0)  # another day, another light
    visits = [
        ScriptedVisit(photo, "customer"),
        ScriptedVisit(again, "customer"),
        ScriptedVisit(photo, "customer"),
    ]
    render_visits(visits, out, fps=fps, gap_s=GAP_S, lead_s=1.0, tail_s=2.0, linger_s=1.5, seed=3)
    return len(list(out.glob("*.jpg")))


def unit_config(folder: Path, broker_port: int, display_port: Path, fps: int, username: str) -> Path:
    path = folder / "till.toml"
    path.write_text(
        f"""# The demo unit's config, written by `tillface demo` (every other key has its default; see
# config/tillface.toml).
[unit]
store_id = "{STORE}"
till_id = "{TILL}"
state_dir = "{folder / "unit"}"
log_level = "INFO"

[camera]
# Absent until the unit is online; then the rendered visits appear here (a camera plugged in).
source = "replay:{folder / "visits"}"
fps = {fps}
reopen_backoff_s = [0.2, 0.5]

[display]
driver = "escpos"
port = "{display_port}"
reopen_backoff_s = [0.2, 1.0]

[mqtt]
host = "127.0.0.1"
port = {broker_port}
# The till's own broker account; its password is the credential mqtt.password of its bundle.
username = "{username}"
health_interval_s = 1.0
reconnect_backoff_s = [0.2, 1.0]
""",
        encoding="utf-8",
    )
    return path


def http(
    base: str, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None
) -> tuple[int, Any]:
    """One call of the store API (`key`: an API key, sent as a Bearer token); (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def demo_keys(database_url: str) -> dict[str, str]:
    """An API key per role in the store database (before the store server starts): {role: key}."""
    from .store.auth import ROLES, create_key
    from .store.db import open_database

    sessions = open_database(database_url)
    keys = {role: create_key(sessions, role, f"demo {role}")[1] for role in ROLES}
    sessions.kw["bind"].dispose()
    return keys


class Processes:
    """The child processes the demo started, each with its log file; stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(
        self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tillface", *args],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=f,
                env={**os.environ, **env} if env else None,
            )
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise StoryError(f"the {name} stopped unexpectedly (exit {proc.returncode}); see {log}")

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[name] = proc.returncode
        return codes


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does: through the clean-up below."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(folder: Path, fps: int = 15, out: TextIO = sys.stdout) -> int:
    from .display.emulator import PtyDisplay, VfdEmulator
    from .link.broker import Mosquitto, free_port
    from .recognition.gallery import create_key_file
    from .security.layout import store_account
    from .security.provisioning import Provisioner

    folder = folder.resolve()
    say = Narrator(out)
    procs = Processes()
    broker: Mosquitto | None = None
    pty: PtyDisplay | None = None
    watch: Watch | None = None
    printer: ScreenPrinter | None = None
    ok = False

    def until(what: str, check: Callable[[], T | None], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            procs.check()
            if time.monotonic() > deadline:
                raise StoryError(f"{what}: not within {timeout:g} s")
            time.sleep(0.05)

    with _terminate_as_interrupt():
        try:
            prepare_folder(folder)
            # The closed broker: the store server's account and the till's, as the operator's
            # `tillface store-admin provision-store` and `provision-till --till till-1` make them.
            keys = folder / "store-keys"
            provisioner = Provisioner(keys, STORE)
            provisioner.provision_store("TILLFACE_STORE_MQTT_PASSWORD")
            store_login = (store_account(STORE), provisioner.store_password())
            bundle = folder / "till-credentials"
            till_account = provisioner.provision_till(
                TILL, bundle, broker_host="127.0.0.1", broker_port=1883, tls=False
            ).account
            broker = Mosquitto(folder / "broker", keys_dir=keys).start()
            http_port = free_port()
            base = f"http://127.0.0.1:{http_port}"
            store_db = folder / "store.db"
            store_toml = folder / "store.toml"
            store_toml.write_text(
                f'[keys]\ndir = "{keys}"\n\n[mqtt]\nusername = "{store_login[0]}"\n', encoding="utf-8"
            )
            api_keys = demo_keys(f"sqlite:///{store_db}")
            procs.start(
                "store server",
                [
                    "store",
                    "--config",
                    str(store_toml),
                    "--store-id",
                    STORE,
                    "--database-url",
                    f"sqlite:///{store_db}",
                    "--mqtt-port",
                    str(broker.port),
                    "--http-port",
                    str(http_port),
                ],
                folder / "store.log",
                env={"TILLFACE_STORE_MQTT_PASSWORD": store_login[1]},
            )
            emulator = VfdEmulator()
            pty = PtyDisplay(folder / "ttyVFD", emulator)
            unit_state = folder / "unit"
            create_key_file(unit_state / "gallery.key")
            config = unit_config(folder, broker.port, pty.path, fps, till_account)
            # The till's bundle (broker password, signing key, store keys) as its systemd credentials.
            unit = procs.start(
                "unit",
                ["run", "--config", str(config)],
                folder / "till.log",
                env={"CREDENTIALS_DIRECTORY": str(bundle)},
            )
            say.plain(f"tillface demo: the whole system on this machine; state and logs in {folder}")
            say.plain(
                f"  broker        mosquitto on 127.0.0.1:{broker.port} (its own, in {broker.folder}),"
                f" closed: accounts {store_login[0]} and {till_account}"
            )
            say.plain(f"  store server  {base} (tillface store, SQLite {store_db})")
            cashier_key = folder / "cashier.key"  # to sign in to the page; never printed
            cashier_key.touch(mode=0o600)
            cashier_key.write_text(api_keys["cashier"] + "\n", encoding="utf-8")
            say.plain(
                f"  cashier page  {base}/till/{TILL} (sign in with the cashier key in {cashier_key}); "
                "follow the story there"
            )
            say.plain(f"  unit          {STORE}/{TILL} (tillface run --config {config})")
            say.plain(f"  display       ESC/POS 2x20 on {os.readlink(pty.path)}, printed below as it changes")
            say.plain("  camera        a replay: one customer, three visits (scikit-image's astronaut)")
            frames = render_replay(folder / "visits.new", fps)

            def read_screen() -> tuple[str, ...]:
                assert pty is not None
                with pty.lock:
                    return emulator.screen

            printer = ScreenPrinter(read_screen, say)
            printer.start()
            watch = Watch(broker.port, store_login)
            until("the store server answers HTTP", lambda: _answers(base, api_keys["manager"]), 60)
            until(
                "the unit is online and caught up with the store gallery",
                lambda: [m for m in watch.on(f"/{TILL}/health") if m.payload.get("link") == "online"],
                60,
            )
            say.say(f"store server and unit are up; the camera is plugged in ({frames} frames at {fps} fps)")
            (folder / "visits.new").rename(folder / "visits")

            # 1. A stranger gets a visitor code.
            visitor = until("visit 1: a decision", lambda: watch.on(f"/{TILL}/event/visitor"), 60)[0].payload
            code = visitor["visitor_code"]
            say.say(f"visit 1: a stranger at the till {say.arrow} event/visitor, visitor code {code}")
            until(
                f"the display shows the code {code}",
                lambda: [s for s in printer.screen.texts() if s[0] == f"Your code: {code}"],
                10,
            )
            # 2. The cashier enrols her with consent.
            listed = until(
                f"GET /visitors lists {code}",
                lambda: [
                    v
                    for v in http(base, "GET", "/visitors", key=api_keys["cashier"])[1]
                    if v["visitor_code"] == code
                ],
                10,
            )[0]
            say.say(f"cashier: GET /visitors lists {code} at {listed['till']}; she agrees to join")
            say.say(
                f"cashier: POST /members (phone {CUSTOMER['phone']}, name {CUSTOMER['name']}, "
                f"consent {CONSENT['text_version']} via {CONSENT['channel']})"
            )
            joining = {**CUSTOMER, "visitor_code": code, "till": TILL, "consent": CONSENT}
            status, member = http(base, "POST", "/members", joining, key=api_keys["cashier"])
            if status != 201:
                raise StoryError(f"POST /members answered {status}: {member}")
            member_id = member["id"]
            until(
                "the unit's event/enrolled",
                lambda: watch.on(f"/{TILL}/event/enrolled", member_id=member_id),
                5,
            )
            say.say(
                f"unit: event/enrolled (template from visit 1's faces, held in RAM till now) "
                f"{say.arrow} 201, member {member_id}"
            )
            # Enrolled while still at the till, she is recognised at once (the visit is upgraded).
            first_visit = str(visitor["visit_id"])
            greeted_visits = {first_visit}
            upgrade = until(
                "visit 1 ends (event/match as an upgrade, or event/left)",
                lambda: (
                    watch.on(f"/{TILL}/event/match", visit_id=first_visit)
                    or watch.on(f"/{TILL}/event/left", visit_id=first_visit)
                ),
                30,
            )
            if upgrade[0].topic.endswith("/match"):
                say.say(
                    f"visit 1, still at the till: the unit now recognises her {say.arrow} event/match "
                    f"(upgrade), and the store greets her by name"
                )

            # 3. She comes back and is greeted by name.

            def greeted(visit_no: int, points: int) -> str:
                assert watch is not None and printer is not None
                match = until(
                    f"visit {visit_no}: recognised as {member_id}",
                    lambda: [
                        m
                        for m in watch.on(f"/{TILL}/event/match", member_id=member_id)
                        if m.payload["visit_id"] not in greeted_visits
                    ],
                    60,
                )[0]
                visit_id = str(match.payload["visit_id"])
                greeted_visits.add(visit_id)
                say.say(
                    f"visit {visit_no}: she comes back {say.arrow} event/match, member {member_id}, "
                    f"score {match.payload['score']:.3f}"
                )
                shown = until(
                    f"visit {visit_no}: the store's cmd/display",
                    lambda: watch.on(f"/{TILL}/cmd/display", visit_id=visit_id),
                    10,
                )[0]
                say.say(
                    f"store: cmd/display {say.arrow} name {shown.payload.get('name')}, "
                    f"{shown.payload.get('points')} points "
                    f"({1000 * (shown.at - match.at):.0f} ms after the match)"
                )
                if shown.payload.get("points") != points:
                    raise StoryError(f"visit {visit_no}: the store sent {shown.payload.get('points')} points")
                until(
                    f"visit {visit_no}: the display greets her by name with {points} points",
                    lambda: [
                        s
                        for s in printer.screen.texts(since=match.at - 0.05)
                        if s[0].startswith("Hello, Eileen") and f"Points: {points}" in s
                    ],
                    10,
                )
                return visit_id

            visit_id = greeted(2, 0)
            # 4. Her receipt earns points.
            status, receipt = http(
                base,
                "POST",
                "/receipts",
                {"visit_id": visit_id, "till": TILL, "items": ITEMS, "total": TOTAL},
                key=api_keys["till-pos"],
            )
            if status != 201:
                raise StoryError(f"POST /receipts answered {status}: {receipt}")
            say.say(
                f"cashier: POST /receipts for visit 2 (Espresso beans, 2 x Oat milk, {TOTAL}) "
                f"{say.arrow} +{receipt['points_awarded']} points, "
                f"{receipt['points_total']} in total"
            )
            greeted(3, int(receipt["points_total"]))

            until("the replay ends and the unit stops by itself", lambda: unit.poll() is not None or None, 60)
            if unit.returncode != 0:
                raise StoryError(f"the unit exited with {unit.returncode}; see {folder / 'till.log'}")
            say.say("the replay ended and the unit stopped by itself")
            if emulator.errors:
                raise StoryError(f"the display got bytes a VFD does not understand: {emulator.errors[:3]}")
            ok = True
        except StoryError as exc:
            say.say(f"FAILED: {exc}")
        except KeyboardInterrupt:
            say.say("interrupted")
        finally:
            # The children first: nothing the demo started may outlive it, whatever failed above.
            codes = procs.stop()
            for name, step in (
                ("the screen printer", printer.stop if printer else None),
                ("the MQTT subscriber", watch.close if watch else None),
                ("the broker", broker.stop if broker else None),
                ("the display's pty", pty.close if pty else None),
            ):
                try:
                    if step is not None:
                        step()
                except Exception as exc:  # keep stopping the rest
                    say.say(f"stopping {name} failed: {exc!r}")
                    ok = False
    if ok and codes.get("store server") not in (0, -signal.SIGTERM):
        say.say(f"FAILED: the store server exited with {codes.get('store server')}; see store.log")
        ok = False
    for log in ("till.log", "store.log"):
        if ok and "Traceback" in (folder / log).read_text(errors="replace"):
            say.say(f"FAILED: {folder / log} shows an error (Traceback)")
            ok = False
    if ok:
        say.plain(
            f"the story happened: a stranger got the code {code}, was enrolled by an API call as\n"
            f"{member_id}, came back and was greeted by name with her points (0, then "
            f"{receipt['points_total']} after her receipt).\nUnit, store server and broker stopped."
        )
    else:
        say.plain(f"the story did not happen; the logs are in {folder} (till.log, store.log, broker/)")
    return 0 if ok else 1


def _answers(base: str, key: str) -> bool:
    try:
        return http(base, "GET", "/tills", key=key)[0] == 200
    except OSError:
        return False
