"""The customer display: text fitting, screens, the ESC/POS and JSON-lines drivers over a real pty.

The pty tests read the exact bytes the driver sent and decode them as a VFD would
(`vfd_emulator.VfdEmulator`), through real pyserial on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replay_fixtures import write_config
from tillface.config import ConfigError, DisplayConfig, parse_config
from tillface.display import Display, make_display
from tillface.display.drivers import EscPosDriver, JsonlDriver
from tillface.display.render import render_lines
from tillface.display.screens import CrmDisplay, Screen, ScreenState
from tillface.display.text import Charset, centre, fit_name, layout, truncate, wrap
from tillface.display.transport import SerialTransport
from tillface.scenario import render_visits
from vfd_emulator import JsonlCollector, PtyDisplay, VfdEmulator

MINIMAL = '[unit]\nstore_id = "s1"\ntill_id = "t1"\n'
LONG_NAME = "Christopher Montgomery-Whitley"  # 30 characters
CYRILLIC = "Анна Петрова"
CJK = "王伟"


def display_config(port: str | Path = "loop://", **keys: object) -> DisplayConfig:
    body = {"driver": "escpos", "port": str(port), "reopen_backoff_s": [0.1, 0.5], **keys}
    lines = "\n".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in body.items())
    return parse_config(f"{MINIMAL}[display]\n{lines}\n").display


# ---------------------------------------------------------------- text


def test_long_names_are_shortened_with_care() -> None:
    assert len(LONG_NAME) == 30
    assert fit_name(LONG_NAME, 20) == "Christopher M."
    assert fit_name(LONG_NAME, 12) == "Christopher"  # the room "Hello, {name}!" leaves on 20 columns
    assert fit_name("Maria del Carmen Fernández", 14) == "Maria F."
    assert fit_name("Konstantinopolskaya", 10) == "Konstanti."
    assert fit_name("Ann Lee", 20) == "Ann Lee"


def test_wrap_truncate_centre_layout() -> None:
    assert wrap("Thank you for shopping with us today", 20) == ["Thank you for", "shopping with us", "today"]
    assert wrap("Supercalifragilistic!", 10) == ["Supercalif", "ragilistic", "!"]
    assert truncate("Thank you for shopping with us", 20, "…") == "Thank you for…"
    assert truncate("Abcdefghijklmnopqrstuvwxyz", 10, ".") == "Abcdefghi."
    assert centre("Hi", 7) == "  Hi   " and len(centre("x" * 30, 20)) == 20
    message = "Thank you for shopping with us today, see you soon"
    assert layout([message], 20, 2, "…") == ["Thank you for", "shopping with us…"]
    # Each later line keeps one row: the name line does not push the points off a 2-row display.
    assert layout(["a " * 30, "Points: 5"], 20, 2, ".")[1] == "Points: 5"
    assert layout(["one", "two", "three"], 20, 2, ".") == ["one", "two"]


def test_charset_code_pages_transliteration_and_cjk() -> None:
    cp866 = Charset("cp866")
    assert cp866.name(CYRILLIC) == CYRILLIC
    assert cp866.name(CJK) is None  # shown as the member's code instead
    cp437 = Charset("cp437")
    assert cp437.name(CYRILLIC) == "Anna Petrova"
    assert cp437.name("Zoë Müller") == "Zoë Müller"  # both are in cp437
    assert cp437.text("Жанна Щукина") == "Zhanna Shchukina"
    assert Charset("cp437", transliterate=False).name(CYRILLIC) is None
    assert Charset("cp437", transliterate=False).text("Анна") == "????"
    assert Charset("cp850").name("Jose\u0301") == "José"  # combining accent composed first
    # A name can never carry display commands onto the wire.
    assert cp866.text("Ann\x1b@\x0cLee\n") == "Ann @ Lee"
    assert Charset(None).name(CJK) == CJK  # JSON lines: any script
    assert cp866.ellipsis == "." and Charset("cp1251").ellipsis == "…"


# ---------------------------------------------------------------- config


def test_display_config_errors_name_the_key() -> None:
    cases = {
        'welcome_name_text = "Hello!"': "display.welcome_name_text",
        'visitor_text = "Code {cod}"': "display.visitor_text",
        'idle_text = "Welcome {name}"': "display.idle_text",
        'points_text = "{points:q}"': "display.points_text",
        'code_page = "utf-8"': "display.code_page",
        'code_page = "latin-1"': "display.code_page_number",
        "stopbits = 3": "display.stopbits",
        'parity = "N"': "display.parity",
        "reopen_backoff_s = [5.0, 1.0]": "display.reopen_backoff_s",
    }
    for body, key in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config(f"{MINIMAL}[display]\n{body}\n")
        assert key in str(info.value), (body, str(info.value))
    cfg = parse_config(f'{MINIMAL}[display]\ncode_page = "IBM866"\ncode_page_number = 7\nstopbits = 1.5\n')
    assert (cfg.display.code_page, cfg.display.code_page_number, cfg.display.stopbits) == ("cp866", 7, 1.5)


# ---------------------------------------------------------------- screens (explicit clock)


def test_screen_state_follows_visits_crm_and_ttls() -> None:
    state = ScreenState(welcome_ttl_s=60.0, message_ttl_s=5.0)
    assert state.current(0.0).kind == "idle"
    state.on_event({"event": "match", "visit_id": "v1", "member_id": "m1"}, 1.0)
    assert state.current(1.0) == Screen("welcome", member_id="m1")
    assert state.on_crm(CrmDisplay(visit_id="v1", name="Ann", points=7), 1.5)
    assert state.current(1.5) == Screen("welcome", name="Ann", member_id="m1", points=7)
    # A message for the visit shows for its TTL, then the welcome screen is back.
    assert state.on_crm(CrmDisplay(visit_id="v1", message="Coffee -20%", ttl_s=3.0), 2.0)
    assert state.current(4.9).kind == "message" and state.next_change(4.9) == 5.0
    assert state.current(5.0).name == "Ann"
    # A CRM command for another visit, or naming another member, is dropped.
    assert not state.on_crm(CrmDisplay(visit_id="v0", name="Bob"), 6.0)
    assert not state.on_crm(CrmDisplay(member_id="m2", name="Bob"), 6.0)
    assert state.on_crm(CrmDisplay(member_id="m1", points=9), 6.0)
    assert state.current(6.0).points == 9
    # Name without any reference: never applied (it could be the previous customer's).
    state.on_crm(CrmDisplay(name="Eve"), 6.5)
    assert state.current(6.5).name == "Ann"
    state.on_event({"event": "left", "visit_id": "v1"}, 7.0)
    assert state.current(7.0).kind == "idle"
    assert not state.on_crm(CrmDisplay(visit_id="v1", name="Ann"), 7.5)  # the visit has left
    assert state.current(7.5).kind == "idle"
    # Visitor, upgraded to a match in the same visit; the welcome TTL ends it without a `left`.
    state.on_event({"event": "visitor", "visit_id": "v2", "visitor_code": "KMT-42"}, 10.0)
    assert state.current(10.0) == Screen("visitor", code="KMT-42")
    state.on_event({"event": "match", "visit_id": "v2", "member_id": "m3"}, 11.0)
    assert state.current(11.0).kind == "welcome"
    assert state.current(70.9).kind == "welcome" and state.current(71.0).kind == "idle"
    # A store-wide message (no reference) shows over idle, with the default TTL.
    assert state.on_crm(CrmDisplay(message="Till closing"), 80.0)
    assert state.current(84.9).kind == "message" and state.current(85.0).kind == "idle"
    assert not state.on_event({"event": "left", "visit_id": "v9"}, 90.0)  # a late `left`
    assert not state.on_event({"event": "enrolled", "visit_id": "v9"}, 90.0)


def test_welcome_screen_lines() -> None:
    cfg = display_config(code_page="cp866")
    charset = Charset(cfg.code_page)

    def lines(**kw: object) -> list[str]:
        return render_lines(Screen("welcome", **kw), cfg, charset)  # type: ignore[arg-type]

    assert lines() == ["Welcome back!"]
    assert lines(name=LONG_NAME, points=1250) == ["Hello, Christopher!", "Points: 1250"]
    assert lines(name=CYRILLIC, points=80) == ["Hello, Анна Петрова!", "Points: 80"]
    assert lines(name=CJK, member_id="m-0042") == ["Hello, m-0042!"]
    assert lines(name=CJK, member_id="member-000000042") == ["member-000000042"]  # never cut
    assert lines(name=CJK) == ["Welcome back!"]
    tall = display_config(rows=4)
    assert render_lines(
        Screen("welcome", name="Ann", points=3, last_purchase="Green tea", suggestions=("Scones", "Jam")),
        tall,
        Charset(tall.code_page),
    ) == ["Hello, Ann!", "Points: 3", "Last: Green tea", "Scones"]


# ---------------------------------------------------------------- bytes on the wire


def test_escpos_bytes_are_the_dm_d_command_set() -> None:
    driver = EscPosDriver(display_config(code_page="cp866"))
    assert driver.greeting() == bytes.fromhex("1b40 1f01 1f4300 1b7411 0c 0b")
    frame = driver.frame(Screen("idle"))
    assert frame == b"\x1f$\x01\x01" + b"      Welcome!      " + b"\x1f$\x01\x02" + b" " * 20
    emulator = VfdEmulator()
    emulator.feed(driver.greeting() + driver.frame(Screen("welcome", name=CYRILLIC, points=80)))
    assert emulator.screen == ("Hello, Анна Петрова!", "     Points: 80     ")
    assert emulator.errors == [] and emulator.table == 17
    # 16 columns: "Your code: KMT-42" does not fit, so the code stands alone (never cut).
    left = EscPosDriver(display_config(align="left", columns=16, code_page_number=0))
    emulator = VfdEmulator(columns=16)
    emulator.feed(left.greeting() + left.frame(Screen("visitor", code="KMT-42")))
    assert emulator.screen == ("KMT-42          ", "Ask us to join! ")


def test_jsonl_frame_describes_the_screen() -> None:
    driver = JsonlDriver(display_config(driver="jsonl"))
    line = driver.frame(Screen("welcome", name=CJK, member_id="m1", points=5, suggestions=("Tea",)))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "schema": 1,
        "screen": "welcome",
        "lines": [f"Hello, {CJK}!", "Points: 5"],
        "name": CJK,
        "points": 5,
        "suggestions": ["Tea"],
    }
    assert driver.greeting() == b""


# ---------------------------------------------------------------- a real pty


@pytest.fixture
def pty_vfd(tmp_path: Path):
    emulator = VfdEmulator()
    pty = PtyDisplay(tmp_path / "ttyVFD", emulator)
    yield pty, emulator
    pty.close()


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def started(cfg: DisplayConfig) -> Display:
    display = make_display(cfg)
    display.start()
    return display


def test_escpos_display_over_a_pty_ascii_cyrillic_cjk(pty_vfd) -> None:
    pty, vfd = pty_vfd
    cfg = display_config(pty.path, code_page="cp866")
    display = started(cfg)
    try:
        assert pty.wait_for(lambda: vfd.text == ("Welcome!", ""))
        assert display.state == "connected"
        driver = EscPosDriver(cfg)  # the exact bytes on the wire: greeting, then the idle screen
        assert bytes(pty.raw) == driver.greeting() + driver.frame(Screen("idle"))
        display.on_event({"event": "match", "visit_id": "v1", "member_id": "m-7"})
        assert pty.wait_for(lambda: vfd.text == ("Welcome back!", ""))
        display.show_crm(visit_id="v1", name=LONG_NAME, points=1250)
        assert pty.wait_for(lambda: vfd.text == ("Hello, Christopher!", "Points: 1250"))
        display.show_crm(visit_id="v1", name=CYRILLIC)
        assert pty.wait_for(lambda: vfd.text == ("Hello, Анна Петрова!", "Points: 1250"))
        display.show_crm(visit_id="v1", name=CJK)
        assert pty.wait_for(lambda: vfd.text == ("Hello, m-7!", "Points: 1250"))
        display.on_event({"event": "left", "visit_id": "v1"})
        assert pty.wait_for(lambda: vfd.text == ("Welcome!", ""))
        display.on_event({"event": "visitor", "visit_id": "v2", "visitor_code": "KMT-42"})
        assert pty.wait_for(lambda: vfd.text == ("Your code: KMT-42", "Ask us to join!"))
        display.show_crm(message="Thank you for shopping with us today, see you soon", ttl_s=60)
        assert pty.wait_for(lambda: vfd.text == ("Thank you for", "shopping with us."))
        assert display.health()["screen"] == "message"
    finally:
        display.stop()
    assert vfd.text == ("Welcome!", "")  # no customer's data stays up after stopping
    assert display.state == "off"
    assert vfd.errors == [] and vfd.initialised == 1


def test_cp437_display_transliterates_cyrillic(pty_vfd) -> None:
    pty, vfd = pty_vfd
    display = started(display_config(pty.path))
    try:
        display.on_event({"event": "match", "visit_id": "v1", "member_id": "m1"})
        display.show_crm(visit_id="v1", name=CYRILLIC, points=3)
        assert pty.wait_for(lambda: vfd.text == ("Hello, Anna Petrova!", "Points: 3"))
    finally:
        display.stop()
    assert vfd.table == 0 and vfd.errors == []


def test_unplugged_display_is_reopened_and_shows_the_current_screen(pty_vfd) -> None:
    pty, vfd = pty_vfd
    display = started(display_config(pty.path))
    try:
        assert pty.wait_for(lambda: vfd.text == ("Welcome!", ""))
        pty.unplug()
        # Noticed by the periodic poll, even though the screen did not change.
        assert pty.wait_for(lambda: display.state == "reconnecting")
        display.on_event({"event": "visitor", "visit_id": "v1", "visitor_code": "KMT-42"})
        display.on_event({"event": "left", "visit_id": "v1"})
        display.on_event({"event": "match", "visit_id": "v2", "member_id": "m1"})
        assert display.state == "reconnecting" and display.health()["last_error"]
        pty.replug()
        # Back with the greeting (the display may have been power-cycled) and the newest screen only.
        assert pty.wait_for(lambda: vfd.text == ("Welcome back!", "") and vfd.initialised == 2)
        assert display.state == "connected"
        shown = [tuple(line.strip() for line in screen) for screen in vfd.history]
        assert ("Your code: KMT-42", "Ask us to join!") not in shown
    finally:
        display.stop()
    assert vfd.errors == []


def test_stop_is_prompt_with_a_dead_port(tmp_path: Path) -> None:
    display = started(display_config(tmp_path / "no-such-tty"))
    assert display.state == "reconnecting"
    assert eventually(lambda: display.health()["failures"] >= 2)  # it keeps trying, with back-off
    assert "no-such-tty" in str(display.health()["last_error"])
    display.on_event({"event": "visitor", "visit_id": "v1", "visitor_code": "KMT-42"})  # never blocks
    display.stop()
    assert display.state == "off"


def test_reconfigure_applies_texts_and_reopens_on_a_new_port(tmp_path: Path, pty_vfd) -> None:
    pty, vfd = pty_vfd
    display = started(display_config(pty.path))
    other_vfd = VfdEmulator()
    other = PtyDisplay(tmp_path / "ttyOther", other_vfd)
    try:
        assert pty.wait_for(lambda: vfd.text == ("Welcome!", ""))
        display.reconfigure(display_config(pty.path, idle_text="Добро пожаловать!", code_page="cp866"))
        assert pty.wait_for(lambda: vfd.text == ("Добро пожаловать!", ""))
        assert vfd.initialised == 2 and vfd.table == 17  # new code page: greeted again
        display.reconfigure(display_config(other.path, idle_text="Moved"))
        assert other.wait_for(lambda: other_vfd.text == ("Moved", ""))
        display.reconfigure(display_config(other.path, driver="none"))
        assert other.wait_for(lambda: display.state == "off")
        display.reconfigure(display_config(pty.path, idle_text="Back"))
        assert pty.wait_for(lambda: vfd.text == ("Back", "") and display.state == "connected")
    finally:
        display.stop()
        other.close()


def test_driver_none_is_off_and_silent() -> None:
    display = make_display(parse_config(MINIMAL).display)
    display.start()
    display.on_event({"event": "match", "visit_id": "v1", "member_id": "m1"})
    display.show_crm(visit_id="v1", name="Ann")
    assert display.state == "off" and display.health()["writes"] == 0
    display.stop()


def test_jsonl_display_over_a_pty(tmp_path: Path) -> None:
    collector = JsonlCollector()
    pty = PtyDisplay(tmp_path / "ttyMCU", collector)
    display = started(display_config(pty.path, driver="jsonl", baud=115200))
    try:
        assert pty.wait_for(lambda: len(collector.lines) == 1)
        display.on_event({"event": "match", "visit_id": "v1", "member_id": "m1"})
        display.show_crm(visit_id="v1", name=CJK, points=12)
        assert pty.wait_for(lambda: any(b"Points: 12" in line for line in collector.lines))
    finally:
        display.stop()
        pty.close()
    screens = [json.loads(line) for line in collector.lines]
    assert screens[0] == {"schema": 1, "screen": "idle", "lines": ["Welcome!"]}
    assert {"screen": "welcome", "name": CJK, "points": 12}.items() <= screens[-2].items()
    assert screens[-1]["screen"] == "idle"


def test_transport_urls_loop_and_socket() -> None:
    loop = SerialTransport(display_config("loop://"))
    loop.open()
    loop.write(b"\x1b@")
    assert loop._port is not None and loop._port.read(2) == b"\x1b@"
    loop.close()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        display = started(display_config(f"socket://127.0.0.1:{port}", driver="jsonl"))
        conn, _ = server.accept()
        try:
            conn.settimeout(5.0)
            assert json.loads(conn.recv(4096).split(b"\n")[0])["screen"] == "idle"
            assert display.state == "connected"
        finally:
            display.stop()
            conn.close()


def test_doctor_opens_the_display_port(tmp_path: Path, pty_vfd) -> None:
    pty, vfd = pty_vfd
    render_visits([], tmp_path / "replay", fps=15, gap_s=1.0)
    cfg = write_config(
        tmp_path / "till.toml",
        tmp_path / "state",
        f"replay:{tmp_path / 'replay'}",
        extra=f'[display]\ndriver = "escpos"\nport = "{pty.path}"\n',
    )
    out = subprocess.run(
        [sys.executable, "-m", "tillface", "doctor", "--config", str(cfg)], capture_output=True, text=True
    )
    line = next(x for x in out.stdout.splitlines() if x.split()[1] == "display")
    assert line.startswith("ok") and "9600 8N1" in line, out.stdout
    assert bytes(pty.raw) == b"" and vfd.history == []  # the doctor writes nothing
