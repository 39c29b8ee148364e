"""The encrypted member gallery: format, key handling, atomic writes, erase, matcher cache."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tillface.config import GalleryConfig
from tillface.recognition.gallery import (
    MAGIC,
    GalleryError,
    GalleryStore,
    create_key_file,
    key_id,
    load_key,
    read_key_file,
)

DIM = 128


def _unit(rng: np.random.Generator, k: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((k, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    path = tmp_path / "state" / "gallery.key"
    create_key_file(path)
    return read_key_file(path)


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> GalleryStore:
    s = GalleryStore(tmp_path / "state" / "gallery.tfg", key)
    s.load()
    return s


def _reopen(store: GalleryStore, key: bytes) -> GalleryStore:
    other = GalleryStore(store.path, key)
    other.load()
    return other


# ---------------------------------------------------------------- roundtrip and format


def test_roundtrip(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, DIM)).astype(np.float32) * 5  # not normalised: the store does it
    ids_a = store.upsert("member-a", a, "enroll")
    ids_b = store.upsert("member-b", _unit(rng, 2), "import", consent_ref="form-60")
    assert len(ids_a) == 3 and len(ids_b) == 2 and len(set(ids_a + ids_b)) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids_a)
    assert store.version == 2

    again = _reopen(store, key)
    assert again.version == 2 and again.members() == ["member-a", "member-b"] and again.size == 5
    for member in ("member-a", "member-b"):
        mine, theirs = store.templates_of(member), again.templates_of(member)
        assert [t.id for t in mine] == [t.id for t in theirs]
        for m, t in zip(mine, theirs, strict=True):
            assert t.embedding.dtype == np.float32 and t.embedding.shape == (DIM,)
            np.testing.assert_array_equal(m.embedding, t.embedding)
            assert abs(float(np.linalg.norm(t.embedding)) - 1.0) < 1e-5
            assert (m.created, m.source, m.member_id) == (t.created, t.source, t.member_id)
    expected = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.stack([t.embedding for t in again.templates_of("member-a")]), expected, 1e-6
    )
    assert {t.source for t in again.templates_of("member-b")} == {"import"}


def test_file_layout_and_mode(store: GalleryStore) -> None:
    store.upsert("m", _unit(np.random.default_rng(1), 1), "enroll")
    blob = store.path.read_bytes()
    assert blob[:4] == MAGIC
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert {p.name for p in store.path.parent.iterdir()} == {"gallery.key", "gallery.tfg"}


def test_missing_file_is_an_empty_gallery(tmp_path: Path, key: bytes) -> None:
    s = GalleryStore(tmp_path / "nothing" / "g.tfg", key)
    s.load()
    assert s.version == 0 and s.members() == [] and s.matcher().size == 0
    with pytest.raises(GalleryError, match="does not exist"):
        s.load(missing_ok=False)


def test_no_plaintext_on_disk(store: GalleryStore) -> None:
    rng = np.random.default_rng(2)
    emb = _unit(rng, 2)
    store.upsert("alice-in-plaintext-4711", emb, "enroll")
    blob = store.path.read_bytes()
    assert b"alice-in-plaintext-4711" not in blob
    assert b"enroll" not in blob and b"version" not in blob
    assert emb[0].tobytes()[:16] not in blob
    # No temp file (and so no plaintext temp file) is left behind.
    assert {p.name for p in store.path.parent.iterdir()} == {"gallery.key", "gallery.tfg"}


# ---------------------------------------------------------------- refusing bad files


def test_wrong_key_refused_and_file_untouched(store: GalleryStore, tmp_path: Path) -> None:
    store.upsert("m", _unit(np.random.default_rng(3), 2), "enroll")
    before = store.path.read_bytes()
    other_key = os.urandom(32)
    wrong = GalleryStore(store.path, other_key)
    with pytest.raises(GalleryError, match="wrong key") as info:
        wrong.load()
    assert str(store.path) in str(info.value)
    assert other_key.hex() not in str(info.value)
    # The failed store refuses every write, so the last good file stays.
    with pytest.raises(GalleryError, match="refusing"):
        wrong.save()
    with pytest.raises(GalleryError, match="refusing"):
        wrong.upsert("x", _unit(np.random.default_rng(4), 1), "enroll")
    with pytest.raises(GalleryError, match="refusing"):
        wrong.erase("m")
    assert store.path.read_bytes() == before


@pytest.mark.parametrize("cut", [0, 3, 4, 16, 31, -1, -17, -1000])
def test_truncated_file_refused(store: GalleryStore, key: bytes, cut: int) -> None:
    store.upsert("m", _unit(np.random.default_rng(5), 4), "enroll")
    blob = store.path.read_bytes()
    store.path.write_bytes(blob[:cut])
    damaged = store.path.read_bytes()
    s = GalleryStore(store.path, key)
    with pytest.raises(GalleryError, match=r"truncated|cannot be decrypted|not a tillface") as info:
        s.load()
    assert str(store.path) in str(info.value)
    assert store.path.read_bytes() == damaged


@pytest.mark.parametrize("where", [0, 5, 20, 200, -1])
def test_corrupt_file_refused(store: GalleryStore, key: bytes, where: int) -> None:
    store.upsert("m", _unit(np.random.default_rng(6), 4), "enroll")
    blob = bytearray(store.path.read_bytes())
    blob[where] ^= 0x40
    store.path.write_bytes(bytes(blob))
    s = GalleryStore(store.path, key)
    with pytest.raises(GalleryError, match=r"cannot be decrypted|bad magic"):
        s.load()
    assert store.path.read_bytes() == bytes(blob)


def test_templates_of_another_embedder_refused_and_file_untouched(store: GalleryStore, key: bytes) -> None:
    store.upsert("m", _unit(np.random.default_rng(7), 2), "enroll")
    before = store.path.read_bytes()
    other = GalleryStore(store.path, key, embedder="dlib-resnet-v1-int8")
    with pytest.raises(GalleryError, match="sface-2021dec-int8") as info:
        other.load()
    assert "[vision] embedder" in str(info.value) and str(store.path) in str(info.value)
    with pytest.raises(GalleryError, match="refusing"):
        other.upsert("x", _unit(np.random.default_rng(8), 1), "enroll")
    assert store.path.read_bytes() == before
    assert _reopen(store, key).members() == ["m"]  # the right embedder still reads it


def test_a_gallery_with_no_templates_takes_the_new_embedder(store: GalleryStore, key: bytes) -> None:
    store.upsert("m", _unit(np.random.default_rng(9), 1), "enroll")
    store.erase("m")  # only a tombstone is left: nothing embedder-specific
    switched = GalleryStore(store.path, key, embedder="dlib-resnet-v1-int8")
    switched.load()
    switched.upsert("n", _unit(np.random.default_rng(10), 1), "enroll")
    with pytest.raises(GalleryError, match="dlib-resnet-v1-int8"):
        _reopen(store, key)
    assert switched.revision_of("m")[1]  # the tombstone survived the switch


def test_save_before_load_refused(tmp_path: Path, key: bytes) -> None:
    s = GalleryStore(tmp_path / "g.tfg", key)
    with pytest.raises(GalleryError, match="not loaded"):
        s.save()


# ---------------------------------------------------------------- key handling


def test_create_key_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "gallery.key"
    create_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(path.read_bytes()) == 32
    first = path.read_bytes()
    with pytest.raises(GalleryError, match="already exists"):
        create_key_file(path)
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["gallery.key"]


def test_key_file_mode_0644_refused(tmp_path: Path) -> None:
    path = tmp_path / "gallery.key"
    create_key_file(path)
    path.chmod(0o644)
    with pytest.raises(GalleryError, match="0644") as info:
        read_key_file(path)
    assert path.read_bytes().hex() not in str(info.value)
    path.chmod(0o400)
    assert len(read_key_file(path)) == 32


def test_key_file_formats(tmp_path: Path) -> None:
    raw = os.urandom(32)
    hex_file, b64_file, bad_file = tmp_path / "hex.key", tmp_path / "b64.key", tmp_path / "bad.key"
    for path, data in (
        (hex_file, raw.hex().encode() + b"\n"),
        (b64_file, base64.b64encode(raw) + b"\n"),
        (bad_file, raw[:20]),
    ):
        path.write_bytes(data)
        path.chmod(0o600)
    assert read_key_file(hex_file) == raw and read_key_file(b64_file) == raw
    with pytest.raises(GalleryError, match="20 bytes") as info:
        read_key_file(bad_file)
    assert raw[:20].hex() not in str(info.value)
    with pytest.raises(GalleryError, match="does not exist"):
        read_key_file(tmp_path / "none.key")


def test_credential_preferred_over_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "gallery.key"
    create_key_file(key_file)
    creds = tmp_path / "creds"
    creds.mkdir()
    cred_key = os.urandom(32)
    (creds / "gallery.key").write_bytes(cred_key)
    assert load_key(key_file, "gallery.key", creds) == cred_key
    assert load_key(key_file, "other.key", creds) == read_key_file(key_file)
    assert load_key(key_file, "gallery.key", tmp_path / "no-creds") == read_key_file(key_file)


def test_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = GalleryConfig(key_file=tmp_path / "k", file=tmp_path / "g.tfg")
    create_key_file(cfg.key_file)
    s = GalleryStore.from_config(cfg)
    s.load()
    s.upsert("m", _unit(np.random.default_rng(7), 1), "import", consent_ref="form-249")
    assert cfg.file.exists()
    key_hex = read_key_file(cfg.key_file).hex()
    assert key_hex not in repr(s) and key_hex not in str(vars(s))


def test_bad_key_length_refused(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="32 bytes"):
        GalleryStore(tmp_path / "g.tfg", b"short")


# ---------------------------------------------------------------- changes


def test_erase_removes_from_file_and_matcher(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(8)
    a, b = _unit(rng, 3), _unit(rng, 2)
    store.upsert("a", a, "enroll")
    store.upsert("b", b, "enroll")
    assert store.matcher().decide(a[0], 0.5, 0.05).member_id == "a"
    version = store.version
    assert store.erase("a") is True
    assert store.version == version + 1
    assert "a" not in store and store.templates_of("a") == []
    assert store.matcher().members == ["b"]
    assert store.matcher().decide(a[0], 0.5, 0.05).kind == "visitor"
    again = _reopen(store, key)
    assert again.members() == ["b"] and again.version == version + 1
    # Unknown member: nothing changes, nothing is written.
    before = store.path.read_bytes()
    assert store.erase("a") is False
    assert store.version == version + 1 and store.path.read_bytes() == before


def test_version_monotonic_and_persisted(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(9)
    seen = [store.version]
    for i in range(5):
        store.upsert(f"m{i % 2}", _unit(rng, 1), "sync")
        seen.append(store.version)
    store.erase("m0")
    seen.append(store.version)
    store.upsert("m1", _unit(rng, 2), "enroll", replace=True)
    seen.append(store.version)
    assert seen == sorted(set(seen)) and seen[0] == 0
    assert len(store.templates_of("m1")) == 2
    assert _reopen(store, key).version == seen[-1]


def test_bulk_upsert_without_persist(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(10)
    for i in range(20):
        store.upsert(f"m{i}", _unit(rng, 1), "import", persist=False, consent_ref="form-301")
    assert not store.path.exists()
    store.save()
    assert _reopen(store, key).size == 20


def test_upsert_validation(store: GalleryStore) -> None:
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match="shape"):
        store.upsert("m", _unit(rng, 2, dim=64), "enroll")
    with pytest.raises(ValueError, match="zero length"):
        store.upsert("m", np.zeros((1, DIM), np.float32), "enroll")
    with pytest.raises(ValueError, match="non-finite"):
        store.upsert("m", np.full((1, DIM), np.nan, np.float32), "enroll")
    with pytest.raises(ValueError, match="source"):
        store.upsert("m", _unit(rng, 1), "camera")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="member id"):
        store.upsert("", _unit(rng, 1), "enroll")
    # A member id names an MQTT topic level: whitespace, '/', '+' and '#' would break store-wide sync.
    for bad in ("Jane Doe", "a/b", "a+", "#", "tab\there", "nbsp\u00a0x"):
        with pytest.raises(ValueError, match="member id"):
            store.upsert(bad, _unit(rng, 1), "enroll")
    with pytest.raises(ValueError, match="consent reference"):
        store.upsert("m", _unit(rng, 1), "import")
    with pytest.raises(ValueError, match="consent reference"):
        store.upsert("m", _unit(rng, 1), "import", consent_ref="  ")
    assert store.version == 0 and store.members() == []
    store.upsert("m", _unit(rng, 1)[0], "enroll")  # a single vector is one template
    assert len(store.templates_of("m")) == 1


def test_consent_reference_kept_until_erased(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(12)
    store.upsert("imported", _unit(rng, 1), "import", consent_ref="paper-form-0042")
    store.upsert("enrolled", _unit(rng, 1), "enroll")
    again = _reopen(store, key)
    assert again.consent_of("imported") == "paper-form-0042"
    assert again.consent_of("enrolled") is None
    assert again.erase("imported")
    assert _reopen(store, key).consent_of("imported") is None


def test_matcher_cached_and_rebuilt(store: GalleryStore) -> None:
    rng = np.random.default_rng(12)
    store.upsert("a", _unit(rng, 2), "enroll")
    first = store.matcher()
    assert store.matcher() is first
    store.upsert("b", _unit(rng, 2), "enroll")
    second = store.matcher()
    assert second is not first and second.members == ["a", "b"] and second.size == 4


def test_audit_log(store: GalleryStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tillface.audit")
    emb = _unit(np.random.default_rng(13), 2)
    store.upsert("member-9", emb, "enroll")
    store.erase("member-9")
    store.erase("nobody")
    lines = [r.getMessage() for r in caplog.records if r.name == "tillface.audit"]
    assert len(lines) == 3
    assert "member=member-9" in lines[0] and "templates_added=2" in lines[0] and "version=1" in lines[0]
    assert "source=enroll" in lines[0]
    assert "erase member=member-9 templates=2" in lines[1] and "version=2" in lines[1]
    assert "found=false" in lines[2]
    assert all(f"{float(emb[0, 0]):.3f}"[:5] not in line for line in lines)


def test_concurrent_changes_and_matching(store: GalleryStore, key: bytes) -> None:
    rng = np.random.default_rng(14)
    probe = _unit(rng, 1)[0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        local = np.random.default_rng(100 + worker)
        try:
            for i in range(15):
                store.upsert(f"w{worker}-{i}", _unit(local, 2), "sync")
                if i % 3 == 0:
                    store.erase(f"w{worker}-{i}")
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                store.matcher().decide(probe, 0.5, 0.05)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert store.version == 3 * (15 + 5)
    assert store.size == 3 * 10 * 2 and store.matcher().size == 60
    assert _reopen(store, key).members() == store.members()


def test_100k_templates_save_and_load(tmp_path: Path, key: bytes) -> None:
    rng = np.random.default_rng(15)
    n, per_member = 100_000, 4
    emb = _unit(rng, n)
    s = GalleryStore(tmp_path / "big.tfg", key)
    s.load()
    t0 = time.perf_counter()
    for m in range(n // per_member):
        s.upsert(
            f"member-{m:06d}",
            emb[m * per_member : (m + 1) * per_member],
            "import",
            persist=False,
            consent_ref="form-395",
        )
    t1 = time.perf_counter()
    s.save()
    t2 = time.perf_counter()
    big = GalleryStore(s.path, key)
    big.load()
    t3 = time.perf_counter()
    matcher = big.matcher()
    t4 = time.perf_counter()
    print(
        f"\n100k templates: upsert {t1 - t0:.2f} s, save {t2 - t1:.2f} s "
        f"({s.path.stat().st_size / 1e6:.1f} MB), load {t3 - t2:.2f} s, matcher {t4 - t3:.2f} s"
    )
    assert big.size == n and len(big.members()) == n // per_member and big.version == s.version
    np.testing.assert_array_equal(big.templates_of("member-012345")[2].embedding, emb[12345 * 4 + 2])
    decision = matcher.decide(emb[777], 0.9, 0.05)
    assert decision.kind == "match" and decision.member_id == f"member-{777 // 4:06d}"


def test_the_file_names_its_key_and_a_wrong_key_is_named(store: GalleryStore, key: bytes) -> None:
    store.upsert("m", _unit(np.random.default_rng(21), 1), "enroll")
    blob = store.path.read_bytes()
    assert blob[4:12].hex() == key_id(key) == store.key_id
    assert key.hex()[:16] not in blob.hex() and key_id(key) != key_id(os.urandom(32))
    other = os.urandom(32)
    with pytest.raises(GalleryError, match=f"written with key id {key_id(key)}.*has id {key_id(other)}"):
        GalleryStore(store.path, other).load()


def test_a_legacy_tfg1_file_is_read_and_saved_as_tfg2(tmp_path: Path, key: bytes) -> None:
    """A gallery written before key ids (TFG1: magic, nonce, ciphertext) still loads."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tillface.recognition.gallery import LEGACY_ASSOCIATED_DATA, LEGACY_MAGIC

    store = GalleryStore(tmp_path / "g.tfg", key)
    store.load()
    store.upsert("legacy-member", _unit(np.random.default_rng(22), 2), "enroll")
    plaintext = AESGCM(key).decrypt(
        store.path.read_bytes()[12:24], store.path.read_bytes()[24:], _associated(store)
    )
    nonce = os.urandom(12)
    store.path.write_bytes(
        LEGACY_MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, LEGACY_ASSOCIATED_DATA)
    )
    again = GalleryStore(store.path, key)
    again.load()
    assert again.members() == ["legacy-member"] and len(again.templates_of("legacy-member")) == 2
    again.save()
    assert store.path.read_bytes()[:4] == MAGIC


def _associated(store: GalleryStore) -> bytes:
    import struct

    from tillface.recognition.gallery import FORMAT_VERSION

    return MAGIC + struct.pack(">H", FORMAT_VERSION) + bytes.fromhex(store.key_id)


def test_rekey_rewrites_the_file_for_the_new_key_only(store: GalleryStore, key: bytes) -> None:
    store.upsert("m", _unit(np.random.default_rng(23), 3), "enroll", consent_ref=None)
    new = os.urandom(32)
    old_id, new_id = store.rekey(new)
    assert (old_id, new_id) == (key_id(key), key_id(new))
    with pytest.raises(GalleryError, match="written with key id"):
        GalleryStore(store.path, key).load()
    reopened = GalleryStore(store.path, new)
    reopened.load()
    assert reopened.members() == ["m"] and len(reopened.templates_of("m")) == 3
    with pytest.raises(GalleryError, match="32 bytes"):
        store.rekey(b"short")
