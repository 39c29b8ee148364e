"""Three tills of one store on one real broker: an enrolment at one is recognised at the others,
and an erase from the store reaches all of them, including one that was off during the erase."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mqtt_peer import Peer
from replay_fixtures import lfw_identities
from signing_keys import StoreKeys
from till_process import Till, decisions, health_members, render
from tillface.events import utc_now
from tillface.link.gallery_sync import erase_state, member_topic
from tillface.recognition.gallery import create_key_file

STORE = "s1"
MEMBER = "m-0001"


def wait_health(peer: Peer, tills: list[str], members: int, timeout: float) -> float:
    """Seconds until every till's health reports `members` gallery members."""
    t0 = time.monotonic()
    peer.wait_for(lambda _ms: all(health_members(peer, t) == members for t in tills), timeout=timeout)
    return time.monotonic() - t0


@pytest.fixture
def photo(faces_dir: Path) -> Path:
    multi, _single = lfw_identities(faces_dir)
    return faces_dir / multi[sorted(multi)[3]][0]


def test_enrol_at_one_till_recognised_at_all_and_erase_reaches_all(tmp_path, broker, photo):
    key = tmp_path / "store.key"
    create_key_file(key)  # one store key: every till's gallery and the wire
    units = {t: Till(tmp_path, t, broker.port, key) for t in ("ta", "tb", "tc")}
    # The peer plays the store server: it signs its commands and tombstones with the store's key.
    peer = Peer(
        broker.port,
        [f"tillface/{STORE}/#"],
        client_id="store",
        signer=StoreKeys(tmp_path / "store-keys").signer,
    )
    peer.send(*StoreKeys(tmp_path / "store-keys").roster(STORE), retain=True)
    pending = {
        t: render(photo, u.cam, f"{t}-1", seed=i + 1, pad_s=45 if t == "ta" else 25)
        for i, (t, u) in enumerate(units.items())
    }
    try:
        for u in units.values():
            u.start()
        peer.wait_for(lambda ms: all(health_members(peer, t) == 0 for t in units), timeout=60)

        # A customer at till A is a visitor; the cashier enrols her with consent.
        units["ta"].show(pending["ta"])
        visitor = peer.wait_for(lambda ms: decisions(peer, "ta"), timeout=60) and decisions(peer, "ta")[0]
        assert visitor["event"] == "visitor"
        peer.send(
            f"tillface/{STORE}/ta/cmd/enroll",
            {
                "request_id": "q1",
                "visitor_code": visitor["visitor_code"],
                "member_id": MEMBER,
                "consent_ref": "c-77",
            },
        )
        enrolled = peer.wait_for(lambda ms: peer.on("/ta/event/enrolled"), timeout=10)
        assert peer.on("/ta/event/enrolled")[0].json()["member_id"] == MEMBER
        spread = wait_health(peer, ["tb", "tc"], 1, timeout=10)
        print(f"enrolment at A reached B and C (their health) in {spread:.2f} s")
        assert spread <= 2.0, f"the enrolment took {spread:.2f} s to reach tills B and C"
        assert enrolled
        for t in ("tb", "tc"):
            assert units[t].members_on_disk() == [MEMBER]

        # She walks up to tills B and C: recognised by name.
        units["tb"].show(pending["tb"])
        units["tc"].show(pending["tc"])
        peer.wait_for(lambda ms: decisions(peer, "tb") and decisions(peer, "tc"), timeout=60)
        for t in ("tb", "tc"):
            first = decisions(peer, t)[0]
            assert first["event"] == "match" and first["member_id"] == MEMBER, first

        # Till C is switched off; the store erases her; A and B drop her within 2 s and say so.
        units["tc"].stop()
        revision = int(time.time() * 1000)
        tombstone = erase_state(STORE, MEMBER, revision, "store", utc_now())
        t0 = time.monotonic()
        peer.send(member_topic("tillface", STORE, MEMBER), tombstone.model_dump(by_alias=True), retain=True)
        peer.wait_for(lambda ms: peer.on("/ta/event/erased") and peer.on("/tb/event/erased"), timeout=10)
        acked = time.monotonic() - t0
        print(f"erase acknowledged by A and B after {acked:.2f} s")
        assert acked <= 2.0, f"erase acknowledged after {acked:.2f} s"
        for t in ("ta", "tb"):
            ack = peer.on(f"/{t}/event/erased")[0].json()
            assert ack["member_id"] == MEMBER and ack["found"] is True
            assert units[t].members_on_disk() == []
        wait_health(peer, ["ta", "tb"], 0, timeout=2.0)
        retained = [m for m in peer.on(f"/gallery/members/{MEMBER}")][-1].json()
        assert (
            retained["erased"] is True and retained.get("templates") is None
        )  # no biometrics left on the broker

        # Till C comes back with her in front of it: it applies the erase before deciding.
        assert units["tc"].members_on_disk() == [MEMBER]
        units["tc"].show(render(photo, units["tc"].cam, "tc-2", seed=9, pad_s=5))
        before = len(decisions(peer, "tc"))
        units["tc"].start()
        peer.wait_for(lambda ms: len(decisions(peer, "tc")) > before, timeout=60)
        after = decisions(peer, "tc")[before]
        assert after["event"] == "visitor", after
        assert peer.on("/tc/event/erased"), "till C did not acknowledge the erase it caught up on"
        units["tc"].stop()
        assert units["tc"].members_on_disk() == []
    finally:
        for u in units.values():
            u.stop()
        peer.close()
    logs = "".join(u.log() for u in units.values())
    assert "Traceback" not in logs
    assert json.dumps(visitor)  # the visitor payload is plain JSON


def test_templates_of_another_embedder_are_refused_and_cannot_be_relabelled(tmp_path):
    import numpy as np

    from tillface.link.gallery_sync import SyncError, apply_state, state_of
    from tillface.recognition.gallery import GalleryStore, read_key_file

    create_key_file(tmp_path / "k")
    key = read_key_file(tmp_path / "k")
    rng = np.random.default_rng(0)
    dlib_till = GalleryStore(tmp_path / "a.tfg", key, embedder="dlib-resnet-v1-int8")
    dlib_till.load()
    dlib_till.upsert(MEMBER, rng.standard_normal((1, 128)), "enroll")
    state = state_of(dlib_till, key, STORE, MEMBER, "till-a", utc_now())
    assert state.templates is not None and state.templates.embedder == "dlib-resnet-v1-int8"

    sface_till = GalleryStore(tmp_path / "b.tfg", key)  # the default embedder
    sface_till.load()
    with pytest.raises(SyncError, match=r"templates\.embedder is 'dlib-resnet-v1-int8'"):
        apply_state(sface_till, key, state)
    # Relabelling the templates as the other embedder's breaks their authentication.
    forged = state.model_copy(
        update={"templates": state.templates.model_copy(update={"embedder": sface_till.embedder})}
    )
    with pytest.raises(SyncError, match="cannot be decrypted"):
        apply_state(sface_till, key, forged)
    assert sface_till.members() == [] and not (tmp_path / "b.tfg").exists()


def test_a_rotated_store_key_reaches_the_broker_and_a_new_till(tmp_path, broker, photo):
    """After `tillface store-admin rotate-store-key` (a unit was lost), the tills get the new store key
    from their bundles (the credential store-gallery.key): the one holding a member republishes her under
    the new key, and a new till that has only the new key receives her."""
    import os
    import subprocess
    import sys

    from tillface.recognition.gallery import key_id

    old_key, new_key = tmp_path / "old-store.key", os.urandom(32)
    create_key_file(old_key)  # till A's gallery key and, with no credential, its wire key too
    own_key = tmp_path / "tc-gallery.key"
    create_key_file(own_key)
    units = {
        "ta": Till(tmp_path, "ta", broker.port, old_key),
        "tc": Till(tmp_path, "tc", broker.port, own_key),
    }
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,identity\n{photo.name},{MEMBER}\n", encoding="utf-8")
    imported = subprocess.run(
        [
            *(sys.executable, "-m", "tillface", "gallery", "import", "--config", str(units["ta"].cfg)),
            *("--images", str(photo.parent), "--labels", str(labels), "--consent-ref", "form-1", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    keys = StoreKeys(tmp_path / "store-keys")
    peer = Peer(broker.port, [f"tillface/{STORE}/#"], client_id="store", signer=keys.signer)
    peer.send(*keys.roster(STORE), retain=True)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "store-gallery.key").write_bytes(new_key)

    def wire_key_ids() -> list[str | None]:
        return [
            (m.json().get("templates") or {}).get("key_id")
            for m in peer.on(f"/gallery/members/{MEMBER}")
            if m.payload
        ]

    try:
        units["ta"].start()
        peer.wait_for(lambda ms: wire_key_ids(), timeout=60)
        assert wire_key_ids()[-1] == key_id(old_key.read_bytes())
        units["ta"].stop()
        units["ta"].start(env={"CREDENTIALS_DIRECTORY": str(bundle)})  # its new bundle
        peer.wait_for(lambda ms: wire_key_ids()[-1] == key_id(new_key), timeout=60)
        units["tc"].start(env={"CREDENTIALS_DIRECTORY": str(bundle)})
        wait_health(peer, ["tc"], 1, timeout=60)
        assert "encrypted with store key" in units["ta"].log()  # it said why it republished
    finally:
        for u in units.values():
            u.stop()
        peer.close()


def test_rotate_store_key_replaces_the_key_that_new_bundles_carry(tmp_path):
    import subprocess
    import sys

    from tillface.recognition.gallery import key_id

    store_toml = tmp_path / "store.toml"
    store_toml.write_text(f'[store]\nid = "{STORE}"\n[keys]\ndir = "{tmp_path / "keys"}"\n', encoding="utf-8")

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tillface", "store-admin", *args, "--config", str(store_toml)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = admin("provision-till", "--till", "t1", "--out", str(tmp_path / "b1"), "--no-tls")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "b1" / "store-gallery.key").read_bytes()
    out = admin("rotate-store-key")
    assert out.returncode == 0, out.stderr
    assert f"store key {key_id(before)} replaced by " in out.stdout and "provision-till" in out.stdout
    second = admin("provision-till", "--till", "t1", "--out", str(tmp_path / "b2"), "--no-tls")
    assert second.returncode == 0, second.stderr
    after = (tmp_path / "b2" / "store-gallery.key").read_bytes()
    assert len(after) == 32 and after != before and key_id(after) in out.stdout
    assert (tmp_path / "keys" / "store-gallery.key").stat().st_mode & 0o777 == 0o600
