"""End-to-end signatures (issue 14 item 3): even a client with valid broker credentials cannot forge.

The first tests check tillface.security.signing on its own. The attack test runs a real mosquitto, the
real store server and a real till process, and an attacker on the broker who publishes forged
(unsigned, or signed with a key of its own or with the wrong party's key), tampered, stale, replayed and
misaddressed commands, tombstones, member states, events and statuses: each is refused with a logged
reason (an `event/error` for commands) and changes nothing; the genuine flow still works."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mqtt_peer import Peer
from signing_keys import StoreKeys, sign_for, status
from till_process import Till
from tillface.config import load_config
from tillface.events import utc_now
from tillface.link.gallery_sync import MemberState, encrypt_templates, erase_state, member_topic
from tillface.link.schemas import DisplayCommand, MatchEvent
from tillface.recognition.gallery import GalleryStore, create_key_file, read_key_file
from tillface.security.signing import (
    ReplayGuard,
    SignatureError,
    Signer,
    canonical,
    check_addressed,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    verify,
)
from tillface.store.config import load_store_config
from tillface.store.db import Member, Visit
from tillface.store.service import StoreServer

STORE = "s1"
MEMBER = "m-0001"
UNIT = f"tillface/{STORE}/ta"


def keypair(folder: Path, name: str) -> Signer:
    generate_keypair(folder / f"{name}.key", folder / f"{name}.pub")
    return Signer(load_private_key(folder / f"{name}.key"))


# ---------------------------------------------------------------------- the signing module


def test_a_signature_covers_every_field_and_the_topic(tmp_path):
    store = keypair(tmp_path, "store")
    other = keypair(tmp_path, "other")
    keys = {store.key_id: store.public_key}
    topic = f"{UNIT}/cmd/display"
    body = {"request_id": "r1", "message": "Hi", "ttl_s": 5, "store": STORE, "till": "ta", "n": 1.5}
    signed = store.sign(topic, body)
    assert signed["key_id"] == key_id(load_public_key(tmp_path / "store.pub")) and len(signed["key_id"]) == 16
    # What goes on the wire (any key order, any JSON spacing) verifies.
    wire = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=2))
    assert verify(topic, wire, keys, "the store server") == store.key_id
    assert canonical(wire) == canonical(signed)
    for field, value in [("message", "Hi!"), ("ttl_s", 6), ("till", "tb"), ("n", 1.25), ("extra", 1)]:
        with pytest.raises(SignatureError, match="bad signature"):
            verify(topic, {**signed, field: value}, keys, "the store server")
    with pytest.raises(SignatureError, match="bad signature"):
        verify(f"tillface/{STORE}/tb/cmd/display", signed, keys, "the store server")  # moved
    with pytest.raises(SignatureError, match="unsigned"):
        verify(topic, body, keys, "the store server")
    with pytest.raises(SignatureError, match="is not a key of the store server"):
        verify(topic, other.sign(topic, body), keys, "the store server")
    forged = {**other.sign(topic, body), "key_id": store.key_id}  # claims the store's key id
    with pytest.raises(SignatureError, match="bad signature"):
        verify(topic, forged, keys, "the store server")
    with pytest.raises(SignatureError, match="misaddressed"):
        check_addressed(signed, STORE, "tb")
    with pytest.raises(SignatureError, match="misaddressed"):
        check_addressed(signed, "s2")
    check_addressed(signed, STORE, "ta")
    # The private key file must be private.
    (tmp_path / "store.key").chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_private_key(tmp_path / "store.key")


def test_the_replay_guard_refuses_stale_future_and_repeated_ids():
    now = [1_800_000_000.0]
    guard = ReplayGuard(300, clock=lambda: now[0])

    def at(offset_s: float, event_id: str | None = None) -> dict[str, Any]:
        ts = datetime.fromtimestamp(now[0] + offset_s, UTC).isoformat(timespec="milliseconds")
        return {"event_id": event_id or str(uuid.uuid4()), "ts": ts.replace("+00:00", "Z")}

    first = at(-10)
    guard.check(first)
    with pytest.raises(SignatureError, match="replayed"):
        guard.check(first)
    with pytest.raises(SignatureError, match=r"stale: .* old"):
        guard.check(at(-301))
    with pytest.raises(SignatureError, match=r"stale: .* ahead"):
        guard.check(at(301))
    guard.check(at(299))
    with pytest.raises(SignatureError, match="event_id is missing"):
        guard.check({"ts": at(0)["ts"]})
    # An id is forgotten only once its message could no longer pass the freshness check anyway.
    now[0] += 1000
    guard.check(at(0, first["event_id"]))
    assert len(guard._seen) == 1


# ---------------------------------------------------------------------- attacks on a real system


def wait(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.05)
    return value


def errors(peer: Peer, request_id: str) -> list[dict[str, Any]]:
    return [m.json() for m in peer.on("/ta/event/error") if m.json().get("request_id") == request_id]


def refused_command(peer: Peer, request_id: str, words: str) -> str:
    """Wait for the till's event/error for `request_id`; its reason must contain `words`."""
    reason = wait(lambda: errors(peer, request_id), f"event/error for {request_id}")[0]["reason"]
    assert words in reason, reason
    return reason


def envelope(till: str, ts: str | None = None) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "ts": ts or utc_now(), "store": STORE, "till": till}


def test_forged_replayed_and_misaddressed_messages_are_refused_and_change_nothing(tmp_path, broker):
    keys = StoreKeys(tmp_path / "store-keys")
    mallory = keypair(tmp_path / "mallory", "mallory")  # an attacker's own key
    gallery_key = tmp_path / "store-gallery.key"
    create_key_file(gallery_key)
    till = Till(tmp_path, "ta", broker.port, gallery_key, keys)
    config = load_config(till.cfg)
    gallery = GalleryStore(config.gallery.file, read_key_file(gallery_key), embedder=config.vision.embedder)
    gallery.load()
    rng = np.random.default_rng(0)
    gallery.upsert(MEMBER, rng.standard_normal((1, gallery.dim)), "enroll")
    server = StoreServer(
        load_store_config(
            None,
            {
                "store": {"id": STORE, "database_url": f"sqlite:///{tmp_path / 'store.db'}"},
                "mqtt": {"port": broker.port},
                "keys": {"dir": keys.dir},
            },
        )
    )
    with server.sessions() as s:
        s.add(Member(id=MEMBER, phone="+442079460018", name="Ada", points=42))
        s.commit()
    server.start()
    attacker = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="attacker")  # no keys
    try:
        till.start()
        wait(lambda: server.tills.get("ta") and server.tills["ta"].status == "online", "till online")
        wait(lambda: server.tills["ta"].health is not None, "the till's signed health")
        # The till published its member, signed with its own key (the key the store's roster lists).
        upsert = wait(lambda: attacker.on(f"/gallery/members/{MEMBER}"), "the till's member state")[0]
        verify(upsert.topic, upsert.json(), {till.signer.key_id: till.signer.public_key}, "till ta")
        roster = wait(lambda: attacker.on("/gallery/tills"), "the store's till roster")[-1].json()
        verify(
            f"tillface/{STORE}/gallery/tills", roster, {keys.signer.key_id: keys.signer.public_key}, "store"
        )
        assert roster["tills"]["ta"]["key_id"] == till.signer.key_id

        # -- commands to the till: each refused with an event/error, nothing done.
        enroll = {"visitor_code": "KMT-42", "member_id": "m-evil", "consent_ref": "c"}
        attacker.send(f"{UNIT}/cmd/enroll", {"request_id": "x1", **enroll})  # no signature
        refused_command(attacker, "x1", "not authenticated: unsigned")
        attacker.send(
            f"{UNIT}/cmd/enroll", sign_for(mallory, f"{UNIT}/cmd/enroll", {"request_id": "x2", **enroll})
        )
        refused_command(attacker, "x2", "is not a key of the store server")
        # A till's own key does not make a command either.
        attacker.send(
            f"{UNIT}/cmd/display",
            sign_for(till.signer, f"{UNIT}/cmd/display", {"request_id": "x3", "message": "x"}),
        )
        refused_command(attacker, "x3", "is not a key of the store server")
        attacker.send(f"{UNIT}/cmd/display", {"request_id": "x4", "message": "Free points at till 2"})
        refused_command(attacker, "x4", "unsigned")
        # A genuine command is carried out (no error); the same bytes again are a replay.
        server.send_command("ta", "display", DisplayCommand(request_id="g1", message="Welcome"))
        genuine = wait(
            lambda: [m for m in attacker.on("/ta/cmd/display") if m.json()["request_id"] == "g1"], "g1"
        )[0]
        attacker.send(genuine.topic, genuine.payload)
        refused_command(attacker, "g1", "replayed")
        assert len(errors(attacker, "g1")) == 1  # the genuine one was not refused
        tampered = {**genuine.json(), "request_id": "g2", "message": "All points to member m-evil"}
        attacker.send(genuine.topic, tampered)
        refused_command(attacker, "g2", "bad signature")
        # Signed by the store, but stale (an hour old) or addressed to another till.
        hour_ago = (
            (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        old = keys.signer.sign(
            f"{UNIT}/cmd/display", {"request_id": "g3", "message": "x", **envelope("ta", hour_ago)}
        )
        attacker.send(f"{UNIT}/cmd/display", old)
        refused_command(attacker, "g3", "stale")
        elsewhere = keys.signer.sign(
            f"{UNIT}/cmd/display", {"request_id": "g4", "message": "x", **envelope("tb")}
        )
        attacker.send(f"{UNIT}/cmd/display", elsewhere)
        refused_command(attacker, "g4", "misaddressed")
        assert "m-evil" not in till.members_on_disk()

        # -- tombstones and member states on the store gallery: ignored (logged), the member stays.
        topic = member_topic("tillface", STORE, MEMBER)
        tomb = erase_state(STORE, MEMBER, int(time.time() * 1000) + 10**9, "store", utc_now())
        body = tomb.model_dump(by_alias=True, exclude_none=True)
        attacker.send(topic, body, retain=True)
        wait(
            lambda: f"gallery message on {topic} ignored: unsigned" in till.log(), "unsigned tombstone logged"
        )
        attacker.send(topic, mallory.sign(topic, body), retain=True)
        wait(
            lambda: "is not a key of the store server (only the store erases)" in till.log(),
            "wrong key logged",
        )
        attacker.send(topic, till.signer.sign(topic, body), retain=True)  # a till cannot erase either
        wait(lambda: till.log().count("only the store erases") >= 2, "a till-signed tombstone logged")
        evil_topic = member_topic("tillface", STORE, "m-evil")
        sealed = encrypt_templates(
            read_key_file(gallery_key),
            STORE,
            "m-evil",
            1,
            ["ab" * 16],
            rng.standard_normal((1, gallery.dim)),
            gallery.embedder,
        )
        evil = MemberState(
            store=STORE,
            member_id="m-evil",
            revision=1,
            origin="ta",
            ts=utc_now(),
            erased=False,
            templates=sealed,
        )
        attacker.send(evil_topic, mallory.sign(evil_topic, evil.model_dump(by_alias=True, exclude_none=True)))
        wait(lambda: f"gallery message on {evil_topic} ignored: key_id" in till.log(), "forged upsert logged")
        assert till.members_on_disk() == [MEMBER]
        assert not attacker.on("/ta/event/erased")

        # -- events to the store: a forged match sends no name and makes no visit.
        def match(visit_id: str) -> dict[str, Any]:
            return MatchEvent(
                **envelope("ta"),
                visit_id=visit_id,
                member_id=MEMBER,
                score=0.9,
                margin=0.3,
                frames=5,
                quality=0.9,
                gallery_version=1,
                model="m",
            ).model_dump(by_alias=True, exclude_none=True)

        match_topic = f"{UNIT}/event/match"
        attacker.send(match_topic, match("v-forged-1"))
        attacker.send(match_topic, mallory.sign(match_topic, match("v-forged-2")))
        # ta's key on tb's topic: tb has no key of ta's (a till cannot speak for another).
        tb_topic = f"tillface/{STORE}/tb/event/match"
        attacker.send(tb_topic, till.signer.sign(tb_topic, {**match("v-forged-3"), "till": "tb"}))
        wait(lambda: len([r for r in server.refused if "/event/match" in r]) >= 3, "three refused matches")
        refused = [r for r in server.refused if "/event/match" in r]
        assert "unsigned" in refused[0] and "not a key of till ta" in refused[1], refused
        assert "not a key of till tb" in refused[2], refused
        # The genuine till's match is answered with her name; replaying it changes nothing.
        real = till.signer.sign(match_topic, match("v-real"))
        attacker.send(match_topic, real)
        wait(
            lambda: [m for m in attacker.on("/ta/cmd/display") if m.json().get("visit_id") == "v-real"],
            "display",
        )
        attacker.send(match_topic, real)
        time.sleep(1.0)
        shown = [m.json() for m in attacker.on("/cmd/display") if m.json().get("member_id") == MEMBER]
        assert [(d["visit_id"], d["name"]) for d in shown] == [("v-real", "Ada")], shown
        with server.sessions() as s:
            assert sorted(v.visit_id for v in s.query(Visit)) == ["v-real"]

        # -- status: a forged offline neither stalls an erase nor blocks enrolment.
        attacker.send(f"{UNIT}/status", b"offline", retain=True)
        attacker.send(*status(mallory, STORE, "ta", "offline", "0" * 32), retain=True)
        wait(
            lambda: len([r for r in server.refused if r.startswith(f"{UNIT}/status")]) >= 2,
            "statuses refused",
        )
        assert server.tills["ta"].status == "online"
        # The till's own offline (a clean stop, signed) counts; replayed after it reconnects, it does not.
        till.stop()
        wait(lambda: server.tills["ta"].status == "offline", "the till's signed offline")
        its_offline = [
            m
            for m in attacker.on("/ta/status")
            if m.payload.startswith(b"{")
            and m.json().get("key_id") == till.signer.key_id
            and m.json()["state"] == "offline"
        ]
        till.start()
        wait(lambda: server.tills["ta"].status == "online", "the till back online")
        attacker.send(f"{UNIT}/status", its_offline[-1].payload, retain=True)
        wait(lambda: any("replayed: offline of session" in r for r in server.refused), "replayed offline")
        assert server.tills["ta"].status == "online"

        # -- the genuine erase still works, acknowledged by the till.
        result = server.erase(MEMBER)
        assert result["acknowledged"] == ["ta"], result
        assert till.members_on_disk() == []
    finally:
        till.stop()
        attacker.close()
        server.stop()
    assert "Traceback" not in till.log()


def test_a_store_signed_erase_wins_at_a_till_whose_clock_is_an_hour_ahead(tmp_path, broker, monkeypatch):
    """Issue 14 item 4: the member's revision at the till (its clock, an hour ahead) is newer than the
    store's tombstone; the erase still applies, and the till never publishes the member again."""
    keys = StoreKeys(tmp_path / "store-keys")
    gallery_key = tmp_path / "store-gallery.key"
    create_key_file(gallery_key)
    till = Till(tmp_path, "ta", broker.port, gallery_key, keys)
    ahead = tmp_path / "clock-ahead"
    ahead.mkdir()
    (ahead / "sitecustomize.py").write_text(
        "import time\n_real = time.time\ntime.time = lambda: _real() + 3600.0  # this till's clock\n"
    )
    config = load_config(till.cfg)
    gallery = GalleryStore(config.gallery.file, read_key_file(gallery_key), embedder=config.vision.embedder)
    gallery.load()
    with monkeypatch.context() as m:  # enrolled there, an hour "later" than the store's clock
        real = time.time
        m.setattr(time, "time", lambda: real() + 3600.0)
        gallery.upsert(MEMBER, np.random.default_rng(1).standard_normal((1, gallery.dim)), "enroll")
    ahead_revision, _ = gallery.revision_of(MEMBER)
    server = StoreServer(
        load_store_config(
            None,
            {
                "store": {
                    "id": STORE,
                    "database_url": f"sqlite:///{tmp_path / 'store.db'}",
                    "erase_timeout_s": 3,
                },
                "mqtt": {"port": broker.port},
                "keys": {"dir": keys.dir},
            },
        )
    )
    with server.sessions() as s:
        s.add(Member(id=MEMBER, phone="+442079460018", name="Ada", points=0))
        s.commit()
    server.start()
    observer = Peer(broker.port, [f"tillface/{STORE}/gallery/#"], client_id="observer")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ahead), os.environ.get("PYTHONPATH")]))}
    try:
        till.start(env)
        topic = member_topic("tillface", STORE, MEMBER)
        published = wait(lambda: observer.on(f"/gallery/members/{MEMBER}"), "the till publishes the member")
        assert published[0].json()["revision"] == ahead_revision > int(time.time() * 1000) + 3_000_000
        wait(lambda: server.tills.get("ta") and server.tills["ta"].status == "online", "till online")
        server.erase(MEMBER)
        tomb = wait(lambda: [m for m in observer.on(topic) if m.json()["erased"]], "the tombstone")[0].json()
        assert tomb["revision"] < ahead_revision  # older by the till's clock, and it wins all the same
        wait(lambda: till.members_on_disk() == [], "the erase applied at the till", timeout=10)
        # After a restart (a catch-up) the till republishes nothing of her; the tombstone stays.
        till.stop()
        till.start(env)
        wait(lambda: "store gallery caught up" in till.log().split("MQTT link to")[-1], "the catch-up")
        time.sleep(1.0)
        assert till.members_on_disk() == []
        states = [m.json() for m in observer.on(topic)]
        assert states[-1]["erased"] is True and len([s for s in states if not s["erased"]]) == 1, states
    finally:
        till.stop()
        observer.close()
        server.stop()
    assert "Traceback" not in till.log()
