"""The reference store server's core: the MQTT side (events in, commands out) and the business rules.

Threads: paho's network thread only queues what arrives; one worker thread validates each event with
the link's own models (`tillface.link.schemas`), drops a re-delivered `event_id`, writes the database
and answers a `match` with `cmd/display` at once. The HTTP handlers (FastAPI's thread pool) call
`enroll`, `add_receipt` and `erase`, which publish a command and wait for the till's answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import phonenumbers
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..events import utc_now
from ..link.gallery_sync import MemberState, erase_state, member_topic, roster_topic
from ..link.schemas import (
    EVENT_MODELS,
    Command,
    DisplayCommand,
    EnrollCommand,
    EnrolledEvent,
    Envelope,
    ErasedEvent,
    ErrorEvent,
    HealthEvent,
    LeftEvent,
    MatchEvent,
    Roster,
    StatusMessage,
    TillKey,
    VisitorEvent,
    describe_validation,
)
from ..security import layout, signing
from ..security.signing import SignatureError, Signer, check_addressed, verify
from . import audit
from .config import StoreConfig
from .db import (
    Consent,
    Member,
    Receipt,
    ReceiptItem,
    SeenEvent,
    Visit,
    aware,
    last_purchase,
    now,
    open_database,
    suggestions,
)

log = logging.getLogger("tillface.store")
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps events for the store server this long while it is away
SEEN_RETENTION_S = 30 * 24 * 3600  # how long an event_id is remembered for de-duplication
# A till's signed event may be this far ahead of the store's clock; it may be as old as the event_id
# memory (SEEN_RETENTION_S: an outbox resends after a long outage), older ones are refused as stale.
SIGNATURE_SKEW_S = 300.0
ROSTER_CHECK_S = 10.0  # how often the keys folder is checked for a changed till roster
KEYS_RESCAN_S = 5.0  # an unknown till's key is looked for again at most this often


class StoreKeyError(ValueError):
    """The store server's signing key is missing or unusable; the message names the file and the fix."""


def load_store_signer(keys_dir: Path) -> Signer:
    path = keys_dir / layout.STORE_SIGNING_KEY
    try:
        return Signer(signing.load_private_key(path))
    except signing.KeyFileError as exc:
        raise StoreKeyError(
            f"keys.dir: {exc}; create the store's keys with `tillface store-admin provision-store`"
        ) from None


class StoreError(Exception):
    """A request the store cannot carry out; `status` is the HTTP status, `detail` says why."""

    def __init__(self, status: int, detail: str | dict[str, Any]) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    result: Envelope | None = None


@dataclass
class TillState:
    status: str | None = None
    health: dict[str, Any] | None = None
    session: str | None = None  # the connection session of the newest signed `online`
    status_ts: float = float("-inf")


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Small packets out at once (no Nagle): a `cmd/display` is one, and a customer waits for it.
    Measured by scripts/load_store.py: the answer's p50 halves (21 → 11 ms)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def normalise_phone(raw: str, region: str) -> str:
    """E.164 (`+441234567890`), or StoreError 422 saying what is wrong with the number."""
    try:
        number = phonenumbers.parse(raw, region or None)
    except phonenumbers.NumberParseException as exc:
        raise StoreError(422, f"phone: {raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise StoreError(422, f"phone: {raw!r} is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class StoreServer:
    def __init__(self, config: StoreConfig, sessions: sessionmaker[Session] | None = None) -> None:
        self.config = config
        self.store = config.store.id
        self.root = config.mqtt.root
        self.sessions = sessions or open_database(config.store.database_url)
        self.keys_dir = config.keys.dir
        self.signer = load_store_signer(self.keys_dir)
        self._till_keys: dict[str, tuple[float, dict[str, Ed25519PublicKey]]] = {}  # till -> (mtime, keys)
        self._keys_scanned = float("-inf")
        self._roster: dict[str, TillKey] = {}
        self.refused: list[str] = []  # reasons of refused messages (what the log says), newest last
        self.tills: dict[str, TillState] = {}
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._lock = threading.Lock()
        self._enroll_waiters: dict[str, _Waiter] = {}
        self._erase_waiters: dict[str, tuple[threading.Condition, set[str]]] = {}
        # Members the store gallery holds that this database may not know (imported at a till with a
        # consent reference): member id -> (origin till, consent reference), from the signed,
        # retained member states. An erase reaches them too.
        self.gallery_members: dict[str, tuple[str, str | None]] = {}
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.display_latency_ms: list[float] = []
        # Called (on the MQTT worker thread) with (till, kind, payload) after each accepted event, health
        # report and status ("match", "visitor", "left", "health", "status", ...): the cashier page's feed.
        self.watchers: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="tillface-store-worker", daemon=True)

    # ------------------------------------------------------------------ MQTT

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"tillface-store-{self.store}",
            protocol=mqtt.MQTTv5,
        )
        if m.username:
            client.username_pw_set(m.username, os.environ.get(m.password_env))
        if m.tls:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *_a: self.connected.clear()
        client.on_message = self._on_message
        client.on_socket_open = _no_delay
        return client

    def start(self, wait_s: float = 10.0) -> None:
        m = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S  # a persistent session: events wait for us
        self._client.connect_async(m.host, m.port, m.keepalive_s, clean_start=False, properties=props)
        self._client.loop_start()
        self._worker.start()
        if wait_s and not self.connected.wait(wait_s):
            log.warning("store server: broker %s:%d not reachable yet; retrying", m.host, m.port)

    def stop(self) -> None:
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the store server: %s", reason)
            return
        base = f"{self.root}/{self.store}/+"
        client.subscribe(
            [
                (f"{base}/event/#", 1),
                (f"{base}/health", 1),
                (f"{base}/status", 1),
                # Which members the store gallery holds (some imported at a till): an erase reaches them.
                (member_topic(self.root, self.store, "+"), 1),
            ]
        )
        self.publish_roster(force=True)
        self.connected.set()
        log.info("store server %s subscribed on %s", self.store, base)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((message.topic, bytes(message.payload), bool(message.retain)))

    def _publish(
        self, topic: str, payload: dict[str, Any] | bytes, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        return self._client.publish(topic, body, qos=1, retain=retain)

    def _cmd_topic(self, till: str, name: str) -> str:
        return f"{self.root}/{self.store}/{till}/cmd/{name}"

    def _envelope(self, till: str | None) -> dict[str, Any]:
        out = {"event_id": str(uuid.uuid4()), "ts": utc_now(), "store": self.store}
        return out if till is None else {**out, "till": till}

    def send_command(self, till: str, name: str, command: Command | dict[str, Any]) -> mqtt.MQTTMessageInfo:
        """Publish a command to a till, signed by the store (envelope: event_id, ts, store, till)."""
        body = command if isinstance(command, dict) else command.model_dump(by_alias=True, exclude_none=True)
        topic = self._cmd_topic(till, name)
        return self._publish(topic, self.signer.sign(topic, {**body, **self._envelope(till)}))

    # ------------------------------------------------------------------ keys

    def _scan_till_keys(self, force: bool = False) -> None:
        """(Re)read `<keys dir>/tills/*.pub` (a provisioned, rotated or revoked till), at most every
        KEYS_RESCAN_S unless forced."""
        if not force and time.monotonic() - self._keys_scanned < KEYS_RESCAN_S:
            return
        self._keys_scanned = time.monotonic()
        folder = self.keys_dir / layout.TILLS_DIR
        found: dict[str, tuple[float, dict[str, Ed25519PublicKey]]] = {}
        for path in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
            till = path.stem
            mtime = path.stat().st_mtime
            cached = self._till_keys.get(till)
            if cached is not None and cached[0] == mtime:
                found[till] = cached
                continue
            try:
                public = signing.load_public_key(path)
            except signing.KeyFileError as exc:
                log.error("till %s: %s; its messages are refused until it is provisioned again", till, exc)
                continue
            found[till] = (mtime, {signing.key_id(public): public})
        self._till_keys = found

    def till_keys(self, till: str) -> dict[str, Ed25519PublicKey]:
        entry = self._till_keys.get(till)
        if entry is None:
            self._scan_till_keys()
            entry = self._till_keys.get(till)
        return entry[1] if entry else {}

    def publish_roster(self, force: bool = False) -> None:
        """The store-signed, retained list of till keys on `<root>/<store>/gallery/tills`: how a till
        knows which other till may publish a member's templates. Republished when it changes."""
        self._scan_till_keys(force=True)
        roster = {
            till: TillKey(key_id=kid, public_key=signing.public_raw_b64(key))
            for till, (_mtime, keys) in sorted(self._till_keys.items())
            for kid, key in keys.items()
        }
        if roster == self._roster and not force:
            return
        self._roster = roster
        topic = roster_topic(self.root, self.store)
        body = Roster(
            **self._envelope(None),
            tills=roster,
        ).model_dump(by_alias=True, exclude_none=True)
        self._publish(topic, self.signer.sign(topic, body), retain=True)
        log.info("till roster published: %d tills (%s)", len(roster), ", ".join(roster) or "none")

    def _refuse(self, topic: str, reason: str) -> None:
        log.warning("message on %s refused: %s", topic, reason)
        self.refused.append(f"{topic}: {reason}")
        del self.refused[:-200]

    # ------------------------------------------------------------------ incoming

    def _work(self) -> None:
        next_prune = next_roster = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                self.prune_seen()
            if self.connected.is_set() and time.monotonic() >= next_roster:
                next_roster = time.monotonic() + ROSTER_CHECK_S
                self.publish_roster()  # a till provisioned, rotated or revoked meanwhile
            try:
                topic, payload, _retain = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(topic, payload)
            except Exception:  # one bad message must never stop the server
                log.exception("store server: message on %s failed", topic)

    def prune_seen(self) -> int:
        """Forget event ids older than SEEN_RETENTION_S. A till's outbox may resend older ones after a long
        outage; those are still harmless, as visits are keyed by (till, visit_id) and answers by request."""
        cutoff = now() - timedelta(seconds=SEEN_RETENTION_S)
        with self.sessions() as session:
            result = session.execute(delete(SeenEvent).where(SeenEvent.received_at < cutoff))
            session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    def handle(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != self.root or parts[1] != self.store:
            return
        till = parts[2]
        if till == "gallery":
            if len(parts) == 5 and parts[3] == "members":
                self._member_state(topic, parts[4], payload)
            return
        if parts[3] == "status":
            self._status(topic, till, payload)
            return
        kind = "health" if parts[3] == "health" else parts[-1] if parts[3] == "event" else ""
        model = EVENT_MODELS.get(kind)
        if model is None:
            return
        try:
            data = json.loads(payload)
            event = model.model_validate(data)
        except ValidationError as exc:
            log.error("event on %s ignored: %s", topic, describe_validation(exc))
            return
        except (ValueError, RecursionError) as exc:
            log.error("event on %s ignored: not JSON (%s)", topic, exc)
            return
        try:
            self._authenticate(topic, till, data)
        except SignatureError as exc:
            self._refuse(topic, exc.reason)
            return
        state = self.tills.setdefault(till, TillState())
        if isinstance(event, HealthEvent):
            state.health = event.model_dump(by_alias=True)
            self._tell(till, "health", state.health)
            return
        after: list[Any] = []
        with self.sessions() as session:
            session.add(SeenEvent(event_id=event.event_id, till=till, kind=kind))
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                log.debug("duplicate event %s on %s dropped", event.event_id, topic)
                return
            self._record(session, event, after)
            session.commit()
        for action in after:
            action()
        self._tell(till, kind, event.model_dump(by_alias=True))

    def _tell(self, till: str, kind: str, payload: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(till, kind, payload)
            except Exception:  # a watcher's fault must not stop the store's own work
                log.exception("store server: watcher of %s failed", till)

    def _authenticate(self, topic: str, till: str, data: dict[str, Any]) -> None:
        """Signed by this till's registered key, addressed to this store and till, and fresh (the
        event_id de-duplication is the database's SeenEvent)."""
        verify(topic, data, self.till_keys(till), f"till {till} (<keys dir>/tills/{till}.pub)")
        check_addressed(data, self.store, till)
        signing.check_fresh(data, SIGNATURE_SKEW_S, SEEN_RETENTION_S)

    def _member_state(self, topic: str, member_id: str, payload: bytes) -> None:
        """Note which members the store gallery holds: templates signed by their origin till, or the
        store's own tombstone (anything else is refused, as the tills refuse it)."""
        if not payload:
            return  # a cleared retained message
        try:
            data = json.loads(payload)
            state = MemberState.model_validate(data)
            if state.member_id != member_id or state.store != self.store:
                raise SignatureError("misaddressed: the state names another member or store")
            if state.erased:
                verify(topic, data, {self.signer.key_id: self.signer.public_key}, "the store server")
            else:
                verify(topic, data, self.till_keys(state.origin), f"till {state.origin}")
        except (ValueError, ValidationError) as exc:
            reason = f"member state on {topic} ignored: {exc}"
            log.warning("%s", reason)
            self.refused.append(reason)
            return
        with self._lock:
            if state.erased:
                self.gallery_members.pop(member_id, None)
            else:
                self.gallery_members[member_id] = (state.origin, state.consent_ref)

    def _status(self, topic: str, till: str, payload: bytes) -> None:
        """Only a till's signed status counts. `online` must be newer than the last one accepted; an
        `offline` (the last will, signed when its connection was made) only for the session of the
        newest `online`, so neither a forged nor a replayed status stalls erasures or blocks enrolment."""
        try:
            data = json.loads(payload)
            status = StatusMessage.model_validate(data)
        except (ValueError, RecursionError, ValidationError):
            self._refuse(topic, f"status {payload[:40]!r} is not a signed status message")
            return
        try:
            verify(topic, data, self.till_keys(till), f"till {till} (<keys dir>/tills/{till}.pub)")
            check_addressed(data, self.store, till)
            sent = signing.parse_ts(status.ts)
        except SignatureError as exc:
            self._refuse(topic, exc.reason)
            return
        state = self.tills.setdefault(till, TillState())
        if status.state == "online":
            if sent <= state.status_ts:
                self._refuse(topic, f"replayed: online of {status.ts} is not newer than the last status")
                return
            state.session, state.status_ts = status.session, sent
        elif state.session not in (None, status.session):
            self._refuse(topic, f"replayed: offline of session {status.session}, not the current one")
            return
        state.status = status.state
        self._tell(till, "status", {"state": status.state})

    def _record(self, session: Session, event: Envelope, after: list[Any]) -> None:
        if isinstance(event, MatchEvent):
            received = time.monotonic()
            visit = self._visit(session, event.till, event.visit_id, event.ts, "match")
            visit.kind, visit.member_id = "match", event.member_id
            session.flush()
            display = self._display(session, event)
            if display is not None:  # sent once the visit is committed: a receipt for it can follow at once

                def show() -> None:
                    self.send_command(event.till, "display", display)
                    self.display_latency_ms.append((time.monotonic() - received) * 1000)

                after.append(show)
        elif isinstance(event, VisitorEvent):
            visit = self._visit(session, event.till, event.visit_id, event.ts, "visitor")
            visit.visitor_code = event.visitor_code
            visit.enroll_until = parse_ts(event.enroll_until)
        elif isinstance(event, LeftEvent):
            left = session.scalars(
                select(Visit).where(Visit.till == event.till, Visit.visit_id == event.visit_id)
            ).first()
            if left is not None:
                left.left_after_s = event.duration_s
        elif isinstance(event, EnrolledEvent):
            member = session.get(Member, event.member_id)
            if member is None:
                # Enrolled after the store gave up waiting (and forgot the request): undo it everywhere.
                log.warning("till %s enrolled unknown member %s: erasing it", event.till, event.member_id)
                after.append(lambda: self._publish_tombstone(event.member_id))
            else:
                member.enrolled_till, member.template_id = event.till, event.template_id
                session.execute(
                    update(Visit)
                    .where(Visit.till == event.till, Visit.visit_id == event.visit_id)
                    .values(member_id=event.member_id)
                )
            after.append(lambda: self._answer(event.request_id, event))
        elif isinstance(event, ErrorEvent):
            log.warning("till %s refused %s: %s", event.till, event.topic, event.reason)
            if event.request_id:
                after.append(lambda: self._answer(event.request_id or "", event))
        elif isinstance(event, ErasedEvent):
            after.append(lambda: self._erased(event))

    def _visit(self, session: Session, till: str, visit_id: str, ts: str, kind: str) -> Visit:
        visit = session.scalars(select(Visit).where(Visit.till == till, Visit.visit_id == visit_id)).first()
        if visit is None:
            visit = Visit(till=till, visit_id=visit_id, started_at=parse_ts(ts), kind=kind)
            session.add(visit)
        return visit

    def _display(self, session: Session, event: MatchEvent) -> dict[str, Any] | None:
        member = session.get(Member, event.member_id)
        if member is None:
            log.warning("match at %s for member %s unknown to the store", event.till, event.member_id)
            return None
        command = DisplayCommand(
            request_id=str(uuid.uuid4()),
            visit_id=event.visit_id,
            member_id=member.id,
            name=member.name,
            points=member.points,
            last_purchase=last_purchase(session, member.id),
            suggestions=suggestions(session, member.id),
        )
        return command.model_dump(by_alias=True, exclude_none=True)

    def _answer(self, request_id: str, event: Envelope) -> None:
        with self._lock:
            waiter = self._enroll_waiters.get(request_id)
        if waiter is not None:
            waiter.result = event
            waiter.done.set()

    def _erased(self, event: ErasedEvent) -> None:
        with self._lock:
            entry = self._erase_waiters.get(event.member_id)
        if entry is not None:
            cond, acked = entry
            with cond:
                acked.add(event.till)
                cond.notify_all()

    # ------------------------------------------------------------------ requests (HTTP)

    def visitors(self) -> list[dict[str, Any]]:
        """Visitor codes still open for enrolment (not expired, not enrolled), newest first."""
        since = now() - timedelta(seconds=self.config.store.visitors_window_s)
        with self.sessions() as session:
            visits = session.scalars(
                select(Visit)
                .where(Visit.kind == "visitor", Visit.member_id.is_(None), Visit.started_at >= since)
                .order_by(Visit.started_at.desc())
            ).all()
        moment = now()
        return [
            {
                "till": v.till,
                "visit_id": v.visit_id,
                "visitor_code": v.visitor_code,
                "seen_at": aware(v.started_at),
                "enroll_until": aware(v.enroll_until),
            }
            for v in visits
            if v.enroll_until is not None and aware(v.enroll_until) > moment
        ]

    def enroll(
        self, phone: str, name: str, visitor_code: str, till: str, text_version: str, channel: str
    ) -> dict[str, Any]:
        """Record consent, send `cmd/enroll` to the till, wait for `event/enrolled` (or its error)."""
        e164 = normalise_phone(phone, self.config.store.phone_region)
        with self.sessions() as session:
            visit = session.scalars(
                select(Visit)
                .where(Visit.till == till, Visit.visitor_code == visitor_code, Visit.kind == "visitor")
                .order_by(Visit.started_at.desc())
            ).first()
            if visit is None:
                raise StoreError(404, f"visitor_code: {visitor_code} has not been seen at till {till}")
            if visit.member_id is not None:
                raise StoreError(409, f"visitor_code: {visitor_code} is already enrolled")
            if visit.enroll_until is None or aware(visit.enroll_until) <= now():
                raise StoreError(410, f"visitor_code: {visitor_code} expired; the customer must visit again")
            if self.tills.get(till, TillState()).status == "offline":
                # The visit's embeddings lived in the till's memory only: they went with it.
                raise StoreError(409, f"till: {till} is offline; the customer must visit again")
            if session.scalars(select(Member).where(Member.phone == e164)).first() is not None:
                raise StoreError(409, f"phone: {e164} already belongs to a member")
            member = Member(id=f"m-{uuid.uuid4().hex[:16]}", phone=e164, name=name, points=0)
            consent = Consent(
                text_version=text_version, channel=channel, till=till, visitor_code=visitor_code
            )
            member.consents.append(consent)
            session.add(member)
            try:
                session.commit()
            except IntegrityError:  # the same phone enrolled by another request just now
                raise StoreError(409, f"phone: {e164} already belongs to a member") from None
            member_id, consent_ref = member.id, f"consent-{consent.id}-v{text_version}"[:200]
        request_id = str(uuid.uuid4())
        waiter = _Waiter()
        with self._lock:
            self._enroll_waiters[request_id] = waiter
        try:
            command = EnrollCommand(
                request_id=request_id, visitor_code=visitor_code, member_id=member_id, consent_ref=consent_ref
            )
            self.send_command(till, "enroll", command)
            answered = waiter.done.wait(self.config.store.enroll_timeout_s)
        finally:
            with self._lock:
                self._enroll_waiters.pop(request_id, None)
        if not answered or not isinstance(waiter.result, EnrolledEvent):
            self._forget(member_id)
            if isinstance(waiter.result, ErrorEvent):
                raise StoreError(409, {"till": till, "reason": waiter.result.reason})
            raise StoreError(504, f"till {till} did not answer the enrolment in time; try again")
        return self.member(member_id)

    def _forget(self, member_id: str) -> None:
        with self.sessions() as session:
            member = session.get(Member, member_id)
            if member is not None:
                session.delete(member)
                session.commit()

    def member(self, member_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            member = session.get(Member, member_id)
            if member is None:
                raise StoreError(404, f"member {member_id} not found")
            return {
                "id": member.id,
                "name": member.name,
                "phone": member.phone,
                "points": member.points,
                "created_at": aware(member.created_at),
                "enrolled_till": member.enrolled_till,
                "consents": [
                    {
                        "text_version": c.text_version,
                        "channel": c.channel,
                        "given_at": aware(c.given_at),
                        "till": c.till,
                    }
                    for c in member.consents
                ],
                "last_purchase": last_purchase(session, member.id),
                "suggestions": suggestions(session, member.id),
            }

    def add_receipt(
        self,
        items: list[tuple[str, str, int, int]],
        total_cents: int,
        visit_id: str | None = None,
        till: str | None = None,
        member_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a receipt bound to a visit (its member, if any) or a member; accrue points."""
        with self.sessions() as session:
            visit = None
            if visit_id is not None:
                query = select(Visit).where(Visit.visit_id == visit_id)
                if till is not None:
                    query = query.where(Visit.till == till)
                visits = session.scalars(query).all()
                if not visits:
                    raise StoreError(404, f"visit_id: {visit_id} is not a known visit")
                if len(visits) > 1:
                    raise StoreError(409, f"visit_id: {visit_id} is known at several tills; name the till")
                visit = visits[0]
                if member_id is not None and visit.member_id not in (None, member_id):
                    raise StoreError(409, f"visit {visit_id} belongs to another member")
                member_id = member_id or visit.member_id
            member = None
            if member_id is not None:
                member = session.get(Member, member_id, with_for_update=True)
                if member is None:
                    raise StoreError(404, f"member_id: {member_id} is not a member")
            points = math.floor(total_cents / 100 * self.config.store.points_per_unit) if member else 0
            limit = self.config.store.max_points_per_receipt
            if points > limit:
                detail = (
                    f"total: {points} points is over store.max_points_per_receipt ({limit}); nothing recorded"
                )
                raise StoreError(422, detail)
            receipt = Receipt(
                visit_pk=visit.id if visit else None,
                member_id=member.id if member else None,
                total_cents=total_cents,
                points=points,
            )
            receipt.items = [
                ReceiptItem(sku=sku, name=name, qty=qty, price_cents=price) for sku, name, qty, price in items
            ]
            session.add(receipt)
            if member is not None:
                member.points += points
            session.commit()
            return {
                "receipt_id": receipt.id,
                "member_id": receipt.member_id,
                "visit_id": visit.visit_id if visit else None,
                "points_awarded": points,
                "points_total": member.points if member else None,
            }

    def erase(self, member_id: str) -> dict[str, Any]:
        """Erase a member here and at every till; wait (bounded) for the online tills' `event/erased`."""
        with self.sessions() as session:
            member = session.get(Member, member_id)
            if member is None:
                with self._lock:
                    imported = self.gallery_members.get(member_id)
                if imported is None:
                    raise StoreError(404, f"member {member_id} not found")
                # Imported at a till: not in this database, but in the store gallery.
                origin, consent_ref = imported
                audit.record(
                    session,
                    audit.current_actor(),
                    audit.ERASE,
                    member_id=member_id,
                    detail=f"imported at till {origin}, consent {consent_ref or 'unknown'}",
                )
                session.commit()
                member_in_db = False
            else:
                member_in_db = True
        if member_in_db:
            self._erase_from_database(member_id)
        return self._erase_everywhere(member_id)

    def _erase_from_database(self, member_id: str) -> None:
        with self.sessions() as session:
            member = session.get(Member, member_id)
            if member is None:
                return
            session.execute(update(Receipt).where(Receipt.member_id == member_id).values(member_id=None))
            session.execute(update(Visit).where(Visit.member_id == member_id).values(member_id=None))
            session.delete(member)  # consents go with it
            session.commit()

    def _erase_everywhere(self, member_id: str) -> dict[str, Any]:
        cond = threading.Condition()
        acked: set[str] = set()
        with self._lock:
            self._erase_waiters[member_id] = (cond, acked)
        try:
            online = {t for t, s in self.tills.items() if s.status == "online"}
            self._publish_tombstone(member_id)
            deadline = time.monotonic() + self.config.store.erase_timeout_s
            with cond:
                while not online <= acked and time.monotonic() < deadline:
                    cond.wait(deadline - time.monotonic())
                done = set(acked)
        finally:
            with self._lock:
                self._erase_waiters.pop(member_id, None)
        known = set(self.tills)
        return {
            "member_id": member_id,
            "erased": True,
            "acknowledged": sorted(done),
            "queued": sorted(known - done),
        }

    def _publish_tombstone(self, member_id: str) -> None:
        state = erase_state(self.store, member_id, int(time.time() * 1000), "store", utc_now())
        topic = member_topic(self.root, self.store, member_id)
        body = self.signer.sign(topic, state.model_dump(by_alias=True, exclude_none=True))
        info = self._publish(topic, body, retain=True)
        if self.connected.is_set():
            info.wait_for_publish(timeout=5)
