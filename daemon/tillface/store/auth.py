"""API keys and roles of the store server's HTTP API.

A key is `tfk_<id>_<secret>`: `id` is 12 hex digits, public (shown by `key-list`, written in the audit),
and `secret` is `secrets.token_urlsafe(32)`, 256 random bits. It is sent as `Authorization: Bearer <key>`.
The database keeps only SHA-256 of the whole key. A fast hash is the right one here: slow password hashes
(bcrypt, scrypt, Argon2) exist to make guessing low-entropy passwords expensive, but nobody can guess
256 random bits however fast the hash is, and a slow hash on every request would only hand an attacker
a way to burn the store server's CPU. The comparison is constant-time (`hmac.compare_digest`).

Roles (each endpoint lists the roles it allows, see `api.py`; `ROLES`):
    till-pos   the till's point-of-sale software: POST /receipts, GET /visitors
    cashier    the cashier's screen: POST /members, GET /members/{id}, GET /visitors, the page /till/{id}
    manager    DELETE /members/{id}, GET /tills, GET /audit, and what a cashier may

Keys are made, listed and revoked on the store server itself: `tillface store-admin key-create`,
`key-list`, `key-revoke` (this module's `create_key`, `list_keys`, `revoke_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from . import audit
from .db import ApiKey, aware, now

TILL_POS = "till-pos"
CASHIER = "cashier"
MANAGER = "manager"
ROLES = (TILL_POS, CASHIER, MANAGER)
PREFIX = "tfk"
KEY_PATTERN = re.compile(r"^tfk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
LAST_USED_EVERY_S = 60  # last_used_at is written at most once a minute per key (not on every request)


@dataclass(frozen=True)
class Principal:
    """Who a request is: an unrevoked key."""

    key_id: str
    name: str
    role: str

    def actor(self) -> audit.Actor:
        return audit.Actor(self.key_id, self.name, self.role)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(sessions: sessionmaker[Session], role: str, name: str) -> tuple[str, str]:
    """A new key for `role`: (its id, the key itself). The key is not stored; show it once."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    name = name.strip()
    if not 1 <= len(name) <= 80:
        raise ValueError("name: give 1 to 80 characters saying who or what holds the key")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with sessions() as session:
        session.add(ApiKey(id=key_id, name=name, role=role, secret_hash=key_hash(key)))
        audit.record(
            session, audit.current_actor(), audit.KEY_CREATE, detail=f"key {key_id} ({role}, {name})"
        )
        session.commit()
    return key_id, key


def list_keys(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as session:
        keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()
        return [
            {
                "id": k.id,
                "name": k.name,
                "role": k.role,
                "created": aware(k.created_at),
                "last_used": aware(k.last_used_at) if k.last_used_at else None,
                "revoked": aware(k.revoked_at) if k.revoked_at else None,
            }
            for k in keys
        ]


def revoke_key(sessions: sessionmaker[Session], key_id: str) -> bool:
    """Revoke a key (effective at the next request). False if it was revoked already; KeyError if unknown."""
    with sessions() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise KeyError(key_id)
        if key.revoked_at is not None:
            return False
        key.revoked_at = now()
        audit.record(
            session, audit.current_actor(), audit.KEY_REVOKE, detail=f"key {key_id} ({key.role}, {key.name})"
        )
        session.commit()
    return True


def active_keys(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
        )


class BadKey(Exception):
    """Why a presented key is refused (said in the 401)."""


def authenticate(sessions: sessionmaker[Session], key: str) -> Principal:
    """The unrevoked key's principal, or BadKey (malformed, unknown, wrong secret or revoked)."""
    match = KEY_PATTERN.match(key)
    if match is None:
        raise BadKey("the key is not a tillface store API key (tfk_<id>_<secret>)")
    key_id = match.group(1)
    with sessions() as session:
        stored = session.get(ApiKey, key_id)
        if stored is None or not hmac.compare_digest(stored.secret_hash, key_hash(key)):
            raise BadKey("unknown key")
        if stored.revoked_at is not None:
            raise BadKey(f"key {key_id} was revoked")
        moment = now()
        if stored.last_used_at is None or moment - aware(stored.last_used_at) > timedelta(
            seconds=LAST_USED_EVERY_S
        ):
            stored.last_used_at = moment
            session.commit()
        return Principal(stored.id, stored.name, stored.role)
