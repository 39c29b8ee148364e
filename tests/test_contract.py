"""The MQTT contract document (`contract/asyncapi.yaml`): current with the models, well formed, and
obeyed by everything a real unit publishes to a real broker."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from paho.mqtt.client import Client
from paho.mqtt.subscribeoptions import SubscribeOptions

from asyncapi_contract import CONTRACT, REPO, Contract, pointer_get
from mqtt_peer import Peer, Received
from signing_keys import StoreKeys
from test_link_mqtt import make_unit
from tillface.app import Daemon
from tillface.events import utc_now
from tillface.link.gallery_sync import erase_state
from tillface.link.schemas import COMMAND_MODELS, EVENT_MODELS

UNIT = "tillface/s1/t1"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_asyncapi", REPO / "scripts" / "gen_asyncapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


def test_committed_contract_matches_the_models():
    gen = generator()
    expected = gen.render(gen.build())
    current = CONTRACT.read_text(encoding="utf-8") if CONTRACT.exists() else ""
    if current != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    current.splitlines(True), expected.splitlines(True), "committed", "generated"
                )
            )[:40]
        )
        pytest.fail(
            "contract/asyncapi.yaml is out of date with daemon/tillface/link: run "
            f"`.venv/bin/python scripts/gen_asyncapi.py` and commit the result.\n{diff}"
        )


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_contract_is_a_well_formed_asyncapi_3_document(contract):
    doc = contract.doc
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and re.fullmatch(r"\d+\.\d+\.\d+", doc["info"]["version"])
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        pointer_get(doc, ref[1:])  # every reference resolves
    # every payload schema (and every component schema) is a valid JSON Schema, both in the dialect
    # the payloads are checked with (2020-12) and in the one AsyncAPI's Schema Object extends (draft-07)
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        Draft7Validator.check_schema(schema)
        assert schema.get("type") == "object", name
    for channel in contract.channels:
        raw = doc["channels"][channel.id]
        assert raw["messages"], f"channel {channel.id} has no message"
        params = set(re.findall(r"\{([^}]+)\}", channel.address))
        assert params == set(raw.get("parameters", {})), channel.id
        for pointer in channel.message_pointers:
            message = pointer_get(doc, pointer)
            assert "payload" in message, f"{pointer} has no payload"
            assert message.get("contentType", doc["defaultContentType"]) in ("application/json", "text/plain")
            Draft202012Validator.check_schema(message["payload"])
            Draft7Validator.check_schema(message["payload"])
        assert channel.actions, f"no operation uses channel {channel.id}"
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        channel_pointer, _ = contract.follow(op["channel"]["$ref"])
        for ref in op["messages"]:
            # an operation's messages are its channel's
            assert ref["$ref"].startswith(f"#{channel_pointer}/messages/"), op_id
        mqtt = op["bindings"]["mqtt"]
        assert mqtt["qos"] == 1 and mqtt["bindingVersion"] == "0.2.0", op_id

    addresses = {c.address: c for c in contract.channels}
    unit = "tillface/{store}/{till}"
    sent = {f"{unit}/status", f"{unit}/health"} | {f"{unit}/event/{k}" for k in EVENT_MODELS if k != "health"}
    received = {f"{unit}/cmd/{name}" for name in COMMAND_MODELS} | {"tillface/{store}/gallery/tills"}
    both = {f"{unit}/sync", "tillface/{store}/gallery/members/{member_id}"}
    assert set(addresses) == sent | received | both
    for address in sent:
        assert addresses[address].actions == {"send"}, address
    for address in received:
        assert addresses[address].actions == {"receive"}, address
    for address in both:
        assert addresses[address].actions == {"send", "receive"}, address
    retained = {f"{unit}/status", f"{unit}/health", "tillface/{store}/gallery/members/{member_id}"}
    for address in sent | both:
        assert addresses[address].retain is (address in retained), address


def test_the_contract_refuses_what_breaks_it(contract):
    event = {
        "schema": 1,
        "event_id": "2b1f4c2e-8d0a-4c36-9a43-3f7d1c0b6e55",
        "ts": "2025-01-02T03:04:05.678Z",
        "store": "s1",
        "till": "t1",
        "visit_id": "v1",
        "duration_s": 3.5,
    }
    assert contract.problems(f"{UNIT}/event/left", json.dumps(event).encode()) == []
    assert contract.problems(f"{UNIT}/event/left", json.dumps({**event, "extra": 1}).encode())
    assert contract.problems(f"{UNIT}/event/left", json.dumps({**event, "duration_s": -1}).encode())
    assert contract.problems(f"{UNIT}/event/left", json.dumps({**event, "ts": "yesterday"}).encode())
    assert contract.problems(f"{UNIT}/event/match", json.dumps(event).encode())  # wrong channel
    status = {k: v for k, v in event.items() if k not in ("visit_id", "duration_s")}
    status |= {"state": "online", "session": "0" * 32}
    assert contract.problems(f"{UNIT}/status", json.dumps(status).encode()) == []
    assert contract.problems(f"{UNIT}/status", json.dumps({**status, "state": "maybe"}).encode())
    assert contract.problems(f"{UNIT}/status", b"online")  # plain text: unsigned, no longer the contract
    assert contract.problems(f"{UNIT}/event/nonsense", b"{}")
    tomb = erase_state("s1", "m-1", 5, "store", "2025-01-02T03:04:05Z").model_dump(by_alias=True)
    assert contract.problems("tillface/s1/gallery/members/m-1", json.dumps(tomb).encode()) == []
    tomb["templates"] = {"count": 1, "dim": 128, "ids": ["x"], "ciphertext": ""}  # nested $ref checked
    assert contract.problems("tillface/s1/gallery/members/m-1", json.dumps(tomb).encode())


# ---------------------------------------------------------------------- a real unit, a real broker


class StoreServer(Peer):
    """The store's side: sends commands and records everything under tillface/ but its own messages
    (MQTT 5 no-local), with the retain flag as the unit published it."""

    def __init__(self, port: int, keys: StoreKeys) -> None:
        super().__init__(port, ["tillface/#"], client_id="store-server", signer=keys.signer)

    def _on_connect(self, client: Client, *_: Any) -> None:
        options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
        client.subscribe("tillface/#", options=options)
        time.sleep(0.1)
        self._connected.set()


def _has(messages: list[Received], topic: str, **fields: Any) -> bool:
    for m in messages:
        if m.topic == topic:
            body = m.json()
            if all(body.get(k) == v for k, v in fields.items()):
                return True
    return False


class Conductor:
    """Called on the daemon's frame loop: sends the store's commands at set points of the replay and
    waits for their answers, so they are handled while the unit runs, whatever the machine's speed."""

    def __init__(self, daemon: Daemon, store: StoreServer) -> None:
        self.daemon = daemon
        self.store = store
        self.started = False
        self.enrolled_member: str | None = None

    def on_frame(self, _report: Any) -> None:
        if self.started:
            return
        self.started = True
        link = self.daemon.link
        assert link is not None
        deadline = time.monotonic() + 15
        while link.state != "online":
            assert time.monotonic() < deadline, f"link stayed {link.state}"
            time.sleep(0.05)
        self.store.send(f"{UNIT}/cmd/display", {"request_id": "d1", "message": "Welcome back!", "ttl_s": 5})
        self.store.send(
            f"{UNIT}/cmd/enroll", {"request_id": "e1", "visitor_code": "KMT-42", "member_id": "m"}
        )
        # The store erases a member this till never had: acknowledged all the same.
        tomb = erase_state("s1", "gone-0001", int(time.time() * 1000), "store-server", utc_now())
        self.store.send("tillface/s1/gallery/members/gone-0001", tomb.model_dump(by_alias=True), retain=True)
        self.store.wait_for(
            lambda ms: (
                _has(ms, f"{UNIT}/event/error", request_id="e1")
                and _has(ms, f"{UNIT}/event/erased", member_id="gone-0001")
            ),
            timeout=15,
        )

    def on_event(self, record: dict[str, Any]) -> None:
        if record["event"] != "visitor" or self.enrolled_member is not None:
            return
        # Consent at the till: the visitor just decided becomes a member.
        self.enrolled_member = "new-member-1"
        command = {
            "request_id": "e2",
            "visitor_code": record["visitor_code"],
            "member_id": self.enrolled_member,
            "consent_ref": "consent-form-0042",
        }
        self.store.send(f"{UNIT}/cmd/enroll", command)
        self.store.wait_for(lambda ms: _has(ms, f"{UNIT}/event/enrolled", request_id="e2"), timeout=15)


def test_everything_a_running_unit_publishes_follows_the_contract(faces_dir, tmp_path, broker, contract):
    scenario, cfg, config = make_unit(faces_dir, tmp_path, broker.port)
    store = StoreServer(broker.port, StoreKeys(tmp_path / "store-keys"))
    events_path = tmp_path / "events.jsonl"
    daemon = Daemon(config, cfg, events_path, lockstep_replay=True)
    conductor = Conductor(daemon, store)
    daemon.observers.append(conductor)
    try:
        assert daemon.run() == 0
        written = [json.loads(line) for line in Path(events_path).read_text().splitlines()]
        ids = {e["event_id"] for e in written}
        store.wait_for(
            lambda ms: (
                ids <= {m.json().get("event_id") for m in ms if "/event/" in m.topic}
                and bool(ms)
                and any(m.topic == f"{UNIT}/status" and m.json()["state"] == "offline" for m in ms)
            ),
            timeout=20,
        )
    finally:
        store.close()
    published = list(store.messages)
    problems = [p for m in published for p in contract.problems(m.topic, m.payload)]
    assert not problems, "\n".join(problems[:20])
    seen: dict[str, int] = {}
    for m in published:
        channel = contract.channel_for(m.topic)
        assert channel is not None
        seen[channel.id] = seen.get(channel.id, 0) + 1
        assert "send" in channel.actions, f"the unit published on {m.topic}, which it only receives"
        assert m.retain is channel.retain, f"{m.topic} published with retain={m.retain}"
    expected = {
        "status",
        "health",
        "eventMatch",
        "eventVisitor",
        "eventLeft",
        "eventError",
        "eventEnrolled",
        "eventErased",
        "syncMarker",
        "galleryMember",
    }
    assert expected <= set(seen), f"not seen: {sorted(expected - set(seen))} (seen {seen})"
    # the good display command was carried out silently; the bad enrolment was answered
    errors = store_events(published, "error")
    assert [e["request_id"] for e in errors] == ["e1"], errors
    assert "consent_ref" in errors[0]["reason"] and errors[0]["topic"] == f"{UNIT}/cmd/enroll"
    assert [e["request_id"] for e in store_events(published, "enrolled")] == ["e2"]
    # the catch-up publishes the members imported here (the broker had none), then the enrolment
    member_states = [m.json() for m in published if "/gallery/members/" in m.topic]
    assert {s["member_id"] for s in member_states} == scenario.members | {conductor.enrolled_member}
    assert member_states[-1]["member_id"] == conductor.enrolled_member
    assert all(s["origin"] == "t1" and not s["erased"] and s["templates"] for s in member_states)


def store_events(published: list[Received], kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in published if m.topic == f"{UNIT}/event/{kind}"]
