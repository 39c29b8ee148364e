"""The MQTT link to the store (DESIGN §4): paho-mqtt 2.x, outbox-first publishing, commands, sync.

Threads (none of them is the frame loop, which only ever calls `publish_event`):
- paho's network thread: connects, reconnects with back-off, and hands everything it receives to
  the two threads below through queues; it never blocks on disk or on the daemon;
- the publisher: sends outbox rows in order, at most WINDOW unacknowledged, and deletes a row when
  its PUBACK arrives. After every (re)connect it starts again from the oldest unacknowledged row, so
  a message lost with a connection is sent again (same `event_id`: receivers de-duplicate);
- the worker: validates and carries out commands, applies gallery states, publishes health.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from ..config import Config, ConfigError
from ..events import utc_now
from ..recognition.enrolment import EnrolmentCache, EnrolmentError
from ..recognition.gallery import GalleryStore, key_id
from ..security import signing
from ..security.signing import (
    KeyFileError,
    ReplayGuard,
    SignatureError,
    Signer,
    check_addressed,
    verify,
)
from .gallery_sync import MemberState, SyncError, apply_state, member_topic, roster_topic, state_of
from .outbox import Outbox
from .schemas import (
    Command,
    CommandError,
    DisplayCommand,
    EnrollCommand,
    ReloadCommand,
    Roster,
    StatusMessage,
    check_event,
    describe_validation,
    read_command,
)

log = logging.getLogger("tillface.link")
audit_log = logging.getLogger("tillface.audit")

UNVERIFIED_MAX = 10_000  # member states held until the roster names their till
WINDOW = 500  # unacknowledged outbox rows in flight
INBOX_SIZE = 1000  # received messages waiting for the worker; beyond it commands are refused
SESSION_EXPIRY_S = 3600  # the broker keeps our commands this long while we are away


class Services(Protocol):
    """What the link needs from the daemon."""

    def show_crm(self, command: DisplayCommand) -> None: ...
    def request_reload(self) -> None: ...
    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Topics:
    root: str
    store: str
    till: str

    @property
    def unit(self) -> str:
        return f"{self.root}/{self.store}/{self.till}"

    def event(self, kind: str) -> str:
        return f"{self.unit}/event/{kind}"

    @property
    def status(self) -> str:
        return f"{self.unit}/status"

    @property
    def health(self) -> str:
        return f"{self.unit}/health"

    @property
    def commands(self) -> str:
        return f"{self.unit}/cmd/+"

    @property
    def sync_marker(self) -> str:
        return f"{self.unit}/sync"

    @property
    def gallery(self) -> str:
        return f"{self.root}/{self.store}/gallery/members/+"

    @property
    def roster(self) -> str:
        return roster_topic(self.root, self.store)

    def member(self, member_id: str) -> str:
        return member_topic(self.root, self.store, member_id)


def read_password(config: Config) -> str | None:
    """The broker password from the systemd credential, else the environment; never from the config."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / config.mqtt.password_credential
        if path.is_file():
            return path.read_text(encoding="utf-8").rstrip("\r\n")
    return os.environ.get(config.mqtt.password_env)


def build_client(config: Config, client_id: str) -> mqtt.Client:
    """A paho client with the configured protocol, credentials and TLS (no callbacks)."""
    m = config.mqtt
    v5 = m.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else False,
    )
    if m.username:
        client.username_pw_set(m.username, read_password(config))
    if m.tls:
        client.tls_set(
            ca_certs=str(m.ca_file) if m.ca_file else None,
            certfile=str(m.cert_file) if m.cert_file else None,
            keyfile=str(m.key_file) if m.key_file else None,
        )
    return client


def probe_broker(config: Config, timeout_s: float = 5.0) -> str:
    """Connect once as the unit would (own client id, so a running daemon is not kicked off) and
    disconnect; raise RuntimeError naming the config key to look at."""
    m = config.mqtt
    where = f"{m.host}:{m.port}"
    try:
        client = build_client(config, f"tillface-{config.unit.store_id}-{config.unit.till_id}-doctor")
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"mqtt.ca_file/cert_file/key_file: cannot load TLS files: {exc}") from None
    answer: list[Any] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer.append(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(m.host or "", m.port, keepalive=10)
    except ConnectionRefusedError:
        raise RuntimeError(f"mqtt.host/mqtt.port: nothing accepts connections at {where}") from None
    except ssl.SSLError as exc:
        raise RuntimeError(f"mqtt.tls/mqtt.ca_file: TLS with {where} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise RuntimeError(f"mqtt.host: cannot reach {where}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise RuntimeError(f"mqtt.host/mqtt.port: {where} did not answer within {timeout_s:g} s")
        reason = answer[0]
        if reason.is_failure:
            raise RuntimeError(f"mqtt.username/password: {where} refused the unit: {reason}")
    finally:
        client.disconnect()
        client.loop_stop()
    tls = "TLS" if m.tls else "no TLS"
    user = f"user {m.username}" if m.username else "anonymous"
    return f"broker {where} accepts the unit ({tls}, {user}, MQTT {m.protocol})"


def load_link_keys(config: Config, config_path: Path | str | None = None) -> tuple[Signer, Ed25519PublicKey]:
    """This till's signing key and the store server's public key (credential first, then the file);
    a missing or unusable one is a ConfigError naming the key and how to get it."""
    m = config.mqtt
    where = config_path or "config"
    fix = "the till's credentials bundle from `tillface store-admin provision-till` has it"
    try:
        private = signing.load_private_credential(m.signing_key_credential, m.signing_key_file)
    except KeyFileError as exc:
        raise ConfigError(
            f"{where}: mqtt.signing_key_file: {exc} (credential {m.signing_key_credential!r} not found "
            f"either); {fix}"
        ) from None
    try:
        store = signing.load_public_credential(m.store_public_key_credential, m.store_public_key_file)
    except KeyFileError as exc:
        raise ConfigError(
            f"{where}: mqtt.store_public_key_file: {exc} (credential {m.store_public_key_credential!r} "
            f"not found either); {fix}"
        ) from None
    return Signer(private), store


@dataclass
class LinkStats:
    """What the link state (health, doctor) is made of."""

    connects: int = 0
    refused: str | None = None  # the broker's reason while it refuses us


class Link:
    def __init__(
        self,
        config: Config,
        gallery: GalleryStore,
        enrolments: EnrolmentCache,
        services: Services,
        wire_key: bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        m = config.mqtt
        if m.host is None:
            raise ValueError("mqtt.host is not set")
        self.config = config
        self.topics = Topics(m.root, config.unit.store_id, config.unit.till_id)
        self.gallery = gallery
        self.enrolments = enrolments
        self.services = services
        self._key = wire_key
        self._clock = clock
        self._signer, store_key = load_link_keys(config)
        self._store_keys: dict[str, Ed25519PublicKey] = {signing.key_id(store_key): store_key}
        # Whose member states this till accepts: its own, and those the store-signed roster names.
        self._own_keys = {self._signer.key_id: self._signer.public_key}
        self._till_keys: dict[str, dict[str, Ed25519PublicKey]] = {self.topics.till: dict(self._own_keys)}
        self._roster_ts = float("-inf")
        self._unverified: dict[str, tuple[str, bytes]] = {}  # member -> (topic, payload) awaiting the roster
        self._replays = ReplayGuard(m.signature_window_s)
        self._session = uuid.uuid4().hex
        self.outbox = Outbox(m.outbox_file, m.outbox_max_rows)
        self.stats = LinkStats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pub_events: queue.SimpleQueue[tuple[str, int, bool]] = queue.SimpleQueue()
        self._inbox: queue.Queue[tuple[str, str, bytes]] = queue.Queue(maxsize=INBOX_SIZE)
        self._busy_topics: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._synced = threading.Event()
        self._lost_sync_at: float | None = None  # when the gallery stopped being confirmed current
        self._hold_until = clock() + m.sync_timeout_s
        self._marker = ""
        self._broker_state: dict[str, int] = {}  # member -> newest revision seen on the broker
        # Members whose copy on the broker is encrypted with another store key (a rotated one): this
        # till republishes them under its own after catching up, so the store converges on the new key.
        self._other_key: set[str] = set()
        self._next_health = clock()
        self._client = self._make_client()
        self._threads = [
            threading.Thread(target=self._publisher, name="tillface-publisher", daemon=True),
            threading.Thread(target=self._worker, name="tillface-link-worker", daemon=True),
        ]

    # ------------------------------------------------------------------ set-up

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = build_client(self.config, f"tillface-{self.topics.store}-{self.topics.till}")
        paho_log = logging.getLogger("tillface.link.paho")
        # paho 2.2's loop thread may still run once after our own disconnect at shutdown and report
        # "Client is not connected" as an error; while stopping that is expected, not a fault.
        paho_log.addFilter(
            lambda record: not (self._stop.is_set() and str(record.msg).startswith("Client is not connected"))
        )
        client.enable_logger(paho_log)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(int(max(1, m.reconnect_backoff_s[0])), int(m.reconnect_backoff_s[1]))
        self._arm_will(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _status(self, state: str) -> bytes:
        body = {**self._envelope(), "state": state, "session": self._session}
        StatusMessage.model_validate(body)
        return _json(self._signer.sign(self.topics.status, body))

    def _arm_will(self, client: mqtt.Client) -> None:
        """A new session for the next connection and its last will, signed now: the store accepts this
        `offline` only while that connection's `online` is the newest it has (no replays of old wills)."""
        self._session = uuid.uuid4().hex
        client.will_set(self.topics.status, self._status("offline"), qos=1, retain=True)

    def start(self) -> None:
        m = self.config.mqtt
        assert m.host is not None
        props = None
        if m.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        clean_start: Any = False if m.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self._client.connect_async(m.host, m.port, m.keepalive_s, clean_start=clean_start, properties=props)
        self._client.loop_start()
        for t in self._threads:
            t.start()
        log.info(
            "MQTT link to %s:%d as %s (TLS %s)", m.host, m.port, self.topics.unit, "on" if m.tls else "off"
        )

    def stop(self, flush_s: float = 3.0) -> None:
        """Try to deliver what is queued (up to flush_s), say `offline`, and disconnect."""
        deadline = time.monotonic() + flush_s
        while self.outbox.depth() and self._connected.is_set() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=2.0)
        if self._connected.is_set():
            info = self._client.publish(self.topics.status, self._status("offline"), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=1.0)
        self._client.disconnect()
        self._client.loop_stop()
        depth = self.outbox.depth()
        self.outbox.close()
        log.info("MQTT link closed: %d unsent messages kept in %s", depth, self.outbox.path)

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        if self._connected.is_set():
            return "online" if self._synced.is_set() else "syncing"
        if self.stats.refused:
            return f"refused ({self.stats.refused})"
        return "connecting" if not self.stats.connects else "offline"

    def decisions_allowed(self) -> bool:
        """False while a fresh connection is still catching up on the store gallery (bounded wait)."""
        return self._synced.is_set() or self._clock() >= self._hold_until

    def gallery_confirmed(self) -> bool:
        """Whether this till's gallery is known to be current with the store's: caught up on a live
        connection, or lost it at most `[mqtt] unconfirmed_match_s` ago. A member erased while it was not
        may still be here, so the visits publish no match while this is False (issue: erasure wins)."""
        if self._synced.is_set():
            return True
        lost = self._lost_sync_at
        return lost is not None and self._clock() - lost <= self.config.mqtt.unconfirmed_match_s

    def _unsync(self) -> None:
        if self._synced.is_set():
            self._lost_sync_at = self._clock()
        self._synced.clear()

    # ------------------------------------------------------------------ sending

    def publish_event(self, record: dict[str, Any]) -> None:
        """Validate an event record against the contract and put it in the outbox (durable)."""
        kind = record["event"]
        payload = check_event(kind, record)
        topic = self.topics.event(kind)
        self.outbox.put(topic, _json(self._signer.sign(topic, payload)), kind)
        self._wake.set()

    def _envelope(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "event_id": str(uuid.uuid4()),
            "ts": utc_now(),
            "store": self.topics.store,
            "till": self.topics.till,
        }

    def _error(self, topic: str, reason: str, request_id: str | None) -> None:
        # Whatever the sender put in (lone surrogates included) must still make a valid UTF-8 answer.
        reason = _printable(reason)
        request_id = _printable(request_id) if request_id else None
        log.warning("command on %s refused: %s", topic, reason)
        record = {"event": "error", **self._envelope(), "topic": topic, "request_id": request_id}
        record["reason"] = reason[:200]
        self.publish_event(record)

    def _publisher(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> outbox row id
        cursor = 0
        while not self._stop.is_set():
            acked: list[int] = []
            try:
                while True:
                    what, mid, ok = self._pub_events.get_nowait()
                    if what == "ack":
                        row_id = inflight.pop(mid, None)
                        if row_id is not None and ok:
                            acked.append(row_id)
                    elif what == "busy":
                        busy_topic = self._busy_topics.get_nowait()
                        self._error(
                            busy_topic, "the unit is busy (too many queued commands); send it again", None
                        )
                    elif what == "connected":
                        inflight.clear()
                        cursor = 0  # resend everything unacknowledged, oldest first
            except queue.Empty:
                pass
            if acked:
                self.outbox.ack(acked)
            sent = 0
            if self._connected.is_set() and len(inflight) < WINDOW:
                for row in self.outbox.pending(cursor, limit=min(200, WINDOW - len(inflight))):
                    info = self._client.publish(row.topic, row.payload, qos=1, retain=row.retain)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break  # the connection dropped: on_connect restarts from the oldest row
                    inflight[info.mid] = row.id
                    cursor = row.id
                    sent += 1
            if not sent and not acked:
                self._wake.wait(0.2)
                self._wake.clear()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if self.stats.refused != str(reason):
                log.error(
                    "broker %s:%d refused the connection: %s (check mqtt.username, the password "
                    "credential and the broker's ACL)",
                    self.config.mqtt.host,
                    self.config.mqtt.port,
                    reason,
                )
            self.stats.refused = str(reason)
            return
        self.stats.refused = None
        self.stats.connects += 1
        # We resend from the outbox ourselves; paho's copies would only duplicate them.
        client.drop_out_messages()
        self._unsync()
        self._hold_until = self._clock() + self.config.mqtt.sync_timeout_s
        self._marker = uuid.uuid4().hex
        # The roster first: the till keys that vouch for the member states after it.
        client.subscribe(
            [
                (self.topics.roster, 1),
                (self.topics.commands, 1),
                (self.topics.gallery, 1),
                (self.topics.sync_marker, 1),
            ]
        )
        client.publish(self.topics.sync_marker, self._marker.encode(), qos=1)
        client.publish(self.topics.status, self._status("online"), qos=1, retain=True)
        self._pub_events.put(("connected", 0, True))
        self._connected.set()
        self._wake.set()
        log.info("MQTT connected to %s:%d", self.config.mqtt.host, self.config.mqtt.port)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._arm_will(client)  # the next connection gets its own session and will
        was = self._connected.is_set()
        self._connected.clear()
        self._unsync()
        if was and not self._stop.is_set():
            log.warning(
                "MQTT disconnected (%s); reconnecting with back-off, events wait in the outbox", reason
            )

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        ok = not getattr(reason, "is_failure", False)
        if not ok:
            log.error("broker refused a message (mid %d): %s; it stays in the outbox", mid, reason)
        self._pub_events.put(("ack", mid, ok))
        self._wake.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic == self.topics.sync_marker:
            kind = "marker"
        elif topic.startswith(f"{self.topics.unit}/cmd/"):
            kind = "cmd"
        else:
            kind = "gallery"
        try:
            self._inbox.put_nowait((kind, topic, bytes(message.payload)))
        except queue.Full:
            if kind == "cmd":
                # Refused rather than queued without bound; the publisher writes the error (this
                # network thread never touches the disk).
                self._busy_topics.put(topic)
                self._pub_events.put(("busy", 0, False))
            else:
                log.error("inbox full: gallery message on %s dropped; the next reconnect catches up", topic)

    # ------------------------------------------------------------------ the worker

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                kind, topic, payload = self._inbox.get(timeout=0.2)
            except queue.Empty:
                kind = ""
            try:
                if kind == "cmd":
                    self._command(topic, payload)
                elif kind == "gallery":
                    self._gallery_message(topic, payload)
                elif kind == "marker":
                    self._marker_back(payload)
                if self._clock() >= self._next_health:
                    self._next_health = self._clock() + self.config.mqtt.health_interval_s
                    self.publish_health()
            except Exception:  # one bad message must never take the link down
                log.exception("link worker: %s on %s failed", kind or "health", topic if kind else "-")

    def _command(self, topic: str, raw: bytes) -> None:
        name = topic.rsplit("/", 1)[-1]
        try:
            command, data = read_command(name, raw)
            try:
                verify(topic, data, self._store_keys, "the store server")
                check_addressed(data, self.topics.store, self.topics.till)
                self._replays.check(data)
            except SignatureError as exc:
                audit_log.warning("command on %s refused: not authenticated: %s", topic, exc.reason)
                raise CommandError(f"not authenticated: {exc.reason}", command.request_id) from None
            self._carry_out(command)
        except CommandError as exc:
            self._error(topic, exc.reason, exc.request_id)

    def _carry_out(self, command: Command) -> None:
        if isinstance(command, DisplayCommand):
            self.services.show_crm(command)
        elif isinstance(command, ReloadCommand):
            self.services.request_reload()
        elif isinstance(command, EnrollCommand):
            self._enroll(command)

    def _enroll(self, cmd: EnrollCommand) -> None:
        try:
            pending = self.enrolments.take(cmd.visitor_code)
        except EnrolmentError as exc:
            raise CommandError(str(exc), cmd.request_id) from None
        templates = pending.templates()
        try:
            ids = self.gallery.upsert(cmd.member_id, templates, "enroll")
        except (ValueError, OSError) as exc:
            raise CommandError(f"member {cmd.member_id} could not be stored: {exc}", cmd.request_id) from None
        audit_log.info(
            "enrolled member=%s visitor_code=%s consent_ref=%s templates=%d request_id=%s",
            cmd.member_id,
            cmd.visitor_code,
            cmd.consent_ref,
            len(ids),
            cmd.request_id,
        )
        record = {
            "event": "enrolled",
            **self._envelope(),
            "request_id": cmd.request_id,
            "member_id": cmd.member_id,
            "template_id": ids[0],
            "templates": len(ids),
            "gallery_version": self.gallery.version,
            "visit_id": pending.visit_id,
        }
        self.publish_event(record)
        if self._synced.is_set():
            self._publish_member(cmd.member_id)
        # Not caught up or offline: the catch-up after the next connect publishes it.

    def _publish_member(self, member_id: str) -> bool:
        """Publish a member's templates, signed by this till; False for an erased member (a tombstone
        counts only when the store server signed it, so a till never publishes one)."""
        state = state_of(self.gallery, self._key, self.topics.store, member_id, self.topics.till, utc_now())
        if state.erased:
            return False
        topic = self.topics.member(member_id)
        body = self._signer.sign(topic, state.model_dump(by_alias=True, exclude_none=True))
        self._client.publish(topic, _json(body), 1, True)
        return True

    def _gallery_message(self, topic: str, raw: bytes) -> None:
        if not raw:
            return  # a cleared retained message
        if topic == self.topics.roster:
            self._roster(topic, raw)
        else:
            self._member_message(topic, raw)

    def _roster(self, topic: str, raw: bytes) -> None:
        try:
            data = json.loads(raw)
            roster = Roster.model_validate(data)
        except ValidationError as exc:
            log.error("till roster on %s ignored: %s", topic, describe_validation(exc))
            return
        except (ValueError, RecursionError) as exc:
            log.error("till roster on %s ignored: not JSON (%s)", topic, exc)
            return
        try:
            verify(topic, data, self._store_keys, "the store server")
            check_addressed(data, self.topics.store)
            sent = signing.parse_ts(roster.ts)
        except SignatureError as exc:
            audit_log.warning("till roster on %s ignored: %s", topic, exc.reason)
            return
        if sent < self._roster_ts:
            log.warning("till roster on %s ignored: older (%s) than the one in use", topic, roster.ts)
            return
        keys: dict[str, dict[str, Ed25519PublicKey]] = {}
        for till, entry in roster.tills.items():
            public = signing.public_from_raw_b64(entry.public_key)
            if signing.key_id(public) != entry.key_id:
                log.error(
                    "till roster: till %s's key_id %s does not match its key; ignored", till, entry.key_id
                )
                continue
            keys[till] = {entry.key_id: public}
        keys.setdefault(self.topics.till, {}).update(self._own_keys)
        self._roster_ts, self._till_keys = sent, keys
        log.info("till roster from the store server: %d tills (%s)", len(keys), ", ".join(sorted(keys)))
        waiting, self._unverified = self._unverified, {}
        for member_topic_, member_raw in waiting.values():
            self._member_message(member_topic_, member_raw)

    def _member_message(self, topic: str, raw: bytes) -> None:
        member_id = topic.rsplit("/", 1)[-1]
        try:
            data = json.loads(raw)
            state = MemberState.model_validate(data)
        except ValidationError as exc:
            log.error("gallery message on %s ignored: %s", topic, describe_validation(exc))
            return
        except (ValueError, RecursionError) as exc:
            log.error("gallery message on %s ignored: not JSON (%s)", topic, exc)
            return
        if state.erased:
            keys, signer = self._store_keys, "the store server (only the store erases)"
        else:
            keys, signer = self._till_keys.get(state.origin, {}), f"till {state.origin}"
            if not keys and data.get("sig") is not None:
                if len(self._unverified) < UNVERIFIED_MAX:
                    self._unverified[member_id] = (topic, raw)
                log.warning(
                    "gallery message on %s held: till %s is not in the store's till roster (yet)",
                    topic,
                    state.origin,
                )
                return
        try:
            verify(topic, data, keys, signer)
        except SignatureError as exc:
            audit_log.warning("gallery message on %s ignored: %s", topic, exc.reason)
            return
        self._unverified.pop(member_id, None)
        if state.member_id != member_id or state.store != self.topics.store:
            log.error(
                "gallery message on %s ignored: it names member %s of store %s",
                topic,
                state.member_id,
                state.store,
            )
            return
        self._broker_state[member_id] = max(self._broker_state.get(member_id, 0), state.revision)
        mine = key_id(self._key)
        if state.templates is not None and state.templates.key_id not in (None, mine):
            log.warning(
                "gallery message on %s is encrypted with store key %s, this till holds %s (rotated?): "
                "not applied; republished under this till's key if it holds the member",
                topic,
                state.templates.key_id,
                mine,
            )
            self._other_key.add(member_id)
            return
        self._other_key.discard(member_id)
        found = member_id in self.gallery
        try:
            changed = apply_state(self.gallery, self._key, state)
        except (SyncError, ValueError) as exc:
            log.error("gallery message on %s ignored: %s", topic, exc)
            return
        if changed and state.erased:
            record = {
                "event": "erased",
                **self._envelope(),
                "member_id": member_id,
                "gallery_version": self.gallery.version,
                "found": found,
            }
            self.publish_event(record)

    def _marker_back(self, payload: bytes) -> None:
        if payload.decode(errors="replace") != self._marker:
            return
        # Every retained state came before the marker and has been applied: publish what the
        # broker lacks or holds older (enrolments and erasures made while we were away).
        newer = [
            member
            for member, (revision, erased) in self.gallery.sync_state().items()
            if (revision > self._broker_state.get(member, 0) or member in self._other_key) and not erased
        ]
        newer = [member for member in newer if self._publish_member(member)]
        self._synced.set()
        log.info(
            "store gallery caught up: %d members here, %d published to the store",
            len(self.gallery.members()),
            len(newer),
        )

    def publish_health(self) -> None:
        record = {"event": "health", **self._envelope(), **self.services.health()}
        record["link"] = self.state
        record["outbox_depth"] = self.outbox.depth()
        record["gallery_confirmed"] = self.gallery_confirmed()
        payload = check_event("health", record)
        signed = self._signer.sign(self.topics.health, payload)
        self.outbox.put(self.topics.health, _json(signed), "health", retain=True)
        self._wake.set()


def _printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
