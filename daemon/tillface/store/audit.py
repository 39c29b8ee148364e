"""The store's audit: who (API key id, name, role), when, what (enrol, erase, points, key create/revoke,
a refused request), for which member, how many points. Never biometrics, a phone number or a name.

Rows are written in the same transaction as the change they record: `on_flush` (a listener on every
session of the store database, see `db.open_database`) adds one for each member created or deleted and
each receipt that awards points, whoever's code made the change. Who made it is `acting(...)`'s actor
(the HTTP API sets it per request); a change made outside a request is recorded as the local process.
The table is append-only: the migration adds triggers that refuse UPDATE and DELETE on it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from .db import AuditEntry, Member, Receipt, aware, now

# Actions (the `action` column).
ENROL = "enrol"  # member created with consent, cmd/enroll sent to the till
ENROL_UNDONE = "enrol-undone"  # the till refused or did not answer: the member was removed again
ERASE = "erase"
POINTS = "points"
KEY_CREATE = "key-create"
KEY_REVOKE = "key-revoke"
REFUSED = "refused"  # an authenticated key asked for something its role may not do


@dataclass(frozen=True)
class Actor:
    key_id: str | None
    name: str
    role: str | None


def local_actor() -> Actor:
    """The operator at the store server's console (store-admin commands, scripts)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(None, f"local:{user}"[:80], None)


_ACTOR: ContextVar[Actor | None] = ContextVar("tillface_store_actor", default=None)
_ACTION: ContextVar[str | None] = ContextVar("tillface_store_action", default=None)


@contextlib.contextmanager
def acting(actor: Actor, action: str | None = None) -> Iterator[None]:
    """Changes made inside are audited as `actor`'s; `action` names the request (enrol, erase...)."""
    tokens = (_ACTOR.set(actor), _ACTION.set(action))
    try:
        yield
    finally:
        _ACTOR.reset(tokens[0])
        _ACTION.reset(tokens[1])


def current_actor() -> Actor:
    return _ACTOR.get() or local_actor()


def row(
    actor: Actor, action: str, member_id: str | None = None, points: int | None = None, detail: str = ""
) -> dict[str, Any]:
    return {
        "at": now(),
        "key_id": actor.key_id,
        "key_name": actor.name[:80],
        "role": actor.role,
        "action": action,
        "member_id": member_id,
        "points": points,
        "detail": detail[:200] or None,
    }


def record(session: Session, actor: Actor, action: str, **fields: Any) -> None:
    """One audit row in the session's transaction (committed with it)."""
    session.connection().execute(insert(AuditEntry).values(row(actor, action, **fields)))


def record_now(sessions: sessionmaker[Session], actor: Actor, action: str, **fields: Any) -> None:
    """One audit row in a transaction of its own."""
    with sessions() as session:
        record(session, actor, action, **fields)
        session.commit()


def on_flush(session: Session, _context: Any) -> None:
    """Audit rows for the members created or deleted and the points awarded in this flush."""
    actor = current_actor()
    rows = []
    for obj in session.new:
        if isinstance(obj, Member):
            consent = obj.consents[0] if obj.consents else None
            detail = (
                f"consent {consent.text_version} by {consent.channel} at till {consent.till}"
                if consent
                else ""
            )
            rows.append(row(actor, ENROL, obj.id, detail=detail))
        elif isinstance(obj, Receipt) and obj.member_id is not None and obj.points:
            rows.append(
                row(
                    actor,
                    POINTS,
                    obj.member_id,
                    obj.points,
                    f"receipt {obj.id}, total {obj.total_cents} cents",
                )
            )
    for obj in session.deleted:
        if isinstance(obj, Member):
            undone = _ACTION.get() == ENROL
            rows.append(row(actor, ENROL_UNDONE if undone else ERASE, obj.id))
    if rows:
        session.connection().execute(insert(AuditEntry), rows)


def entries(
    sessions: sessionmaker[Session], member_id: str | None = None, limit: int = 100, before: int | None = None
) -> list[dict[str, Any]]:
    """Newest first; `before` pages back (entries with a smaller id)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if member_id is not None:
        query = query.where(AuditEntry.member_id == member_id)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    with sessions() as session:
        return [_out(e) for e in session.scalars(query)]


def _out(e: AuditEntry) -> dict[str, Any]:
    at: datetime = aware(e.at)
    return {
        "id": e.id,
        "at": at,
        "key_id": e.key_id,
        "key_name": e.key_name,
        "role": e.role,
        "action": e.action,
        "member_id": e.member_id,
        "points": e.points,
        "detail": e.detail,
    }
