"""Attacks on the store server's HTTP API, tried as someone on the store LAN would (issue 14), against a
real store server on a real mosquitto with a test peer playing the till. Each is refused and changes
nothing: every route (taken from app.routes, so that a new endpoint cannot be forgotten) answers 401
without a key or with a bad, unknown or revoked one, and 403 with a key of a role it does not allow; a
million-point receipt is refused; a foreign Host header is refused; a LAN bind without TLS or without a
key does not start; the audit is append-only and names who did what.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from mosquitto import free_port
from mqtt_peer import Peer
from signing_keys import StoreKeys
from store_clients import Clients, bearer
from tillface.events import utc_now
from tillface.link.schemas import EnrollCommand, EnrolledEvent, VisitorEvent
from tillface.store.api import guard_of, start_problem
from tillface.store.auth import create_key, revoke_key
from tillface.store.config import load_store_config
from tillface.store.db import AuditEntry, ItemStat, Member, Receipt
from tillface.store.service import StoreServer

STORE = "s1"
CONSENT = {"text_version": "2026-01", "channel": "till-screen"}
POS, CASHIER, MANAGER = "till-pos", "cashier", "manager"
# Who may call what (issue 14): the app must say exactly this, for every route it has.
ROLES = {
    ("POST", "/receipts"): {POS},
    ("GET", "/visitors"): {POS, CASHIER, MANAGER},
    ("POST", "/members"): {CASHIER, MANAGER},
    ("GET", "/members/{member_id}"): {CASHIER, MANAGER},
    ("DELETE", "/members/{member_id}"): {MANAGER},
    ("GET", "/tills"): {MANAGER},
    ("GET", "/audit"): {MANAGER},
}
PUBLIC = {("GET", "/openapi.json"), ("HEAD", "/openapi.json")}  # the API's description, no data
# The cashier's page (store/web.py): not API operations; each checks its cookie's key for the cashier or
# manager role itself, and tests/test_cashier_page.py tests every one of them refused otherwise.
PUBLIC |= {("GET", "/login"), ("HEAD", "/login"), ("POST", "/login"), ("POST", "/logout")}
PUBLIC |= {("GET", "/till/{till}"), ("HEAD", "/till/{till}"), ("GET", "/till/{till}/events")}
PUBLIC |= {("HEAD", "/till/{till}/events"), ("POST", "/till/{till}/enrol")}
ADMIN = [sys.executable, "-m", "tillface", "store-admin"]
ITEM = {"sku": "C1", "name": "Espresso beans", "qty": 1, "price": "12.99"}


def envelope(till: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "ts": utc_now(), "store": STORE, "till": till}


def wire(model: Any) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def show_visitor(till: Peer, code: str, visit_id: str) -> None:
    until = (datetime.now(UTC) + timedelta(seconds=120)).isoformat(timespec="milliseconds")
    event = VisitorEvent(
        **envelope("t1"),
        visit_id=visit_id,
        visitor_code=code,
        quality=0.8,
        enroll_until=until.replace("+00:00", "Z"),
    )
    till.send(f"tillface/{STORE}/t1/event/visitor", json.loads(wire(event)))  # signed as t1


def config_for(tmp_path: Path, port: int, **http: Any):
    return load_store_config(
        None,
        {
            "store": {
                "id": STORE,
                "database_url": f"sqlite:///{tmp_path / 'store.db'}",
                "phone_region": "GB",
                "enroll_timeout_s": 3,
                "erase_timeout_s": 1,
            },
            "mqtt": {"port": port},
            "http": http,
        },
    )


@pytest.fixture(autouse=True)
def t1_signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The store's keys folder (`store-keys`, the default [keys] dir, in the test's working directory)
    with till t1 provisioned: the fake till signs its events as t1 would."""
    monkeypatch.chdir(tmp_path)
    return StoreKeys(tmp_path / "store-keys").provision("t1", tmp_path / "tills" / "t1")


@pytest.fixture
def server(tmp_path: Path, broker):
    srv = StoreServer(config_for(tmp_path, broker.port))
    srv.start()
    assert srv.connected.is_set()
    yield srv
    srv.stop()


@pytest.fixture
def till(broker, t1_signer):
    peer = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="fake-till", signer=t1_signer)
    yield peer
    peer.close()


def enrol(c: Clients, till: Peer, code: str, visit_id: str, phone: str) -> dict[str, Any]:
    """A member enrolled the proper way: a visitor, a cashier's POST /members, the till's answer."""
    show_visitor(till, code, visit_id)
    wait_until(lambda: code in {v["visitor_code"] for v in c.desk.get("/visitors").json()})
    seen = len(till.on("/cmd/enroll"))

    def answer() -> None:
        msgs = till.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/cmd/enroll")]) > seen)
        cmd = EnrollCommand.model_validate([m for m in msgs if m.topic.endswith("/cmd/enroll")][seen].json())
        enrolled = EnrolledEvent(
            **envelope("t1"),
            request_id=cmd.request_id,
            member_id=cmd.member_id,
            template_id="ab" * 16,
            templates=1,
            gallery_version=2,
            visit_id=visit_id,
        )
        till.send(f"tillface/{STORE}/t1/event/enrolled", json.loads(wire(enrolled)))

    answering = threading.Thread(target=answer)
    answering.start()
    body = {"phone": phone, "name": "Ada", "visitor_code": code, "till": "t1", "consent": CONSENT}
    r = c.desk.post("/members", json=body)
    answering.join()
    assert r.status_code == 201, r.text
    return r.json()


def snapshot(server: StoreServer) -> dict[str, Any]:
    """What an attacker would want to change: members and their points, receipts, item counts."""
    with server.sessions() as s:
        return {
            "members": sorted((m.id, m.phone, m.name, m.points) for m in s.scalars(select(Member))),
            "receipts": s.scalar(select(func.count()).select_from(Receipt)),
            "items": sorted((i.sku, i.baskets) for i in s.scalars(select(ItemStat))),
        }


def test_the_app_says_exactly_who_may_call_what(server):
    app = Clients(server).app
    declared, public = {}, set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or []:
            guard = guard_of(route) if isinstance(route, APIRoute) else None
            if guard is None:
                public.add((method, route.path))  # type: ignore[attr-defined]
            else:
                declared[(method, route.path)] = set(guard.roles)  # type: ignore[attr-defined]
    assert public <= PUBLIC, f"routes without a role check: {sorted(public - PUBLIC)}"
    assert declared == ROLES
    # The OpenAPI document shows the scheme, and each operation its roles and the 401/403 answers.
    doc = Clients(server).anonymous.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["StoreApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "tfk_<id>_<secret>",
        "description": "An API key made by `tillface store-admin key-create --role ROLE --name NAME`.",
    }
    for (method, path), roles in ROLES.items():
        operation = doc["paths"][path][method.lower()]
        assert operation["security"] == [{"StoreApiKey": []}]
        assert set(operation["x-roles"]) == roles and {"401", "403"} <= operation["responses"].keys()


def test_every_route_refuses_a_missing_bad_or_wrong_role_key_and_changes_nothing(server, till):
    c = Clients(server)
    member = enrol(c, till, "KQX-42", "v1", "020 7946 0018")
    r = c.pos.post("/receipts", json={"member_id": member["id"], "items": [ITEM], "total": "12.99"})
    assert r.status_code == 201 and r.json()["points_total"] == 12
    show_visitor(till, "BRT-07", "v2")  # an open visitor code an attacker could bind a face to
    wait_until(lambda: len(c.desk.get("/visitors").json()) == 1)
    before, commands = snapshot(server), len(till.on("/cmd/"))
    audit_before = len(c.boss.get("/audit", params={"limit": 1000}).json())

    revoked_id, revoked = {}, {}
    for role in (POS, CASHIER, MANAGER):  # a key of every role, revoked: it must not work either
        revoked_id[role], revoked[role] = create_key(server.sessions, role, f"revoked {role}")
        assert revoke_key(server.sessions, revoked_id[role])
    bodies = {
        ("POST", "/receipts"): {"member_id": member["id"], "items": [ITEM], "total": 1_000_000},
        ("POST", "/members"): {
            "phone": "+44 7911 123456",
            "name": "Mallory",
            "visitor_code": "BRT-07",
            "till": "t1",
            "consent": CONSENT,
        },
    }
    forged = f"tfk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"  # well-formed, never issued
    stolen_id = c.keys[POS][0]
    guessed = f"tfk_{stolen_id}_{secrets.token_urlsafe(32)}"  # a real key id with a guessed secret
    tried = 0
    for route in c.app.routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods:
            allowed = ROLES[(method, route.path)]
            url = route.path.replace("{member_id}", member["id"])
            body = bodies.get((method, route.path))

            def call(headers: dict[str, str], method: str = method, url: str = url, body: Any = body):
                return c.anonymous.request(method, url, json=body, headers=headers)

            for headers in (
                {},
                {"Authorization": "Bearer"},
                {"Authorization": "Basic YWRtaW46YWRtaW4="},
                bearer("letmein"),
                bearer(forged),
                bearer(guessed),
                {"X-API-Key": c.keys[MANAGER][1]},  # a real key, but not where the API reads it
                *[bearer(revoked[role]) for role in allowed],
            ):
                r = call(headers)
                assert r.status_code == 401, (method, url, headers, r.status_code, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, url)
                tried += 1
            for role in {POS, CASHIER, MANAGER} - allowed:
                r = call(bearer(c.keys[role][1]))
                assert r.status_code == 403, (method, url, role, r.status_code, r.text)
                detail = r.json()["detail"]  # names the key's role and the roles that may
                assert f"({role})" in detail and all(a in detail for a in allowed), detail
                tried += 1
    assert tried > 60

    assert snapshot(server) == before
    assert len(till.on("/cmd/")) == commands, "an attacker's request reached a till"
    assert [v["visitor_code"] for v in c.desk.get("/visitors").json()] == ["BRT-07"]
    # The refusals of real keys are audited; nothing else happened.
    entries = c.boss.get("/audit", params={"limit": 1000}).json()  # newest first
    new = entries[: len(entries) - audit_before]
    actions = {e["action"] for e in new if e["action"] != "key-create"}
    assert actions == {"refused", "key-revoke"}, actions
    refused = [e for e in new if e["action"] == "refused"]
    assert {e["key_id"] for e in refused} == {c.keys[r][0] for r in (POS, CASHIER, MANAGER)}
    # ... and each allowed role does get through (the refusals above are not the only answer).
    assert c.pos.get("/visitors").status_code == c.desk.get("/visitors").status_code == 200
    assert c.desk.get(f"/members/{member['id']}").json()["points"] == 12
    assert c.boss.get("/tills").status_code == c.boss.get("/audit").status_code == 200


def test_a_million_point_receipt_is_refused_and_writes_nothing(server, till):
    c = Clients(server)
    member = enrol(c, till, "KQX-42", "v1", "020 7946 0018")
    before = snapshot(server)
    big = {"member_id": member["id"], "items": [{**ITEM, "price": 1_000_000}], "total": 1_000_000}
    r = c.pos.post("/receipts", json=big)
    assert r.status_code == 422 and "store.max_points_per_receipt (10000)" in r.json()["detail"], r.text
    r = c.pos.post("/receipts", json={"visit_id": "v1", "till": "t1", "items": [ITEM], "total": 10_001})
    assert r.status_code == 422, r.text  # through the visit, too
    assert snapshot(server) == before
    assert not [e for e in c.boss.get("/audit").json() if e["action"] == "points"]
    # At the limit it is a receipt like any other.
    r = c.pos.post("/receipts", json={"member_id": member["id"], "items": [ITEM], "total": 10_000})
    assert r.status_code == 201 and r.json()["points_total"] == 10_000, r.text
    assert c.boss.get("/audit").json()[0]["points"] == 10_000


def test_receipts_per_minute_per_key(tmp_path):
    server = StoreServer(config_for(tmp_path, free_port(), receipts_per_minute=3))
    c = Clients(server)
    other = bearer(create_key(server.sessions, POS, "till 2 POS")[1])
    receipt = {"member_id": "m-none", "items": [ITEM], "total": "1.00"}
    assert [c.pos.post("/receipts", json=receipt).status_code for _ in range(3)] == [404] * 3
    r = c.pos.post("/receipts", json=receipt)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60, r.text
    assert "3 receipts a minute" in r.json()["detail"]
    assert c.anonymous.post("/receipts", json=receipt, headers=other).status_code == 404  # per key


def test_a_foreign_host_header_is_refused(server):
    c = Clients(server)
    for host in ("evil.example", "rebind.attacker.test:8080", "192.168.1.20"):
        r = c.boss.get("/tills", headers={"Host": host})
        assert r.status_code == 400 and "host" in r.text.lower(), host
    for host in ("127.0.0.1:8080", "localhost", "[::1]:8080"):
        assert c.boss.get("/tills", headers={"Host": host}).status_code == 200, host


def test_the_audit_is_append_only(server):
    create_key(server.sessions, MANAGER, "someone")
    for statement in ("UPDATE audit SET key_name = 'nobody'", "DELETE FROM audit"):
        with server.sessions() as s, pytest.raises(DBAPIError, match="append-only"):
            s.execute(text(statement))
            s.commit()
    with server.sessions() as s:
        assert next(e.key_name for e in s.scalars(select(AuditEntry))).startswith("local:")


def test_a_lan_bind_needs_tls_and_a_key(tmp_path):
    from tls_ca import make_ca

    certs = make_ca(tmp_path / "pki")
    lan = load_store_config(None, {"http": {"host": "0.0.0.0"}})
    assert "[http] cert_file and key_file" in (start_problem(lan, lambda: 1) or "")
    tls = {"host": "0.0.0.0", "cert_file": certs["cert"], "key_file": certs["key"]}
    with_tls = load_store_config(None, {"http": tls})
    assert "tillface store-admin key-create" in (start_problem(with_tls, lambda: 0) or "")
    assert start_problem(with_tls, lambda: 1) is None
    half = load_store_config(None, {"http": {"cert_file": certs["cert"]}})
    assert "http.cert_file and http.key_file go together" in (start_problem(half, lambda: 1) or "")
    missing = load_store_config(None, {"http": {**tls, "key_file": tmp_path / "nope.key"}})
    assert "http.key_file" in (start_problem(missing, lambda: 1) or "")
    assert start_problem(load_store_config(None, {}), lambda: 0) is None  # loopback: the default

    # Through the command: exit 78 with one line saying what to set.
    db = f"sqlite:///{tmp_path / 'lan.db'}"
    (tmp_path / "tls.toml").write_text(
        f'[http]\ncert_file = "{certs["cert"]}"\nkey_file = "{certs["key"]}"\n'
    )
    lan = ["--database-url", db, "--http-host", "0.0.0.0"]
    for extra in ([], ["--config", str(tmp_path / "tls.toml")]):
        run = subprocess.run(
            [sys.executable, "-m", "tillface", "store", *extra, *lan],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 78, run.stderr
        lines = [line for line in run.stderr.splitlines() if "tillface store:" in line]
        assert len(lines) == 1 and ("cert_file" in lines[0] if not extra else "key-create" in lines[0])


def test_the_api_over_tls(tmp_path, broker):
    from tls_ca import make_ca

    certs = make_ca(tmp_path / "pki")
    config = tmp_path / "store.toml"
    config.write_text(
        f'[store]\nid = "{STORE}"\ndatabase_url = "sqlite:///{tmp_path / "tls.db"}"\n'
        f"[mqtt]\nport = {broker.port}\n"
        f'[http]\ncert_file = "{certs["cert"]}"\nkey_file = "{certs["key"]}"\n'
    )
    made = subprocess.run(
        [*ADMIN, "key-create", "--role", MANAGER, "--name", "boss", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = re.search(r"^key:\s+(\S+)$", made.stdout, re.M).group(1)  # type: ignore[union-attr]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillface", "store", "--config", str(config), "--http-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    trust = ssl.create_default_context(cafile=str(certs["ca"]))
    stranger = ssl.create_default_context(cafile=str(certs["other_ca"]))
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=2) as https:
            deadline = time.monotonic() + 20
            while True:
                try:
                    r = https.get("/tills", headers=bearer(key))
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, "no TLS answer"
                    time.sleep(0.1)
            assert r.status_code == 200, r.text
            assert https.get("/tills").status_code == 401
        with pytest.raises(httpx.TransportError):  # plain HTTP gets nothing
            httpx.get(f"http://127.0.0.1:{port}/tills", headers=bearer(key), timeout=2)
        with pytest.raises(httpx.ConnectError):  # nor does a client that trusts another CA
            httpx.get(f"https://127.0.0.1:{port}/tills", verify=stranger, timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert b"Traceback" not in err, err.decode()


def test_a_store_without_its_signing_key_refuses_to_start_in_one_line(tmp_path):
    """No traceback: exit 78 and one line naming the missing file and the command that makes it."""
    empty = tmp_path / "no-keys"
    empty.mkdir()
    store_toml = tmp_path / "store.toml"
    store_toml.write_text(
        f'[store]\ndatabase_url = "sqlite:///{tmp_path / "s.db"}"\n[keys]\ndir = "{empty}"\n',
        encoding="utf-8",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tillface",
            "store",
            "--config",
            str(store_toml),
            "--http-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78, out.stderr
    # Above it only the INFO log of the database migrations.
    problems = [line for line in out.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(problems) == 1 and "store-signing.key" in problems[0], out.stderr
    assert "tillface store-admin provision-store" in problems[0] and "Traceback" not in out.stderr
