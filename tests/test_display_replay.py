"""The daemon drives the customer display: replayed visits (real faces-dev photos, real models) go
through a real pty to a VFD emulator, while a stand-in for the store CRM answers each match with a
`cmd/display` the way the MQTT link hands it over (`display.show_crm`)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from replay_fixtures import build_scenario, write_config
from tillface.app import Daemon, open_gallery
from tillface.config import load_config
from tillface.display import Display
from tillface.enrol import import_photos
from tillface.recognition.gallery import create_key_file
from vfd_emulator import PtyDisplay, VfdEmulator

IDLE = ("Welcome!", "")
# What the CRM sends for the 1st, 2nd, 3rd ... match of a run; later matches get no answer.
ANSWERS: list[dict[str, Any]] = [
    {"name": "Christopher Montgomery-Whitley", "points": 1250},  # 30 characters
    {"name": "Анна Петрова", "points": 80},
    {"name": "王伟"},  # CJK: the display shows the member's code
]


def expected_screen(record: dict[str, Any], answer: dict[str, Any] | None) -> tuple[str, str]:
    """The (stripped) 2×20 screen a decision should bring, per the config's default texts."""
    if record["event"] == "visitor":
        return (f"Your code: {record['visitor_code']}", "Ask us to join!")
    if answer is None:
        return ("Welcome back!", "")
    points = f"Points: {answer['points']}" if "points" in answer else ""
    if answer["name"] == ANSWERS[0]["name"]:
        return ("Hello, Christopher!", points)  # first name: "Christopher M." does not fit
    if answer["name"] == ANSWERS[1]["name"]:
        return ("Hello, Анна Петрова!", points)
    return (shown_code(record["member_id"]), points)


def shown_code(code: str) -> str:
    """A member's code on a 2×20 line: in the greeting when it fits, else alone, cut to 19 characters
    and "." (the display's code page has no "…")."""
    if len(code) <= 12:
        return f"Hello, {code}!"
    return code if len(code) <= 20 else code[:19] + "."


class Crm(threading.Thread):
    """The store CRM: reads decisions as the daemon writes them and answers matches in order."""

    def __init__(self, events: Path, display: Display) -> None:
        super().__init__(daemon=True)
        self.events, self.display = events, display
        self.answers: dict[str, dict[str, Any]] = {}  # visit_id -> what was sent
        self.done = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.done.is_set():
            text = self.events.read_text() if self.events.exists() else ""
            # Only whole lines: the daemon may be writing the last one right now.
            lines = text[: text.rfind("\n") + 1].splitlines()
            for line in lines[seen:]:
                record = json.loads(line)
                if record["event"] == "match" and len(self.answers) < len(ANSWERS):
                    answer = ANSWERS[len(self.answers)]
                    self.answers[record["visit_id"]] = answer
                    member = record["member_id"]
                    self.display.show_crm(visit_id=record["visit_id"], member_id=member, **answer)
            seen = len(lines)
            time.sleep(0.005)


def is_subsequence(wanted: list[tuple[str, ...]], seen: list[tuple[str, ...]]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


def expected_screens(records: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> list[tuple]:
    """The screens the records must bring, in order. A visitor screen that an upgrade to a match of
    the same visit replaced a few frames later is not required: the newest screen wins by design, and
    a busy machine may rightly skip it."""
    upgraded = {r["visit_id"] for r in records if r["event"] == "match" and r.get("upgrade")}
    out: list[tuple] = []
    for i, r in enumerate(records):
        if r["event"] == "visitor" and r["visit_id"] in upgraded:
            continue
        if r["event"] in ("match", "visitor"):
            out.append(expected_screen(r, answers.get(r["visit_id"])))
        elif r["event"] == "left" and not replaced_at_once(r, records[i + 1 : i + 2]):
            out.append(IDLE)
    # A screen the next one repeats with no idle between is written once: the display shows it on.
    return [screen for k, screen in enumerate(out) if k == 0 or screen != out[k - 1]]


def replaced_at_once(left: dict[str, Any], following: list[dict[str, Any]]) -> bool:
    """Whether the next customer's decision came with this `left` (the session ended the visit because
    someone else was at the till): then the idle screen in between may rightly never be written."""
    if not following or following[0]["event"] not in ("match", "visitor"):
        return False
    gap = datetime.fromisoformat(following[0]["ts"]) - datetime.fromisoformat(left["ts"])
    return gap.total_seconds() < 0.05


def enrolled_unit(faces: Path, work: Path, members: int, strangers: int, seed: int, extra: str):
    scenario = build_scenario(faces, work, members, strangers, seed=seed)
    state = work / "state"
    cfg_path = write_config(work / "till.toml", state, f"replay:{scenario.replay_dir}", extra=extra)
    config = load_config(cfg_path)
    state.mkdir()
    create_key_file(config.gallery.key_file)
    gallery = open_gallery(config, cfg_path)
    assert import_photos(gallery, config, faces, scenario.enrol_csv, progress=False, consent_ref="test") == 0
    return scenario, config, cfg_path


def display_section(port: Path) -> str:
    keys = f'driver = "escpos"\nport = "{port}"\ncode_page = "cp866"\nreopen_backoff_s = [0.5, 2.0]\n'
    return "[display]\n" + keys


def run_in_thread(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return thread


def decided(records: list[dict[str, Any]]) -> set[str]:
    return {r["visit_id"] for r in records if r["event"] in ("match", "visitor")}


@pytest.fixture
def vfd(tmp_path: Path):
    emulator = VfdEmulator()
    pty = PtyDisplay(tmp_path / "ttyVFD", emulator)
    yield pty, emulator
    pty.close()


def test_replayed_visits_drive_the_display(faces_dir: Path, tmp_path: Path, vfd) -> None:
    """idle → welcome / visitor → idle for every visit, with CRM names: 30 characters, Cyrillic, CJK."""
    pty, emulator = vfd
    scenario, config, cfg_path = enrolled_unit(
        faces_dir, tmp_path, members=5, strangers=2, seed=4, extra=display_section(pty.path)
    )
    events = tmp_path / "events.jsonl"
    daemon = Daemon(config, cfg_path, events, lockstep_replay=True)
    crm = Crm(events, daemon.display)
    crm.start()
    run_in_thread(daemon).join(120)
    crm.done.set()
    crm.join(5)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(decided(records)) == len(scenario.truth)
    # Seed 4 gives 4 matches among 7 visits (lockstep replays are reproducible).
    assert len(crm.answers) == len(ANSWERS), "fewer than 3 members recognised: the pipeline changed"

    seen = [tuple(line.strip() for line in screen) for screen in emulator.history]
    wanted = [IDLE, *expected_screens(records, crm.answers)]
    assert is_subsequence(wanted, seen), f"wanted {wanted}\nseen {seen}"
    assert ("Hello, Christopher!", "Points: 1250") in seen
    assert ("Hello, Анна Петрова!", "Points: 80") in seen
    cjk_visit = next(v for v, a in crm.answers.items() if a is ANSWERS[2])
    code = next(r["member_id"] for r in records if r["event"] == "match" and r["visit_id"] == cjk_visit)
    assert any(s[0] == shown_code(code) for s in seen)  # the member's code, not "王伟"
    assert any(s[0].startswith("Your code: ") for s in seen)
    assert emulator.text == IDLE and emulator.errors == [] and emulator.initialised == 1
    assert daemon.health()["display"] == "off"  # stopped with the daemon


def test_display_outage_loses_no_decision_and_resumes(faces_dir: Path, tmp_path: Path, vfd) -> None:
    """The pty is gone for 10 s of a real-time replay: every visit is still decided, and the display
    comes back with the greeting and the screens of the visits decided after it returned."""
    pty, emulator = vfd
    scenario, config, cfg_path = enrolled_unit(
        faces_dir, tmp_path, members=3, strangers=2, seed=7, extra=display_section(pty.path)
    )
    events = tmp_path / "events.jsonl"
    daemon = Daemon(config, cfg_path, events, lockstep_replay=False)  # frames on the wall clock
    thread = run_in_thread(daemon)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []

    assert pty.wait_for(lambda: emulator.text not in (IDLE, ("", "")), timeout=30), "no decision shown"
    pty.unplug()
    unplugged_at, before = time.monotonic(), len(decided(lines()))
    while time.monotonic() < unplugged_at + 10.0:
        time.sleep(0.1)
        assert thread.is_alive(), "the replay ended during the outage: make it longer"
    states_seen = daemon.health()["display"]
    during = len(decided(lines())) - before
    pty.replug()
    assert pty.wait_for(lambda: emulator.initialised == 2), "the display was not reopened"
    # From here on every decision must reach the display. (Between the replug and the reopen, after
    # the back-off, a visitor screen upgraded to a match may rightly never be shown: newest wins.)
    with pty.lock:
        back_at_screen, back_at = len(emulator.history), datetime.now(UTC)
    thread.join(90)
    assert not thread.is_alive()

    records = lines()
    assert len(decided(records)) == len(scenario.truth), "a decision was lost"
    assert during >= 1, "no visit was decided while the display was away"
    assert states_seen == "reconnecting"
    # An event's `ts` is taken before the display hears of it, so these came after `back_at_screen`.
    later = [r for r in records if datetime.fromisoformat(r["ts"]) > back_at]
    assert any(r["event"] in ("match", "visitor") for r in later), "no decision after the display came back"
    after = expected_screens(later, {})
    # The screen on display when it came back counts too: a decision that brings the same screen
    # (the next member's greeting right after the last one's) leaves it there, unwritten.
    shown = emulator.history[max(back_at_screen - 1, 0) :]
    seen = [tuple(line.strip() for line in screen) for screen in shown]
    told = [(r["event"], r["visit_id"][:8], r["ts"], r.get("upgrade")) for r in later]
    assert is_subsequence(after, seen), f"wanted {after}\nseen {seen}\nfrom {told}"
    assert emulator.initialised == 2 and emulator.errors == [] and emulator.text == IDLE
