"""The MQTT contract v1 (DESIGN §4) as typed payloads; `contract/asyncapi.yaml` documents the same.

Outgoing events are built by the daemon and checked here before they enter the outbox, so a payload
that breaks the contract fails loudly at the source. Incoming commands are validated strictly
(unknown fields refused) and a failure becomes an `event/error` naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = 1

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\s/+#]+$")]
Uuid = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
Timestamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")]
VisitorCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}-[0-9]{2}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# End-to-end signature fields (tillface.security.signing): which key signed, and the signature.
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Sig = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]
KEY_ID_DOC = "which key signed: the first 16 hex digits of SHA-256 over the raw Ed25519 public key"
SIG_DOC = (
    "base64 Ed25519 signature over `tillface-sig/1\\n<topic>\\n` + the payload without `sig` as JSON "
    "(sorted keys, compact separators, UTF-8); required by every receiver"
)


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(Payload):
    schema_: Literal[1] = Field(alias="schema", default=1)
    event_id: Uuid
    ts: Timestamp
    store: Id
    till: Id
    key_id: KeyId | None = Field(default=None, description=KEY_ID_DOC)
    sig: Sig | None = Field(default=None, description=SIG_DOC)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StatusMessage(Envelope):
    """`online` when the unit connects; `offline` when it stops, or its last will when the broker loses
    it. `session` is new for every connection: the will (signed when the connection is made) counts
    only for the session of the newest `online`, so an old `offline` cannot be replayed."""

    state: Literal["online", "offline"]
    session: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class TillKey(Payload):
    key_id: KeyId
    public_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")] = Field(
        description="the till's raw 32-byte Ed25519 public key, base64"
    )


class Roster(Payload):
    """The store-signed list of the store's tills and their public keys (retained on
    `<root>/<store>/gallery/tills`): a till trusts another till's member states through it."""

    schema_: Literal[1] = Field(alias="schema", default=1)
    event_id: Uuid
    ts: Timestamp
    store: Id
    tills: dict[Id, TillKey]
    key_id: KeyId | None = Field(default=None, description=KEY_ID_DOC)
    sig: Sig | None = Field(default=None, description=SIG_DOC)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MatchEvent(Envelope):
    visit_id: Id
    member_id: Id
    score: float = Field(ge=-1, le=1)
    margin: float = Field(ge=0, le=2)
    frames: int = Field(ge=1)
    quality: float = Field(ge=0, le=1)
    gallery_version: int = Field(ge=0)
    model: Id
    upgrade: bool = False
    latency_ms: float | None = Field(default=None, ge=0)


class VisitorEvent(Envelope):
    visit_id: Id
    visitor_code: VisitorCode
    quality: float = Field(ge=0, le=1)
    enroll_until: Timestamp
    score: float | None = Field(default=None, ge=-1, le=1)
    margin: float | None = Field(default=None, ge=0, le=2)
    latency_ms: float | None = Field(default=None, ge=0)


class LeftEvent(Envelope):
    visit_id: Id
    duration_s: float = Field(ge=0)


class EnrolledEvent(Envelope):
    request_id: Id
    member_id: Id
    template_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    templates: int = Field(ge=1)
    gallery_version: int = Field(ge=0)
    visit_id: Id


class ErasedEvent(Envelope):
    """The acknowledgement of an erase: the member is gone from this till's memory and disk."""

    member_id: Id
    gallery_version: int = Field(ge=0)
    found: bool


class ErrorEvent(Envelope):
    topic: str
    request_id: str | None = None
    reason: Text


class HealthEvent(Envelope):
    version: str
    uptime_s: float = Field(ge=0)
    fps: float = Field(ge=0)
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    camera: str
    display: str
    link: str
    gallery_version: int = Field(ge=0)
    gallery_members: int = Field(ge=0)
    gallery_templates: int = Field(ge=0)
    models: list[str]
    outbox_depth: int = Field(ge=0)
    gallery_confirmed: bool | None = Field(
        default=None,
        description="the gallery is known current with the store's (caught up on a live connection); "
        "false: matches are withheld, since a member erased meanwhile may still be in it",
    )
    matches_withheld: int | None = Field(
        default=None,
        ge=0,
        description="visits whose match was withheld because the gallery was not confirmed",
    )
    cpu_temp_c: float | None = None
    # What the models run on: vision.runtime.runtime_health.
    runtime: Text | None = Field(
        default=None, description='TFLite runtime and version, e.g. "ai-edge-litert 2.3.0"'
    )
    xnnpack: bool | None = Field(
        default=None,
        description="every model runs on the XNNPACK delegate; false: slower, and embeddings differ from "
        "the ones the thresholds were set with (see `tillface doctor`)",
    )
    cpu_features: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] | None = Field(
        default=None, max_length=64, description='SIMD features of the CPU, e.g. ["ASIMD", "ASIMDDP"]'
    )


EVENT_MODELS: dict[str, type[Envelope]] = {
    "match": MatchEvent,
    "visitor": VisitorEvent,
    "left": LeftEvent,
    "enrolled": EnrolledEvent,
    "erased": ErasedEvent,
    "error": ErrorEvent,
    "health": HealthEvent,
}


# ------------------------------------------------------------------ commands (subscribed)


class Command(Payload):
    schema_: Literal[1] = Field(alias="schema", default=1)
    request_id: Id
    # The store's signature envelope: required by the unit (refused without), checked after the fields.
    event_id: Uuid | None = None
    ts: Timestamp | None = None
    store: Id | None = None
    till: Id | None = None
    key_id: KeyId | None = Field(default=None, description=KEY_ID_DOC)
    sig: Sig | None = Field(default=None, description=SIG_DOC)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DisplayCommand(Command):
    """What the store CRM wants on the customer display for a visit (or a free message)."""

    visit_id: Id | None = None
    member_id: Id | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None
    points: int | None = Field(default=None, ge=0)
    last_purchase: Annotated[str, StringConstraints(max_length=80)] | None = None
    suggestions: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] = Field(
        default_factory=list, max_length=3
    )
    message: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    ttl_s: float | None = Field(default=None, gt=0, le=3600)


class EnrollCommand(Command):
    """Consent given at the till: turn a visitor code's held embeddings into a member's templates."""

    visitor_code: VisitorCode
    member_id: Id
    consent_ref: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ReloadCommand(Command):
    """Re-read the config file (as SIGHUP)."""


COMMAND_MODELS: dict[str, type[Command]] = {
    "display": DisplayCommand,
    "enroll": EnrollCommand,
    "reload": ReloadCommand,
}


class CommandError(ValueError):
    """A command that cannot be carried out; `reason` is for a person, `request_id` when known."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


_REQUEST_ID = re.compile(r'"request_id"\s*:\s*"([^"\\]{1,128})"')


def parse_command(name: str, raw: bytes) -> Command:
    """Validate one command payload; raises CommandError with a reason naming the bad field."""
    return read_command(name, raw)[0]


def read_command(name: str, raw: bytes) -> tuple[Command, dict[str, Any]]:
    """The validated command and the JSON object it came from (what its signature covers)."""
    model = COMMAND_MODELS.get(name)
    if model is None:
        raise CommandError(f"unknown command {name!r}; expected one of {', '.join(COMMAND_MODELS)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"payload is not UTF-8 (byte {exc.start})") from None
    match = _REQUEST_ID.search(text)
    request_id = match.group(1) if match else None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"payload is not JSON: {exc.msg} at character {exc.pos}", request_id) from None
    except RecursionError:
        raise CommandError("payload is nested too deeply", request_id) from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, got {type(data).__name__}", request_id)
    if isinstance(data.get("request_id"), str):
        request_id = data["request_id"][:128]
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        raise CommandError(describe_validation(exc), request_id) from None


def describe_validation(exc: ValidationError) -> str:
    """'field: problem; field: problem' - what a person needs to fix the payload."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        problem = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {problem}")
    return "; ".join(parts)


def check_event(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The wire payload of an event record (without the `event` key), validated against the contract."""
    payload = {k: v for k, v in record.items() if k != "event"}
    EVENT_MODELS[kind].model_validate(payload)
    return payload
