"""The MQTT link against a real mosquitto: every decision arrives, commands, status, TLS."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from mqtt_peer import Peer
from replay_fixtures import build_scenario, write_config
from signing_keys import StoreKeys
from tillface.app import Daemon, open_gallery
from tillface.config import load_config
from tillface.enrol import import_photos
from tillface.link.schemas import EVENT_MODELS
from tillface.recognition.gallery import create_key_file
from tillface.security.signing import key_id, load_public_key, verify


def mqtt_section(port: int, extra: str = "") -> str:
    return f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nhealth_interval_s = 1.0\n{extra}'


def make_unit(faces_dir: Path, work: Path, port: int, members: int = 3, strangers: int = 2, till: str = "t1"):
    scenario = build_scenario(faces_dir, work, members, strangers, seed=7)
    state = work / "state"
    cfg = write_config(work / "till.toml", state, f"replay:{scenario.replay_dir}", extra=mqtt_section(port))
    if till != "t1":
        cfg.write_text(cfg.read_text().replace('till_id = "t1"', f'till_id = "{till}"'))
    config = load_config(cfg)
    state.mkdir(exist_ok=True)
    create_key_file(config.gallery.key_file)
    StoreKeys(work / "store-keys").provision(till, state)  # the till's signing key, the store's public key
    gallery = open_gallery(config, cfg)
    assert (
        import_photos(gallery, config, faces_dir, scenario.enrol_csv, progress=False, consent_ref="test") == 0
    )
    return scenario, cfg, config


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_decision_arrives_once_with_the_contract_fields(faces_dir, tmp_path, broker, protocol):
    scenario, cfg, config = make_unit(faces_dir, tmp_path, broker.port)
    if protocol != "5":  # older store brokers
        cfg.write_text(cfg.read_text().replace("[mqtt]\n", f'[mqtt]\nprotocol = "{protocol}"\n'))
        config = load_config(cfg)
        assert config.mqtt.protocol == protocol
    peer = Peer(broker.port, ["tillface/s1/t1/#"])
    public = load_public_key(tmp_path / "store-keys" / "tills" / "t1.pub")
    till_keys = {key_id(public): public}
    events_path = tmp_path / "events.jsonl"
    daemon = Daemon(config, cfg, events_path, lockstep_replay=True)
    assert daemon.run() == 0
    written = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert any(e["event"] == "match" for e in written) and any(e["event"] == "visitor" for e in written)
    ids = {e["event_id"] for e in written}
    peer.wait_for(lambda ms: ids <= {m.json()["event_id"] for m in ms if "/event/" in m.topic})
    received = [m for m in peer.messages if "/event/" in m.topic]
    by_id: dict[str, list] = {}
    for m in received:
        by_id.setdefault(m.json()["event_id"], []).append(m)
    for e in written:
        copies = by_id[e["event_id"]]
        # QoS 1 may redeliver, always as the same payload
        assert all(c.payload == copies[0].payload for c in copies)
        payload = copies[0].json()
        assert copies[0].topic == f"tillface/s1/t1/event/{e['event']}"
        assert {k: v for k, v in payload.items() if k not in ("key_id", "sig")} == {
            k: v for k, v in e.items() if k != "event"
        }
        verify(copies[0].topic, payload, till_keys, "t1")  # signed by the till's own key
        EVENT_MODELS[e["event"]].model_validate(payload)
        assert not copies[0].retain
    # order kept: the first copies arrive in the order the unit decided
    first_seen = list(dict.fromkeys(m.json()["event_id"] for m in received))
    assert [i for i in first_seen if i in ids] == [e["event_id"] for e in written]
    # status: online while running, offline (retained) after a clean stop
    status = [m.json() for m in peer.on("/status")]
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    assert status[0]["session"] == status[-1]["session"]  # the clean stop's offline, same connection
    for m in peer.on("/status"):
        verify(m.topic, m.json(), till_keys, "t1")
    health = [m.json() for m in peer.on("/health")]
    assert health and health[-1]["gallery_members"] == len(scenario.members)
    assert health[-1]["link"] in ("online", "syncing") and health[-1]["outbox_depth"] >= 0
    assert daemon.link is not None
    peer.close()


def test_outbox_keeps_events_while_the_broker_is_away(faces_dir, tmp_path, broker):
    """The broker is down for the whole replay: every event waits on disk and goes out after."""
    _scenario, cfg, config = make_unit(faces_dir, tmp_path, broker.port)
    broker.stop()
    events_path = tmp_path / "events.jsonl"
    daemon = Daemon(config, cfg, events_path, lockstep_replay=True)
    assert daemon.run() == 0
    written = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert written
    # Never caught up with the store: a member erased meanwhile could still be in this gallery, so no
    # match is published (the members' visits end undecided), while strangers still get visitor codes.
    assert [e["event"] for e in written if e["event"] == "match"] == []
    assert any(e["event"] == "visitor" for e in written)
    assert daemon.health()["matches_withheld"] >= 1
    from tillface.link.outbox import Outbox

    box = Outbox(config.mqtt.outbox_file)
    kinds = box.kinds()
    assert kinds.get("match", 0) + kinds.get("visitor", 0) + kinds.get("left", 0) == len(written)
    box.close()
    broker.start()
    peer = Peer(broker.port, ["tillface/s1/t1/event/#"])
    # A second run (same state) delivers the first run's events, oldest first.
    daemon2 = Daemon(config, cfg, tmp_path / "events2.jsonl", lockstep_replay=True)
    runner = threading.Thread(target=daemon2.run)
    runner.start()
    ids = [e["event_id"] for e in written]
    peer.wait_for(lambda ms: set(ids) <= {m.json()["event_id"] for m in ms}, timeout=30)
    runner.join(timeout=120)
    got = list(dict.fromkeys(m.json()["event_id"] for m in peer.messages))
    assert got[: len(ids)] == ids
    peer.close()
    # Caught up on a live connection, the same members are matched.
    second = [json.loads(line) for line in (tmp_path / "events2.jsonl").read_text().splitlines()]
    assert any(e["event"] == "match" for e in second)


def bad_commands() -> list[tuple[str, bytes, str]]:
    """(command, payload, words the error reason must contain)."""
    return [
        ("enroll", b"{not json", "not JSON"),
        ("enroll", b"\xff\xfe", "not UTF-8"),
        ("enroll", b"[1, 2]", "JSON object"),
        (
            "enroll",
            json.dumps({"request_id": "r1", "visitor_code": "KMT-42", "member_id": "m1"}).encode(),
            "consent_ref",
        ),
        (
            "enroll",
            json.dumps(
                {"request_id": "r2", "visitor_code": "KMT-42", "member_id": "m1", "consent_ref": "c", "x": 1}
            ).encode(),
            "x: unknown field",
        ),
        (
            "enroll",
            json.dumps(
                {"request_id": "r3", "visitor_code": "ZZZ-99", "member_id": "m1", "consent_ref": "c"}
            ).encode(),
            "ZZZ-99",
        ),
        ("display", json.dumps({"request_id": "r4", "points": -5}).encode(), "points"),
        ("launch", json.dumps({"request_id": "r5"}).encode(), "unknown command"),
    ]


def test_bad_commands_get_an_error_a_person_can_act_on(faces_dir, tmp_path, broker):
    _scenario, cfg, config = make_unit(faces_dir, tmp_path, broker.port, members=1, strangers=0)
    peer = Peer(broker.port, ["tillface/s1/t1/event/error"], signer=StoreKeys(tmp_path / "store-keys").signer)
    # A camera that is not there (yet): the daemon stays up, reconnecting, while commands arrive.
    config = config.model_copy(
        update={"camera": config.camera.model_copy(update={"source": f"replay:{tmp_path}/unplugged"})}
    )
    daemon = Daemon(config, cfg, None, lockstep_replay=True)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.link is not None and daemon.link.state != "online" and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, payload, _ in bad_commands():
            # Signed by the store where it is a JSON object: what is refused is the payload itself.
            try:
                body = json.loads(payload)
            except ValueError:
                body = None
            peer.send(f"tillface/s1/t1/cmd/{name}", body if isinstance(body, dict) else payload)
        errors = peer.wait_for(lambda ms: len(ms) >= len(bad_commands()))
        for (name, _payload, words), msg in zip(bad_commands(), errors, strict=True):
            body = msg.json()
            EVENT_MODELS["error"].model_validate(body)
            assert body["topic"] == f"tillface/s1/t1/cmd/{name}"
            assert words in body["reason"], body
        assert errors[3].json()["request_id"] == "r1"
    finally:
        daemon.request_stop()
        runner.join(timeout=30)
        peer.close()
