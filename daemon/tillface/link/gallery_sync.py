"""Store-wide gallery sync over MQTT: every till of a store converges on the same members.

One retained message per member on `<root>/<store>/gallery/members/<member_id>` holds that member's
newest state: its templates (encrypted with the store key) or a tombstone (`erased`: no templates).
The broker's retained messages are the snapshot; live messages are the deltas. A unit that
(re)connects subscribes, receives every retained state, and knows it has caught up when its own
sync marker comes back (the broker delivers in order on one connection). It then publishes any member
state it holds that is newer than the broker's copy (an enrolment made while the broker was away),
so nothing depends on a message that was in flight when the link dropped.

Each state carries the member's revision (a hybrid logical clock in ms, see GalleryStore): the newest
revision wins between upserts and re-delivery is a no-op. A store-signed tombstone is final for its
member id (ids are never reused): it wins whatever the tills' clocks, and nothing brings the member back.

Every state is signed (security/signing.py): a tombstone counts only when the store server signed it,
templates only when their `origin` till signed them with the key the store-signed roster
(`<root>/<store>/gallery/tills`) lists for it. Nothing else is applied.
"""

from __future__ import annotations

import base64
import os
from typing import Annotated, Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, StringConstraints

from ..recognition.gallery import GalleryStore, key_id
from .schemas import KEY_ID_DOC, SIG_DOC, Id, KeyId, Payload, Sig, Timestamp

NONCE_SIZE = 12


class EncryptedTemplates(Payload):
    # Model id of the embedder that made them: a till running another embedder must not use them.
    embedder: Id
    count: int = Field(ge=1, le=64)
    dim: int = Field(ge=1, le=4096)
    ids: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]]
    ciphertext: str  # base64 of nonce + AES-GCM(float32 little-endian count x dim)
    # Which store key encrypted them (recognition.gallery.key_id): a till holding another store key
    # says so instead of failing to decrypt. Absent in messages from before key ids.
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None


class MemberState(Payload):
    schema_: Literal[1] = Field(alias="schema", default=1)
    store: Id
    member_id: Id
    revision: int = Field(ge=1)
    origin: Id
    ts: Timestamp
    erased: bool
    templates: EncryptedTemplates | None = None
    # Where the customer's consent is recorded, for a member imported at a till (`tillface gallery
    # import --consent-ref`); members enrolled through the store have theirs in the store's database.
    consent_ref: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    # Signed end to end: a tombstone by the store server, templates by their `origin` till.
    key_id: KeyId | None = Field(default=None, description=KEY_ID_DOC)
    sig: Sig | None = Field(default=None, description=SIG_DOC)


class SyncError(ValueError):
    """A gallery message that cannot be applied; the reason names what is wrong."""


def member_topic(root: str, store: str, member_id: str) -> str:
    return f"{root}/{store}/gallery/members/{member_id}"


def roster_topic(root: str, store: str) -> str:
    return f"{root}/{store}/gallery/tills"


def _aad(store: str, member_id: str, revision: int, embedder: str) -> bytes:
    # Binds the ciphertext to its member, revision and embedder: it cannot be replayed onto another
    # member, nor relabelled as another embedder's templates.
    return f"tillface-gallery/1/{store}/{member_id}/{revision}/{embedder}".encode()


def encrypt_templates(
    key: bytes,
    store: str,
    member_id: str,
    revision: int,
    ids: list[str],
    matrix: np.ndarray,
    embedder: str,
) -> EncryptedTemplates:
    rows = np.ascontiguousarray(matrix, dtype="<f4")
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, rows.tobytes(), _aad(store, member_id, revision, embedder))
    return EncryptedTemplates(
        embedder=embedder,
        count=rows.shape[0],
        dim=rows.shape[1],
        ids=list(ids),
        ciphertext=base64.b64encode(nonce + sealed).decode("ascii"),
        key_id=key_id(key),
    )


def decrypt_templates(key: bytes, state: MemberState, embedder: str) -> list[tuple[str, np.ndarray]]:
    """The templates of a state, which must have been made by `embedder` (this till's)."""
    enc = state.templates
    if enc is None:
        raise SyncError(f"member {state.member_id}: not erased but carries no templates")
    if enc.embedder != embedder:
        raise SyncError(
            f"member {state.member_id}: templates.embedder is {enc.embedder!r} but this till runs "
            f"{embedder!r}; the store's tills must run the same embedder"
        )
    if enc.key_id is not None and enc.key_id != key_id(key):
        raise SyncError(
            f"member {state.member_id}: templates encrypted with store key {enc.key_id}, but this till "
            f"holds store key {key_id(key)}; every till of a store needs the same store-gallery.key "
            "(tillface store-admin provision-till)"
        )
    if len(enc.ids) != enc.count:
        raise SyncError(f"member {state.member_id}: {len(enc.ids)} template ids for {enc.count} templates")
    try:
        blob = base64.b64decode(enc.ciphertext, validate=True)
    except ValueError:
        raise SyncError(f"member {state.member_id}: templates.ciphertext is not base64") from None
    try:
        plain = AESGCM(key).decrypt(
            blob[:NONCE_SIZE],
            blob[NONCE_SIZE:],
            _aad(state.store, state.member_id, state.revision, enc.embedder),
        )
    except (InvalidTag, ValueError):
        raise SyncError(
            f"member {state.member_id}: templates cannot be decrypted (a different store key?)"
        ) from None
    if len(plain) != 4 * enc.count * enc.dim:
        raise SyncError(f"member {state.member_id}: {len(plain)} bytes for {enc.count}x{enc.dim} floats")
    matrix = np.frombuffer(plain, dtype="<f4").reshape(enc.count, enc.dim)
    return list(zip(enc.ids, matrix, strict=True))


def state_of(
    gallery: GalleryStore, key: bytes, store: str, member_id: str, origin: str, ts: str
) -> MemberState:
    """The gallery's current state of a member (templates or tombstone), ready to publish."""
    revision, erased = gallery.revision_of(member_id)
    templates = gallery.templates_of(member_id)
    if erased or not templates:
        return MemberState(
            store=store, member_id=member_id, revision=max(revision, 1), origin=origin, ts=ts, erased=True
        )
    enc = encrypt_templates(
        key,
        store,
        member_id,
        revision,
        [t.id for t in templates],
        np.stack([t.embedding for t in templates]),
        gallery.embedder,
    )
    return MemberState(
        store=store,
        member_id=member_id,
        revision=revision,
        origin=origin,
        ts=ts,
        erased=False,
        templates=enc,
        consent_ref=gallery.consent_of(member_id),
    )


def erase_state(store: str, member_id: str, revision: int, origin: str, ts: str) -> MemberState:
    """The tombstone the store server publishes to erase a member at every till."""
    return MemberState(store=store, member_id=member_id, revision=revision, origin=origin, ts=ts, erased=True)


def apply_state(gallery: GalleryStore, key: bytes, state: MemberState) -> bool:
    """Apply a received (and authenticated) state; True if it changed this gallery (memory and disk).

    Member ids are never reused, so a tombstone (only ever applied when the store server signed it) is
    final for its member whatever the revisions say: it beats an upsert stamped by a till whose clock is
    ahead of the store's, and no later upsert of that id is applied."""
    known, erased = gallery.revision_of(state.member_id)
    if erased:
        return False  # erased already: re-delivery of the tombstone, or an upsert after it
    if state.erased:
        final = max(state.revision, known + 1)  # newer than anything this till holds of the member
        return gallery.apply_remote(state.member_id, final, None, origin=state.origin)
    if state.revision <= known:
        return False  # nothing to decrypt for an old copy
    return gallery.apply_remote(
        state.member_id, state.revision, decrypt_templates(key, state, gallery.embedder), origin=state.origin
    )
