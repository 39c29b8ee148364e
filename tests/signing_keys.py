"""Key material for tests, laid out as `tillface store-admin provision-store/provision-till` leave it
(tillface.security.layout): the store server's keys folder, and per till its private key and the
store's public key in the till's state folder (the unit's file fallback, `[mqtt] signing_key_file` and
`store_public_key_file`)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from tillface.events import utc_now
from tillface.link.gallery_sync import roster_topic
from tillface.link.schemas import Roster
from tillface.security import layout
from tillface.security.signing import (
    Signer,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_raw_b64,
)


class StoreKeys:
    """A store's keys folder: created on first use, loaded after (so tests and tills share it)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        key = folder / layout.STORE_SIGNING_KEY
        if not key.exists():
            generate_keypair(key, folder / "store-signing.pub")
        self.signer = Signer(load_private_key(key))

    @property
    def public_file(self) -> Path:
        return self.dir / "store-signing.pub"

    def provision(self, till: str, state_dir: Path) -> Signer:
        """A till's pair: private key into its state folder, public key registered with the store."""
        state_dir.mkdir(parents=True, exist_ok=True)
        private = state_dir / layout.TILL_SIGNING_KEY
        public = layout.till_public_key(self.dir, till)
        if private.exists():
            private.unlink()
        if public.exists():
            public.unlink()
        generate_keypair(private, public)
        shutil.copy(self.public_file, state_dir / layout.STORE_SIGNING_PUB)
        return Signer(load_private_key(private))

    def command(self, topic: str, body: dict[str, Any]) -> dict[str, Any]:
        return sign_for(self.signer, topic, body)

    def roster(self, store: str, root: str = "tillface") -> tuple[str, dict[str, Any]]:
        """The store-signed roster of every till registered here, as the store server publishes it
        (retained) on `<root>/<store>/gallery/tills`: (topic, payload)."""
        tills = {}
        for path in sorted((self.dir / layout.TILLS_DIR).glob("*.pub")):
            public = load_public_key(path)
            tills[path.stem] = {"key_id": key_id(public), "public_key": public_raw_b64(public)}
        topic = roster_topic(root, store)
        body = {"schema": 1, "event_id": str(uuid.uuid4()), "ts": utc_now(), "store": store, "tills": tills}
        Roster.model_validate(body)
        return topic, self.signer.sign(topic, body)


def sign_for(signer: Signer, topic: str, body: dict[str, Any]) -> dict[str, Any]:
    """Sign `body` for `topic`; a command (`.../<till>/cmd/<name>`) gets the store's envelope first
    (event_id, ts, store, till) where the body does not set it."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[3] == "cmd":
        body = {"event_id": str(uuid.uuid4()), "ts": utc_now(), "store": parts[1], "till": parts[2], **body}
    return signer.sign(topic, body)


def status(signer: Signer, store: str, till: str, state: str, session: str) -> tuple[str, dict[str, Any]]:
    """A till's signed status message (what the unit publishes on connect, or as its last will)."""
    topic = f"tillface/{store}/{till}/status"
    body = {"schema": 1, "event_id": str(uuid.uuid4()), "ts": utc_now(), "store": store, "till": till}
    return topic, signer.sign(topic, {**body, "state": state, "session": session})
