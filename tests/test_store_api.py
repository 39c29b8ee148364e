"""The reference store server against a real broker, with a test peer playing the till: bad input is a
clear 4xx, events are de-duplicated, enrolment waits for the till's answer, receipts accrue points, a
match gets `cmd/display` at once, and an erase waits for the online tills."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mosquitto import free_port
from mqtt_peer import Peer
from signing_keys import StoreKeys, status
from store_clients import Clients, bearer
from tillface.events import utc_now
from tillface.link.gallery_sync import MemberState
from tillface.link.schemas import (
    DisplayCommand,
    EnrollCommand,
    EnrolledEvent,
    ErasedEvent,
    ErrorEvent,
    MatchEvent,
    VisitorEvent,
)
from tillface.store.config import load_store_config
from tillface.store.db import Member, Receipt, ReceiptItem, open_database, schema_drift, suggestions
from tillface.store.service import StoreServer

STORE = "s1"
CONSENT = {"text_version": "2026-01", "channel": "till-screen"}


def envelope(till: str) -> dict:
    return {"event_id": str(uuid.uuid4()), "ts": utc_now(), "store": STORE, "till": till}


def visitor(till: str, code: str, visit_id: str, valid_s: float = 120) -> VisitorEvent:
    until = (datetime.now(UTC) + timedelta(seconds=valid_s)).isoformat(timespec="milliseconds")
    return VisitorEvent(
        **envelope(till),
        visit_id=visit_id,
        visitor_code=code,
        quality=0.8,
        enroll_until=until.replace("+00:00", "Z"),
    )


def wire(model) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


SIGNERS: dict = {}  # till -> its signing key, registered in ./store-keys (the default [keys] dir)


@pytest.fixture(autouse=True)
def store_keys(tmp_path: Path, monkeypatch):
    """The store server's keys folder, `store-keys` in the test's folder (its working directory), with
    tills t1-t3 provisioned: the fake till signs as they would."""
    monkeypatch.chdir(tmp_path)
    keys = StoreKeys(tmp_path / "store-keys")
    SIGNERS.clear()
    SIGNERS.update({t: keys.provision(t, tmp_path / "tills" / t) for t in ("t1", "t2", "t3")})
    return keys


@pytest.fixture
def server(tmp_path: Path, broker):
    config = load_store_config(
        None,
        {
            "store": {
                "id": STORE,
                "database_url": f"sqlite:///{tmp_path / 'store.db'}",
                "phone_region": "GB",
                "enroll_timeout_s": 3,
                "erase_timeout_s": 1.5,
            },
            "mqtt": {"port": broker.port},
        },
    )
    srv = StoreServer(config)
    srv.start()
    assert srv.connected.is_set()
    yield srv
    srv.stop()


@pytest.fixture
def till(broker):
    peer = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="fake-till")
    yield peer
    peer.close()


def send_event(peer: Peer, model, kind: str) -> None:
    topic = f"tillface/{STORE}/{model.till}/event/{kind}"
    peer.send(topic, SIGNERS[model.till].sign(topic, json.loads(wire(model))), sign=False)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_bad_input_is_a_clear_4xx(server, till):
    send_event(till, visitor("t1", "KQX-42", "v1"), "visitor")
    send_event(till, visitor("t1", "OLD-11", "v0", valid_s=-5), "visitor")
    c = Clients(server)
    wait_until(lambda: len(c.desk.get("/visitors").json()) == 1)
    member = {"phone": "020 7946 0018", "name": "Ada", "visitor_code": "KQX-42", "till": "t1"}

    r = c.desk.post("/members", json={**member, "phone": "12ab", "consent": CONSENT})
    assert r.status_code == 422 and "phone" in r.json()["detail"]
    r = c.desk.post("/members", json={**member, "phone": "+44 20 7946 001", "consent": CONSENT})
    assert r.status_code == 422 and "not a valid number" in r.json()["detail"]
    r = c.desk.post("/members", json=member)  # no consent
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "consent"]
    r = c.desk.post("/members", json={**member, "consent": {"text_version": "", "channel": "x"}})
    assert r.status_code == 422
    r = c.desk.post("/members", json={**member, "visitor_code": "ZZZ-99", "consent": CONSENT})
    assert r.status_code == 404 and "ZZZ-99" in r.json()["detail"]
    r = c.desk.post("/members", json={**member, "till": "t9", "consent": CONSENT})
    assert r.status_code == 404 and "t9" in r.json()["detail"]
    r = c.desk.post("/members", json={**member, "visitor_code": "OLD-11", "consent": CONSENT})
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    r = c.desk.post("/members", json={**member, "visitor_code": "kqx42", "consent": CONSENT})
    assert r.status_code == 422
    till.send(*status(SIGNERS["t3"], STORE, "t3", "offline", "3" * 32), retain=True)
    send_event(till, visitor("t3", "OFF-33", "v3"), "visitor")
    wait_until(lambda: server.tills.get("t3") is not None and len(c.desk.get("/visitors").json()) == 2)
    r = c.desk.post("/members", json={**member, "till": "t3", "visitor_code": "OFF-33", "consent": CONSENT})
    assert r.status_code == 409 and "offline" in r.json()["detail"]

    item = {"sku": "A1", "name": "Coffee", "qty": 1, "price": "2.50"}
    r = c.pos.post("/receipts", json={"items": [item], "total": "2.50"})
    assert r.status_code == 422 and "visit_id or member_id" in json.dumps(r.json())
    r = c.pos.post("/receipts", json={"visit_id": "nope", "items": [item], "total": "2.50"})
    assert r.status_code == 404
    r = c.pos.post("/receipts", json={"member_id": "m-x", "items": [item], "total": "2.50"})
    assert r.status_code == 404
    r = c.pos.post("/receipts", json={"member_id": "m-x", "items": [], "total": "2.50"})
    assert r.status_code == 422
    r = c.pos.post("/receipts", json={"member_id": "m-x", "items": [item], "total": "-1"})
    assert r.status_code == 422
    assert c.boss.delete("/members/m-x").status_code == 404
    assert c.desk.get("/members/m-x").status_code == 404
    assert not [m for m in till.messages if "/cmd/" in m.topic]  # nothing was sent to the till


def test_enrol_receipt_display_erase_with_a_fake_till(server, till):
    c = Clients(server)
    till.send(*status(SIGNERS["t1"], STORE, "t1", "online", "1" * 32), retain=True)
    till.send(*status(SIGNERS["t2"], STORE, "t2", "offline", "2" * 32), retain=True)
    event = visitor("t1", "KQX-42", "v1")
    for _ in range(3):  # QoS 1 re-delivery / outbox resend: one visit
        send_event(till, event, "visitor")
    send_event(till, visitor("t1", "BRT-07", "v2"), "visitor")
    wait_until(lambda: len(c.desk.get("/visitors").json()) == 2)
    assert {v["visitor_code"] for v in c.desk.get("/visitors").json()} == {"KQX-42", "BRT-07"}
    assert c.desk.get("/visitors", params={"till": "t2"}).json() == []

    # The till refuses one enrolment (its reason comes back as a 409) and accepts the other.
    def answer() -> None:
        for n in range(2):
            msg = till.wait_for(lambda ms, n=n: len([m for m in ms if m.topic.endswith("/cmd/enroll")]) > n)
            cmd = EnrollCommand.model_validate([m for m in msg if m.topic.endswith("/cmd/enroll")][n].json())
            assert cmd.consent_ref.startswith("consent-")
            if cmd.visitor_code == "BRT-07":
                reply = ErrorEvent(
                    **envelope("t1"),
                    topic=f"tillface/{STORE}/t1/cmd/enroll",
                    request_id=cmd.request_id,
                    reason="no pending enrolment for visitor code BRT-07",
                )
                send_event(till, reply, "error")
            else:
                enrolled = EnrolledEvent(
                    **envelope("t1"),
                    request_id=cmd.request_id,
                    member_id=cmd.member_id,
                    template_id="ab" * 16,
                    templates=1,
                    gallery_version=3,
                    visit_id="v1",
                )
                send_event(till, enrolled, "enrolled")
                send_event(till, enrolled, "enrolled")  # a duplicate changes nothing

    answering = threading.Thread(target=answer)
    answering.start()
    r = c.desk.post(
        "/members",
        json={
            "phone": "+44 7911 123456",
            "name": "Bo",
            "visitor_code": "BRT-07",
            "till": "t1",
            "consent": CONSENT,
        },
    )
    assert r.status_code == 409 and "BRT-07" in r.json()["detail"]["reason"]
    r = c.desk.post(
        "/members",
        json={
            "phone": "020 7946 0018",
            "name": "Ada",
            "visitor_code": "KQX-42",
            "till": "t1",
            "consent": CONSENT,
        },
    )
    answering.join()
    assert r.status_code == 201, r.text
    member = r.json()
    assert member["phone"] == "+442079460018" and member["points"] == 0
    assert (
        member["consents"][0]["text_version"] == "2026-01"
        and member["consents"][0]["channel"] == "till-screen"
    )
    assert {v["visitor_code"] for v in c.desk.get("/visitors").json()} == {"BRT-07"}  # KQX-42 is taken now
    r = c.desk.post(
        "/members",
        json={
            "phone": "+442079460018",
            "name": "Ada",
            "visitor_code": "BRT-07",
            "till": "t1",
            "consent": CONSENT,
        },
    )
    assert r.status_code == 409 and "phone" in r.json()["detail"]
    with server.sessions() as s:
        assert s.query(Member).count() == 1  # the refused enrolment left no member behind
    # ... and the audit says so: each attempt an enrol by the desk's key, the refused one undone.
    trail = [(e["action"], e["key_name"]) for e in reversed(c.boss.get("/audit").json()) if e["member_id"]]
    assert trail == [
        ("enrol", "front desk"),
        ("enrol-undone", "front desk"),
        ("enrol", "front desk"),
    ], trail

    # A receipt for the enrolment visit accrues 1 point per whole unit.
    items = [
        {"sku": "C1", "name": "Espresso beans", "qty": 1, "price": "12.99"},
        {"sku": "M1", "name": "Oat milk", "qty": 2, "price": "1.80"},
    ]
    r = c.pos.post("/receipts", json={"visit_id": "v1", "till": "t1", "items": items, "total": "16.59"})
    assert r.status_code == 201, r.text
    assert r.json()["member_id"] == member["id"] and r.json()["points_awarded"] == 16
    other = [{"sku": "C1", "name": "Espresso beans", "qty": 1, "price": "12.99"}]
    other.append({"sku": "F1", "name": "Croissant", "qty": 1, "price": "2.20"})
    r = c.pos.post("/receipts", json={"visit_id": "v2", "items": other, "total": "15.19"})
    assert r.status_code == 201 and r.json()["member_id"] is None and r.json()["points_awarded"] == 0

    # She comes back: a match gets her name, points, last purchase and suggestions within 200 ms.
    match = MatchEvent(
        **envelope("t2"),
        visit_id="v7",
        member_id=member["id"],
        score=0.8,
        margin=0.3,
        frames=5,
        quality=0.9,
        gallery_version=3,
        model="m",
    )
    t0 = time.monotonic()
    send_event(till, match, "match")
    msgs = till.wait_for(lambda ms: any(m.topic.endswith("/t2/cmd/display") for m in ms))
    shown = next(m for m in msgs if m.topic.endswith("/t2/cmd/display"))
    assert shown.at - t0 < 0.2
    display = DisplayCommand.model_validate(shown.json())
    assert display.name == "Ada" and display.points == 16 and display.visit_id == "v7"
    assert display.last_purchase and "Espresso beans" in display.last_purchase
    assert display.suggestions == ["Croissant"]

    # Erase: t1 (online) acknowledges; t2 (offline) is listed as queued.
    def ack() -> None:
        msg = till.wait_for(lambda ms: any(f"/gallery/members/{member['id']}" in m.topic for m in ms))
        tomb = MemberState.model_validate(next(m for m in msg if "/gallery/members/" in m.topic).json())
        assert tomb.erased and tomb.templates is None and tomb.revision > 1_700_000_000_000
        send_event(
            till,
            ErasedEvent(**envelope("t1"), member_id=member["id"], gallery_version=4, found=True),
            "erased",
        )

    acking = threading.Thread(target=ack)
    acking.start()
    r = c.boss.delete(f"/members/{member['id']}")
    acking.join()
    assert r.status_code == 200, r.text
    assert r.json()["acknowledged"] == ["t1"] and r.json()["queued"] == ["t2"]
    assert c.desk.get(f"/members/{member['id']}").status_code == 404
    with server.sessions() as s:
        assert s.query(Member).count() == 0
        assert all(rc.member_id is None for rc in s.query(Receipt))  # receipts kept, unlinked
    assert c.anonymous.get("/openapi.json").json()["paths"].keys() >= {"/visitors", "/members", "/receipts"}


def test_old_event_ids_are_pruned(server):
    from tillface.store.db import SeenEvent

    with server.sessions() as s:
        s.add(
            SeenEvent(
                event_id="old", till="t1", kind="match", received_at=datetime.now(UTC) - timedelta(days=40)
            )
        )
        s.add(SeenEvent(event_id="new", till="t1", kind="match"))
        s.commit()
    assert server.prune_seen() == 1
    with server.sessions() as s:
        assert [e.event_id for e in s.query(SeenEvent)] == ["new"]


def test_suggestions_by_co_occurrence(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 's.db'}")
    baskets = {
        "me": [["bread", "butter"]],
        None: [
            ["bread", "jam"],
            ["bread", "jam", "tea"],
            ["butter", "milk"],
            ["coffee"],
            ["coffee"],
            ["coffee"],
        ],
    }
    with sessions() as s:
        s.add(Member(id="me", phone="+1", name="Me", points=0))
        for who, lists in baskets.items():
            for skus in lists:
                s.add(
                    Receipt(
                        member_id=who,
                        total_cents=100,
                        points=0,
                        items=[ReceiptItem(sku=k, name=k.title(), qty=1, price_cents=100) for k in skus],
                    )
                )
        s.commit()
        # jam shares 2 baskets with bread; milk and tea 1 each (milk more popular? equal: sku order)
        assert suggestions(s, "me") == ["Jam", "Milk", "Tea"]
        assert suggestions(s, "nobody") == ["Bread", "Coffee", "Butter"]  # most frequent SKUs


def test_events_sent_while_the_store_server_is_away_arrive_after_it_restarts(server, till):
    """A persistent session (MQTT 5, session expiry): QoS 1 events wait on the broker for the server."""
    send_event(till, visitor("t1", "FRS-01", "v1"), "visitor")
    wait_until(lambda: len(server.visitors()) == 1)
    server.stop()
    send_event(till, visitor("t1", "SND-02", "v2"), "visitor")
    again = StoreServer(server.config, server.sessions)
    again.start()
    try:
        wait_until(lambda: {v["visitor_code"] for v in again.visitors()} == {"FRS-01", "SND-02"})
    finally:
        again.stop()


def test_tillface_store_command_serves_the_api(tmp_path, broker):
    config = tmp_path / "store.toml"
    config.write_text(
        f'[store]\nid = "{STORE}"\ndatabase_url = "sqlite:///{tmp_path / "cli.db"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    )
    admin = [sys.executable, "-m", "tillface", "store-admin"]
    made = subprocess.run(
        [*admin, "key-create", "--role", "cashier", "--name", "front desk", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines())
    key_id, key = fields["id"].strip(), fields["key"].strip()
    assert key.startswith(f"tfk_{key_id}_") and "shown only this once" in made.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillface", "store", "--config", str(config), "--http-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "tillface store did not serve"
                time.sleep(0.1)
        assert r.status_code == 200 and "/members" in r.json()["paths"]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/visitors").status_code == 401
        assert httpx.get(f"{base}/visitors", headers=bearer(key)).json() == []
        listed = subprocess.run([*admin, "key-list", "--config", str(config)], capture_output=True, text=True)
        row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id)).split()
        # id, name, role, created (date time), last used (date time: just now), revoked (-); never the key
        assert row[:4] == [key_id, "front", "desk", "cashier"] and len(row) == 9 and row[-1] == "-", row
        assert key.split("_")[2] not in listed.stdout
        revoked = subprocess.run([*admin, "key-revoke", key_id, "--config", str(config)], capture_output=True)
        assert revoked.returncode == 0
        r = httpx.get(f"{base}/visitors", headers=bearer(key))  # refused from the next request on
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        listed = subprocess.run([*admin, "key-list", "--config", str(config)], capture_output=True, text=True)
        row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id)).split()
        assert len(row) == 10 and re.fullmatch(r"\d{4}-\d\d-\d\d", row[-2]), row  # revoked, with its time
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    # uvicorn shuts down cleanly, then re-raises SIGTERM (a clean stop for systemd too).
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err and b"Traceback" not in err


def test_tillface_store_command_names_a_bad_config(tmp_path, capsys):
    from tillface.cli import main

    assert main(["store", "--config", str(tmp_path / "missing.toml")]) == 78
    assert "missing.toml" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nid = "s 1"\n[mqtt]\nport = 0\n')
    assert main(["store", "--config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "store.id" in err and "mqtt.port" in err
    unreachable = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    assert main(["store", "--database-url", unreachable]) == 1
    assert "store.database_url: cannot open" in capsys.readouterr().err


def test_migrations_build_the_models_and_are_idempotent(tmp_path):
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    open_database(url)
    open_database(url)  # a restart: already at head
    assert schema_drift(url) == []
    with create_engine(url).connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == "0003"


def test_migration_0002_counts_the_receipts_already_there(tmp_path):
    """A database from before the co-occurrence counts gets them from its receipts on upgrade."""
    from sqlalchemy import create_engine, text

    from tillface.store.db import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    migrate(engine, "0001")
    member = "insert into members (id, phone, name, points, created_at) values ('me', '+1', 'Me', 0, :t)"
    receipt = (
        "insert into receipts (id, member_id, total_cents, points, created_at) values (:r, :m, 100, 0, :t)"
    )
    item = "insert into receipt_items (receipt_id, sku, name, qty, price_cents) values (:r, :k, :n, 1, 100)"
    baskets = [["bread", "butter"], ["bread", "jam"], ["bread", "jam", "tea"], ["coffee"]]
    with engine.begin() as c:
        c.execute(text(member), {"t": "2026-01-01"})
        for rid, skus in enumerate(baskets, 1):
            c.execute(text(receipt), {"r": rid, "m": "me" if rid == 1 else None, "t": "2026-01-01"})
            for sku in skus:
                c.execute(text(item), {"r": rid, "k": sku, "n": sku.title()})
    engine.dispose()
    sessions = open_database(url)  # upgrades to head
    with sessions() as s:
        assert suggestions(s, "me") == ["Jam", "Tea"]
        assert suggestions(s, "nobody") == ["Bread", "Jam", "Butter"]


def test_store_server_over_tls_with_a_password(tmp_path, monkeypatch):
    from mosquitto import Mosquitto
    from tls_ca import make_ca

    certs = make_ca(tmp_path / "pki")
    broker = Mosquitto(
        tmp_path / "broker", tls=certs, passwords={"store": "store-pw", "till": "till-pw"}
    ).start()
    tls = {
        "tls": True,
        "ca_file": certs["ca"],
        "cert_file": certs["client_cert"],
        "key_file": certs["client_key"],
    }
    monkeypatch.setenv("TILLFACE_STORE_MQTT_PASSWORD", "store-pw")
    config = load_store_config(
        None,
        {
            "store": {"id": STORE, "database_url": f"sqlite:///{tmp_path / 'tls.db'}"},
            "mqtt": {"port": broker.port, "username": "store", **tls},
        },
    )
    server = StoreServer(config)
    peer = None
    try:
        server.start()
        assert server.connected.is_set()
        peer = Peer(
            broker.port,
            [],
            client_id="tls-till",
            tls={
                "ca_certs": str(certs["ca"]),
                "certfile": str(certs["client_cert"]),
                "keyfile": str(certs["client_key"]),
            },
            username=("till", "till-pw"),
        )
        send_event(peer, visitor("t1", "TLS-01", "v1"), "visitor")
        wait_until(lambda: [v["visitor_code"] for v in server.visitors()] == ["TLS-01"])
    finally:
        if peer:
            peer.close()
        server.stop()
        broker.stop()
    other = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"ca_file": certs["other_ca"]})})
    refused = StoreServer(other, server.sessions)
    broker.start()
    try:
        refused.start(wait_s=2)
        assert not refused.connected.is_set()  # a broker certificate from another CA is not trusted
    finally:
        refused.stop()
        broker.stop()
