"""`tillface demo`, the README's first command after set-up: the whole system on one machine (its own
mosquitto, the store server on SQLite, one unit on a replay camera, the ESC/POS display on a pty) tells
the story, prints it, stops everything it started and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

SCREEN = re.compile(r"^\[ *[\d.]+s\] customer display:\n +[┌+].*\n +[│|](.*)[│|]\n +[│|](.*)[│|]\n", re.M)


def running_with(text: str) -> list[str]:
    """Command lines of live processes that mention `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_demo_tells_the_story(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "tillface", "demo", "--state", str(folder)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=240,
    )
    took = time.monotonic() - started
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr}"
    assert took < 90, f"the demo took {took:.0f} s"
    # The cashier's page address, and where its sign-in key is (the key itself never printed).
    page = re.search(
        r"cashier page  (http://127\.0\.0\.1:\d+/till/till-1) \(sign in with the cashier key in (\S+)\)", out
    )
    assert page, out
    key_file = Path(page.group(2))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip().startswith("tfk_") and key_file.read_text().strip() not in out

    # The narrated story, in order.
    code = re.search(r"event/visitor, visitor code ([A-Z]{3}-\d\d)", out)
    assert code, out
    member = re.search(r"201, member (m-[0-9a-f]+)", out)
    assert member, out
    story = [
        f"visitor code {code[1]}",
        f"GET /visitors lists {code[1]}",
        "POST /members (phone +44 7911 123456, name Eileen Collins",
        f"visit 2: she comes back → event/match, member {member[1]}",
        "cmd/display → name Eileen Collins, 0 points",
        "POST /receipts for visit 2",
        "+16 points, 16 in total",
        f"visit 3: she comes back → event/match, member {member[1]}",
        "cmd/display → name Eileen Collins, 16 points",
        "the replay ended and the unit stopped by itself",
        "the story happened",
    ]
    at = [out.find(step) for step in story]
    assert all(i >= 0 for i in at) and at == sorted(at), f"{list(zip(story, at, strict=True))}\n{out}"

    # The display's 2×20 screens, as printed: idle, the code, then her name with 0 and then 16 points.
    screens = [(a.strip(), b.strip()) for a, b in SCREEN.findall(out)]
    assert screens and screens[0] == ("Welcome!", ""), out
    assert all(len(a) == 20 and len(b) == 20 for a, b in SCREEN.findall(out))
    wanted = [
        (f"Your code: {code[1]}", "Ask us to join!"),
        ("Hello, Eileen C.!", "Points: 0"),
        ("Hello, Eileen C.!", "Points: 16"),
        ("Welcome!", ""),
    ]
    it = iter(screens)
    assert all(any(s == w for s in it) for w in wanted), f"wanted {wanted} in order, printed {screens}"

    # Everything it started has stopped; the logs hold no error.
    assert running_with(str(folder)) == []
    for log in ("till.log", "store.log"):
        assert "Traceback" not in (folder / log).read_text(), log

    # On the closed broker we ship: no anonymous client; the unit and the store server (and the demo's
    # watcher, with the store's account) connected with their provisioned accounts.
    conf = (folder / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "allow_anonymous true" not in conf
    broker_log = (folder / "broker" / "mosquitto.log").read_text()
    assert "as tillface-demo-till-1 (p5, c0, k30, u'till-demo-till-1')" in broker_log, broker_log
    assert "as tillface-store-demo (p5, c0, k30, u'store-demo')" in broker_log, broker_log
    assert "not authorised" not in broker_log
