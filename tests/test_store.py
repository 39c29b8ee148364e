"""The reference store server end to end: two real tills (daemons as subprocesses, replays of a real
faces-dev photo rendered at test time), a real mosquitto, the store server and its HTTP API.

A visitor at till A is enrolled with consent through `POST /members`; a receipt accrues points; at
till B she is recognised and the store answers with `cmd/display` (name and points) within 200 ms;
`DELETE /members` erases her everywhere (and, on SQLite, her phone and name from the database's files),
and her next visit at till B is a visitor's. Each step uses a key of the role that does it in a store
(cashier, till-pos, manager), and the audit names them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mosquitto import free_port
from mqtt_peer import Peer
from replay_fixtures import lfw_identities
from store_clients import Clients
from till_process import Till, decisions, health_members, render
from tillface.link.schemas import DisplayCommand
from tillface.recognition.gallery import create_key_file
from tillface.store.config import load_store_config
from tillface.store.db import schema_drift
from tillface.store.service import StoreServer

STORE = "s1"
CONSENT = {"text_version": "2026-01", "channel": "till-screen"}


@pytest.fixture
def photo(faces_dir: Path) -> Path:
    multi, _single = lfw_identities(faces_dir)
    return faces_dir / multi[sorted(multi)[3]][0]


def store_config(tmp_path: Path, port: int, database_url: str):
    return load_store_config(
        None,
        {
            "store": {"id": STORE, "database_url": database_url, "phone_region": "GB", "erase_timeout_s": 10},
            "mqtt": {"port": port},
            "keys": {"dir": tmp_path / "store-keys"},  # the tills register their keys here (till_process)
        },
    )


def database_bytes(db: Path) -> bytes:
    """Every file of an SQLite database (the database, -wal, -shm), as they are on disk."""
    files = sorted(db.parent.glob(db.name + "*"))
    assert db in files
    return b"".join(f.read_bytes() for f in files)


def audited(c: Clients, member_id: str) -> list[dict]:
    r = c.boss.get("/audit", params={"member_id": member_id})
    assert r.status_code == 200, r.text
    return list(reversed(r.json()))  # oldest first


def run_story(tmp_path: Path, broker, photo: Path, database_url: str) -> None:
    sqlite_file = Path(database_url.removeprefix("sqlite:///")) if database_url.startswith("sqlite") else None
    key = tmp_path / "store.key"
    create_key_file(key)
    tills = {t: Till(tmp_path, t, broker.port, key) for t in ("ta", "tb")}
    replays = {
        "ta": render(photo, tills["ta"].cam, "ta-1", seed=1, pad_s=30),
        "tb": render(photo, tills["tb"].cam, "tb-1", seed=2, pad_s=20),
        "tb2": render(photo, tills["tb"].cam, "tb-2", seed=9, pad_s=5),
    }
    server = StoreServer(store_config(tmp_path, broker.port, database_url))
    server.start()
    c = Clients(server)
    peer = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="observer")
    try:
        for t in tills.values():
            t.start()
        peer.wait_for(lambda ms: all(health_members(peer, t) == 0 for t in tills), timeout=60)
        assert {t: s.status for t, s in server.tills.items()} == {"ta": "online", "tb": "online"}

        # A visitor at till A: the cashier finds her code and enrols her with consent.
        tills["ta"].show(replays["ta"])
        peer.wait_for(lambda ms: decisions(peer, "ta"), timeout=60)
        assert decisions(peer, "ta")[0]["event"] == "visitor"
        deadline = time.monotonic() + 5
        while not (open_codes := [v for v in c.desk.get("/visitors").json() if v["till"] == "ta"]):
            assert time.monotonic() < deadline, "the store never listed the visitor"
            time.sleep(0.05)
        code = open_codes[0]
        assert code["visitor_code"] == decisions(peer, "ta")[0]["visitor_code"]
        r = c.desk.post(
            "/members",
            json={
                "phone": "+44 7911 123456",
                "name": "Ada Lovelace",
                "visitor_code": code["visitor_code"],
                "till": "ta",
                "consent": CONSENT,
            },
        )
        assert r.status_code == 201, r.text
        member = r.json()
        assert member["enrolled_till"] == "ta" and member["consents"][0]["text_version"] == "2026-01"
        enrolled = peer.on("/ta/event/enrolled")[0].json()
        assert enrolled["member_id"] == member["id"]
        items = [
            {"sku": "C1", "name": "Espresso beans", "qty": 1, "price": "12.99"},
            {"sku": "M1", "name": "Oat milk", "qty": 2, "price": "1.80"},
        ]
        r = c.pos.post(
            "/receipts", json={"visit_id": code["visit_id"], "till": "ta", "items": items, "total": "16.59"}
        )
        assert r.status_code == 201 and r.json()["points_total"] == 16, r.text

        # At till B she is recognised; the store puts her name and points on B's display at once.
        peer.wait_for(lambda ms: health_members(peer, "tb") == 1, timeout=10)
        tills["tb"].show(replays["tb"])
        peer.wait_for(lambda ms: decisions(peer, "tb") and peer.on("/tb/cmd/display"), timeout=60)
        match = decisions(peer, "tb")[0]
        assert match["event"] == "match" and match["member_id"] == member["id"], match
        shown = peer.on("/tb/cmd/display")[0]
        assert shown.at - match["at"] < 0.2, (
            f"cmd/display {1000 * (shown.at - match['at']):.0f} ms after match"
        )
        display = DisplayCommand.model_validate(shown.json())
        assert (
            display.name == "Ada Lovelace" and display.points == 16 and display.visit_id == match["visit_id"]
        )
        assert display.last_purchase and "Espresso beans" in display.last_purchase
        r = c.pos.post(
            "/receipts",
            json={"visit_id": match["visit_id"], "till": "tb", "items": items[:1], "total": "12.99"},
        )
        assert r.status_code == 201 and r.json()["points_awarded"] == 12 and r.json()["points_total"] == 28
        assert c.desk.get(f"/members/{member['id']}").json()["points"] == 28

        # Erase: both online tills acknowledge before DELETE returns.
        personal = [b"+447911123456", b"Ada Lovelace"]
        if sqlite_file is not None:
            held = database_bytes(sqlite_file)
            assert all(p in held for p in personal), "the test looks for the wrong bytes"
        r = c.boss.delete(f"/members/{member['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["acknowledged"] == ["ta", "tb"] and r.json()["queued"] == []
        assert c.desk.get(f"/members/{member['id']}").status_code == 404
        if sqlite_file is not None:  # secure_delete + WAL checkpoint: gone from the files themselves
            held = database_bytes(sqlite_file)
            assert not [p for p in personal if p in held], "personal data left in the SQLite files"

        # The audit: who enrolled her, awarded her points and erased her; never her phone or name.
        trail = [(e["action"], e["key_name"], e["role"], e["points"]) for e in audited(c, member["id"])]
        assert trail == [
            ("enrol", "front desk", "cashier", None),
            ("points", "till 1 POS", "till-pos", 16),
            ("points", "till 1 POS", "till-pos", 12),
            ("erase", "store manager", "manager", None),
        ], trail
        assert not [e for e in c.boss.get("/audit").json() if "Ada" in str(e) or "7911" in str(e)]
        for statement in ("UPDATE audit SET points = 0", "DELETE FROM audit"):  # append-only, here too
            with server.sessions() as s, pytest.raises(DBAPIError, match="append-only"):
                s.execute(text(statement))
                s.commit()

        # Her next visit at till B: a visitor again.
        tills["tb"].stop()
        before = len(decisions(peer, "tb"))
        tills["tb"].show(replays["tb2"])
        tills["tb"].start()
        peer.wait_for(lambda ms: len(decisions(peer, "tb")) > before, timeout=60)
        again = decisions(peer, "tb")[before]
        assert again["event"] == "visitor", again
        assert not peer.on("/event/error"), [m.json() for m in peer.on("/event/error")]
    finally:
        for t in tills.values():
            t.stop()
        peer.close()
        server.stop()
    logs = "".join((t.state / "log.txt").read_text() for t in tills.values())
    assert "Traceback" not in logs


def test_store_story_end_to_end_sqlite(tmp_path, broker, photo):
    run_story(tmp_path, broker, photo, f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster (Debian's postgresql package) on a free port; its URL."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="tillface-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the package's postgres user
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_store_story_end_to_end_postgresql(tmp_path, broker, photo, postgres):
    run_story(tmp_path, broker, photo, postgres)
    assert schema_drift(postgres) == []  # the Alembic migrations build exactly the models here too


def test_a_member_imported_at_a_till_is_erased_store_wide(tmp_path, broker, photo):
    """`tillface gallery import --consent-ref` at till A: the store learns the member from her signed
    state in the store gallery (with the consent reference), and the manager's DELETE /members erases
    her at every till, audited with that reference."""
    import sys

    key = tmp_path / "store.key"
    create_key_file(key)
    tills = {t: Till(tmp_path, t, broker.port, key) for t in ("ta", "tb")}
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,identity\n{photo.name},imported-0007\n", encoding="utf-8")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "tillface", "gallery", "import", "--config", str(tills["ta"].cfg)),
            *("--images", str(photo.parent), "--labels", str(labels), "--consent-ref", "paper-form-7"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "imported 1 photos" in out.stdout, out.stdout + out.stderr
    server = StoreServer(store_config(tmp_path, broker.port, f"sqlite:///{tmp_path / 'store.db'}"))
    server.start()
    c = Clients(server)
    peer = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="observer")
    try:
        for t in tills.values():
            t.start()
        peer.wait_for(lambda ms: all(health_members(peer, t) == 1 for t in tills), timeout=60)
        deadline = time.monotonic() + 5
        while "imported-0007" not in server.gallery_members:
            assert time.monotonic() < deadline, f"the store never saw her state; refused: {server.refused}"
            time.sleep(0.05)
        assert server.gallery_members["imported-0007"] == ("ta", "paper-form-7")
        assert c.desk.delete("/members/imported-0007").status_code == 403  # a cashier may not erase
        assert c.boss.delete("/members/nobody-here").status_code == 404
        r = c.boss.delete("/members/imported-0007")
        assert r.status_code == 200, r.text
        assert r.json()["erased"] and r.json()["acknowledged"] == ["ta", "tb"], r.json()
        peer.wait_for(lambda ms: all(health_members(peer, t) == 0 for t in tills), timeout=10)
        trail = audited(c, "imported-0007")
        assert [(e["action"], e["role"]) for e in trail] == [("erase", "manager")], trail
        assert "paper-form-7" in trail[0]["detail"] and "till ta" in trail[0]["detail"]
        assert "imported-0007" not in server.gallery_members
    finally:
        for t in tills.values():
            t.stop()
        peer.close()
        server.stop()
