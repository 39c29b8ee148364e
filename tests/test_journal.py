"""journald logging: structured fields through systemd-python's JournalHandler, no biometrics ever; the
stderr fallbacks; sd_notify through libsystemd."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from replay_fixtures import build_scenario, write_config
from tillface.app import Daemon, open_gallery
from tillface.config import load_config
from tillface.enrol import import_photos
from tillface.events import log_decision
from tillface.recognition.gallery import create_key_file
from tillface.system.journal import journal_fields, make_journal_handler, setup_logging
from tillface.system.notify import Notifier

# Eight or more numbers with decimals in a row: what an embedding (or any vector) looks like in text.
FLOAT_RUN = re.compile(r"(-?\d+\.\d+(?:e-?\d+)?[,\s]+){7,}-?\d+\.\d+")


@pytest.fixture
def root_logging():
    """Restore the root logger's handlers and level after a test that configures logging."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


class Capture:
    """A `sender_function` for JournalHandler: what systemd.journal.send would get."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def __call__(self, message: str, **fields: object) -> None:
        self.entries.append({"MESSAGE": message, **{k: str(v) for k, v in fields.items()}})


def test_journal_fields_keep_short_scalars_and_drop_vectors():
    record = logging.makeLogRecord(
        {
            "msg": "x",
            "journal": {
                "TILLFACE_VISIT_ID": "3fa1c0de",
                "TILLFACE_SCORE": 0.9712,
                "TILLFACE_FRAMES": 5,
                "TILLFACE_UPGRADE": True,
                "TILLFACE_MEMBER_ID": None,
                "TILLFACE_NP_SCORE": np.float32(0.5),
                "TILLFACE_EMBEDDING": np.linspace(-1, 1, 128, dtype=np.float32),
                "TILLFACE_LIST": [0.1] * 128,
                "TILLFACE_TEXT": ",".join(["0.123456"] * 128),
                "TILLFACE_BYTES": np.zeros(128, np.float32).tobytes(),
                "TILLFACE_DICT": {"a": 1},
                "lower_case": "x",
                "PRIORITY": "0",
                "MESSAGE": "forged",
            },
        }
    )
    assert journal_fields(record) == {
        "TILLFACE_VISIT_ID": "3fa1c0de",
        "TILLFACE_SCORE": "0.9712",
        "TILLFACE_FRAMES": "5",
        "TILLFACE_UPGRADE": "true",
        "TILLFACE_MEMBER_ID": "none",
        "TILLFACE_NP_SCORE": "0.5",
    }
    assert journal_fields(logging.makeLogRecord({"msg": "no extra"})) == {}


def test_a_decision_reaches_the_journal_handler_with_its_fields(root_logging):
    capture = Capture()
    handler = make_journal_handler(sender=capture)
    assert handler is not None, "systemd-python is part of the dev extra (scripts/setup.sh --dev)"
    from systemd.journal import JournalHandler

    assert isinstance(handler, JournalHandler)
    root_logging.addHandler(handler)
    root_logging.setLevel(logging.INFO)
    record = {
        "event": "match",
        "visit_id": "3fa1c0de",
        "member_id": "member-0001",
        "score": 0.9712,
        "margin": 0.081,
        "frames": 5,
    }
    log_decision(record, latency_ms=412.0)
    assert len(capture.entries) == 1
    entry = capture.entries[0]
    assert entry["MESSAGE"].startswith("match visit_id=3fa1c0de member_id=member-0001 score=0.9712")
    assert entry["TILLFACE_EVENT"] == "match"
    assert entry["TILLFACE_VISIT_ID"] == "3fa1c0de"
    assert entry["TILLFACE_MEMBER_ID"] == "member-0001"
    assert entry["TILLFACE_SCORE"] == "0.9712"
    assert entry["TILLFACE_MARGIN"] == "0.081"
    assert entry["PRIORITY"] == "6" and entry["LOGGER"] == "tillface.events"
    assert entry["SYSLOG_IDENTIFIER"] == "tillface"
    # Only journald-valid names: the stock handler would also forward msg, args, journal, ...
    assert all(re.fullmatch(r"[A-Z0-9_]+", name) for name in entry), sorted(entry)


def test_setup_logging_picks_journal_under_systemd_else_stderr(root_logging, monkeypatch, capfd):
    assert setup_logging("INFO", environ={}) == "stderr"
    logging.getLogger("tillface.t").info("plain line")
    assert re.search(r"^\d{4}-\d\d-\d\d .* INFO tillface\.t: plain line$", capfd.readouterr().err, re.M)

    assert setup_logging("INFO", environ={"INVOCATION_ID": "abc"}) == "journal"
    assert type(root_logging.handlers[0]).__name__ == "TillfaceJournalHandler"
    assert setup_logging("INFO", environ={"JOURNAL_STREAM": "8:1234"}) == "journal"

    # Without systemd-python: stderr lines with the syslog priority prefix journald understands.
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    assert setup_logging("INFO", environ={"JOURNAL_STREAM": "8:1234"}) == "stderr-journal"
    logging.getLogger("tillface.t").warning("camera lost")
    logging.getLogger("tillface.t").info("ready")
    assert capfd.readouterr().err.splitlines() == ["<4>tillface.t: camera lost", "<6>tillface.t: ready"]


def test_sd_notify_goes_through_libsystemd_when_installed(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = Notifier()
        assert notifier._library is not None, "systemd-python is part of the dev extra"
        notifier.ready("camera ok")
        assert server.recv(4096).decode() == "READY=1\nSTATUS=camera ok"
        # An injected environment (tests, tools) always uses the plain socket.
        assert Notifier({"NOTIFY_SOCKET": str(path)})._library is None
    finally:
        server.close()


@pytest.fixture(scope="module")
def replay_unit(faces_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("journal")
    scenario = build_scenario(faces_dir, work, members=2, strangers=1)
    cfg = write_config(work / "till.toml", work / "state", f"replay:{scenario.replay_dir}")
    # DEBUG: every log line the daemon can write is on.
    cfg.write_text(cfg.read_text().replace('till_id = "t1"', 'till_id = "t1"\nlog_level = "DEBUG"'))
    config = load_config(cfg)
    (work / "state").mkdir()
    create_key_file(config.gallery.key_file)
    gallery = open_gallery(config, cfg)
    assert (
        import_photos(gallery, config, faces_dir, scenario.enrol_csv, progress=False, consent_ref="test") == 0
    )
    return scenario, cfg, work


def assert_no_biometrics(text: str) -> None:
    assert not FLOAT_RUN.search(text), FLOAT_RUN.search(text)
    assert "array(" not in text
    for line in text.splitlines():
        if "embedding" in line.lower():
            # The only mention allowed: the count in the closing line.
            assert re.search(r"\d+ embeddings", line), line


def test_a_replay_logs_no_biometrics_to_stderr_or_events(replay_unit):
    scenario, cfg, work = replay_unit
    events = work / "events.jsonl"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tillface",
            "run",
            "--config",
            str(cfg),
            "--lockstep",
            "--events-jsonl",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")},
    )
    assert out.returncode == 0, out.stderr
    log = out.stderr
    assert "tillface stopped" in log
    decisions = [line for line in log.splitlines() if re.search(r"tillface\.events: (match|visitor) ", line)]
    assert len(decisions) >= len(scenario.truth), log
    assert_no_biometrics(log)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert records and all(not any("embed" in k or "template" in k for k in r) for r in records)
    assert_no_biometrics(events.read_text())


def test_a_replay_sends_the_journal_only_vetted_fields(replay_unit, root_logging):
    scenario, cfg, _work = replay_unit
    capture = Capture()
    handler = make_journal_handler(sender=capture)
    assert handler is not None
    root_logging.addHandler(handler)
    root_logging.setLevel(logging.DEBUG)
    config = load_config(cfg)
    assert Daemon(config, cfg, None, lockstep_replay=True).run() == 0
    decisions = [e for e in capture.entries if e.get("TILLFACE_EVENT") in ("match", "visitor")]
    assert len(decisions) >= len(scenario.truth)
    assert all(e["TILLFACE_VISIT_ID"] and "TILLFACE_SCORE" in e for e in decisions)
    matches = [e for e in decisions if e["TILLFACE_EVENT"] == "match"]
    assert {e["TILLFACE_MEMBER_ID"] for e in matches} <= scenario.members
    for entry in capture.entries:
        assert all(re.fullmatch(r"[A-Z0-9_]+", name) for name in entry)
        assert not any("EMBED" in name or "TEMPLATE" in name for name in entry)
        assert_no_biometrics("\n".join(entry.values()))
