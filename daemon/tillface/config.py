"""The daemon's configuration: one TOML file, one frozen pydantic model per section.

Loading only reads and checks the file: it never opens a camera, a serial port or a model. Every key
has a default except `[unit] store_id` and `till_id`; unknown keys are errors (a typo must not
silently fall back to a default). `config/tillface.toml` documents every key.

Relative paths (e.g. `state_dir = ".tillface-state"`) are relative to the daemon's current working
directory, not to the config file's folder. The paths of the state kept by the unit (gallery, key,
debug captures) default to files under `[unit] state_dir`, so changing `state_dir` moves all of it.

Errors raise `ConfigError` with one line: `<file>: <section.key>: <problem>`.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .models import DEFAULT_EMBEDDER

DEFAULT_STATE_DIR = Path("/var/lib/tillface")
CAMERA_SOURCE_KINDS = ("picamera2", "opencv", "replay")
_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
_SECRET_KEY_PARTS = ("password", "passphrase", "secret", "token")


class ConfigError(Exception):
    """An unreadable or invalid config file; the message is one line naming the file and the key.

    `problems` lists every problem found (one line each); the message shows the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _to_tuple(value: Any) -> Any:
    # TOML arrays arrive as lists; the models keep immutable tuples.
    return tuple(value) if isinstance(value, list) else value


def _field_error(key: str, message: str) -> PydanticCustomError:
    """A cross-field error that still names the exact key (see `_format_error`)."""
    return PydanticCustomError("config_value", message, {"key": key})


def _nonempty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


def _check_id(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(_ID_PATTERN, value):
        raise ValueError(
            f"must be 1-32 letters, digits, '_' or '-' (it goes into MQTT topics), got {value!r}"
        )
    return value


# Paths come from TOML strings; strict mode would accept only Path objects.
PathValue = Annotated[Path, Field(strict=False), BeforeValidator(_nonempty_path)]
UnitId = Annotated[str, BeforeValidator(_check_id)]
Roi = Annotated[tuple[float, float, float, float], BeforeValidator(_to_tuple)]
Backoff = Annotated[tuple[float, float], BeforeValidator(_to_tuple)]


class Section(BaseModel):
    """Base of every section: typed strictly (TOML has types), unknown keys rejected, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class UnitConfig(Section):
    store_id: UnitId = Field(description="store id; part of MQTT topics")
    till_id: UnitId = Field(description="till id, unique within the store")
    state_dir: PathValue = Field(
        default=DEFAULT_STATE_DIR, description="folder for all state: gallery, key, outbox, debug captures"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="logging level"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class CameraConfig(Section):
    source: str = Field(
        default="picamera2",
        description="picamera2 | opencv:<device index, path, GStreamer pipeline or RTSP URL> | "
        "replay:<folder of images or a video file>",
    )
    fps: int = Field(default=15, ge=1, le=60, description="frames per second requested from the camera")
    width: int = Field(default=640, ge=64, le=4096, description="frame width in pixels")
    height: int = Field(default=480, ge=64, le=4096, description="frame height in pixels")
    rotation: Literal[0, 90, 180, 270] = Field(
        default=0, description="clockwise rotation applied to each frame, degrees"
    )
    roi: Roi = Field(
        default=(0.0, 0.0, 1.0, 1.0),
        description="region of interest [x0, y0, x1, y1] as fractions of the (rotated) frame",
    )
    reopen_backoff_s: Backoff = Field(
        default=(1.0, 30.0), description="[initial, max] seconds between attempts to reopen a lost camera"
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        kind, sep, rest = value.partition(":")
        if kind == "picamera2" and not sep:
            return value
        if kind in ("opencv", "replay") and sep and rest.strip():
            return value
        if kind in ("opencv", "replay"):
            raise ValueError(f"{kind!r} needs a target after the colon, e.g. '{kind}:0'")
        if kind == "picamera2":
            raise ValueError("'picamera2' takes no argument")
        hint = difflib.get_close_matches(kind, CAMERA_SOURCE_KINDS, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(
            f"unknown source {value!r}: expected 'picamera2', 'opencv:<device>' or "
            f"'replay:<path>'{suggestion}"
        )

    @model_validator(mode="after")
    def _check_pairs(self) -> CameraConfig:
        x0, y0, x1, y1 = self.roi
        if not all(0.0 <= v <= 1.0 for v in self.roi):
            raise _field_error("roi", "every roi value must be a fraction between 0 and 1")
        if not (x0 < x1 and y0 < y1):
            raise _field_error("roi", "roi must have x0 < x1 and y0 < y1")
        initial, maximum = self.reopen_backoff_s
        if not (0.0 < initial <= maximum <= 3600.0):
            raise _field_error("reopen_backoff_s", "needs 0 < initial <= max <= 3600 seconds")
        return self

    @property
    def source_kind(self) -> str:
        """`picamera2`, `opencv` or `replay`."""
        return self.source.partition(":")[0]

    @property
    def source_target(self) -> str:
        """What follows `kind:` (empty for picamera2)."""
        return self.source.partition(":")[2]


class VisionConfig(Section):
    detector: Literal["short", "full"] = Field(
        default="short", description="BlazeFace model: short (faces within ~2 m) or full range"
    )
    embedder: str = Field(
        default=DEFAULT_EMBEDDER,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="embedding model id in the manifest",
    )
    num_threads: int = Field(default=2, ge=1, le=8, description="interpreter threads per model")
    detector_score_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="minimum face detection score"
    )


class QualityConfig(Section):
    min_eye_distance_px: float = Field(
        default=24.0, ge=0.0, le=1000.0, description="minimum distance between the eyes in the frame, pixels"
    )
    max_yaw_deg: float = Field(
        default=35.0, ge=0.0, le=90.0, description="maximum left/right head turn, degrees"
    )
    max_pitch_deg: float = Field(
        default=25.0, ge=0.0, le=90.0, description="maximum up/down head tilt, degrees"
    )
    min_sharpness: float = Field(
        default=20.0,
        ge=0.0,
        description="minimum variance of the Laplacian of the aligned face centre, grey levels²",
    )
    min_brightness: float = Field(
        default=40.0, ge=0.0, le=255.0, description="minimum mean grey level of the face"
    )
    max_brightness: float = Field(
        default=220.0, ge=0.0, le=255.0, description="maximum mean grey level of the face"
    )
    max_clipped: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="maximum fraction of face pixels that are black or saturated",
    )

    @model_validator(mode="after")
    def _check_brightness(self) -> QualityConfig:
        if self.min_brightness >= self.max_brightness:
            raise _field_error("max_brightness", "max_brightness must be greater than min_brightness")
        return self


class RecognitionConfig(Section):
    match_threshold: float = Field(
        default=0.5, ge=-1.0, le=1.0, description="minimum cosine similarity of the best member for a match"
    )
    margin: float = Field(
        default=0.05, ge=0.0, le=1.0, description="minimum cosine gap between best and next member"
    )
    min_frames: int = Field(default=3, ge=1, le=100, description="good frames needed before deciding")
    decision_timeout_ms: int = Field(
        default=1500, ge=100, le=60000, description="decide after this long even with fewer good frames, ms"
    )
    fuse_best_n: int = Field(
        default=5, ge=1, le=100, description="number of best frames fused into the visit's embedding"
    )
    leave_after_ms: int = Field(
        default=4000,
        ge=100,
        le=60000,
        description="close the visit after its person is unseen this long (someone else ends it at once), ms",
    )
    min_presence_ms: int = Field(
        default=300, ge=0, le=5000, description="a face in view for less than this gets no decision, ms"
    )
    recheck_interval_ms: int = Field(
        default=700,
        ge=50,
        le=60000,
        description="after a decision, re-check that the customer is still the same person this often, ms",
    )
    allow_upgrade: bool = Field(default=True, description="allow one later, better decision per visit")
    same_person_threshold: float = Field(
        default=0.4,
        ge=-1.0,
        le=1.0,
        description="cosine to the visit's own embedding above which a face is the same customer",
    )
    other_person_threshold: float = Field(
        default=0.25,
        ge=-1.0,
        le=1.0,
        description="cosine to the visit's own embedding below which a face is someone else",
    )
    enroll_ttl_s: int = Field(
        default=120, ge=10, le=3600, description="seconds a visitor's embeddings stay in RAM for enrolment"
    )

    @model_validator(mode="after")
    def _check_person_thresholds(self) -> RecognitionConfig:
        if self.other_person_threshold > self.same_person_threshold:
            raise _field_error(
                "other_person_threshold", "other_person_threshold must not exceed same_person_threshold"
            )
        return self


class GalleryConfig(Section):
    key_file: PathValue = Field(
        default=DEFAULT_STATE_DIR / "gallery.key",
        description="32-byte AES key file, mode 0600 (default <state_dir>/gallery.key)",
    )
    key_credential: str = Field(
        default="gallery.key",
        pattern=r"^[A-Za-z0-9_.-]{1,255}$",
        description="systemd credential name looked up in $CREDENTIALS_DIRECTORY before key_file",
    )
    file: PathValue = Field(
        default=DEFAULT_STATE_DIR / "gallery.tfg",
        description="encrypted gallery file (default <state_dir>/gallery.tfg)",
    )


# Placeholders each display text may use; the ones listed are also required (see config/tillface.toml).
_DISPLAY_TEXTS: dict[str, tuple[str, ...]] = {
    "idle_text": (),
    "welcome_text": (),
    "welcome_name_text": ("name",),
    "points_text": ("points",),
    "last_purchase_text": ("last_purchase",),
    "visitor_text": ("code",),
}
_DISPLAY_SAMPLES: dict[str, Any] = {"name": "Anna", "points": 1250, "last_purchase": "Tea", "code": "KMT-42"}


def _check_display_text(key: str, value: str) -> str:
    """A display text: no control characters but line breaks, and exactly its own placeholders."""
    import string

    if any(ord(c) < 0x20 and c != "\n" for c in value):
        raise ValueError("control characters other than line breaks (\\n) are not allowed")
    allowed = _DISPLAY_TEXTS[key]
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as exc:
        raise ValueError(f"bad placeholder ({exc}); write {{{{ and }}}} for literal braces") from None
    unknown = sorted(used - set(allowed))
    if unknown:
        names = ", ".join("{" + a + "}" for a in allowed) or "none"
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (allowed here: {names})")
    missing = [a for a in allowed if a not in used]
    if missing:
        raise ValueError(f"needs the placeholder {{{missing[0]}}}")
    try:
        value.format(**_DISPLAY_SAMPLES)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"bad placeholder format ({exc})") from None
    return value


def _text(default: str, description: str) -> Any:
    return Field(default=default, min_length=1, max_length=200, description=description)


class DisplayConfig(Section):
    driver: Literal["none", "escpos", "jsonl"] = Field(
        default="none",
        description="customer display driver: none, escpos (VFD pole display) or jsonl (JSON lines)",
    )
    port: str | None = Field(
        default=None,
        min_length=1,
        description="serial device or pyserial URL: /dev/ttyUSB0, /dev/serial/by-id/..., socket://host:port",
    )
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = Field(
        default=9600, description="serial baud rate"
    )
    bytesize: Literal[7, 8] = Field(default=8, description="data bits per character")
    parity: Literal["none", "even", "odd", "mark", "space"] = Field(default="none", description="parity")
    stopbits: float = Field(default=1.0, description="stop bits: 1, 1.5 or 2")
    rtscts: bool = Field(default=False, description="hardware (RTS/CTS) flow control")
    xonxoff: bool = Field(default=False, description="software (XON/XOFF) flow control")
    write_timeout_s: float = Field(
        default=1.0,
        gt=0.0,
        le=30.0,
        description="a screen the port has not taken within this many seconds counts as a lost display",
    )
    reopen_backoff_s: Backoff = Field(
        default=(1.0, 30.0), description="[initial, max] seconds between attempts to reopen a lost display"
    )
    columns: int = Field(default=20, ge=8, le=80, description="characters per display line")
    rows: int = Field(default=2, ge=1, le=8, description="display lines")
    align: Literal["centre", "left"] = Field(default="centre", description="alignment of each line")
    code_page: str = Field(
        default="cp437",
        description="the display's character table as a Python codec name (cp437, cp866 for Cyrillic, ...)",
    )
    code_page_number: int | None = Field(
        default=None,
        ge=0,
        le=255,
        description="n of ESC t n selecting code_page; unset = Epson's number for code_page",
    )
    transliterate: bool = Field(
        default=True, description="show characters missing from code_page transliterated (Ж → Zh), not as ?"
    )
    idle_text: str = _text("Welcome!", "the store greeting, shown while nobody is at the till")
    welcome_text: str = _text("Welcome back!", "shown on a match until the CRM sends the member's name")
    welcome_name_text: str = _text("Hello, {name}!", "the name line of the welcome screen; {name}")
    points_text: str = _text("Points: {points}", "the points line of the welcome screen; {points}")
    last_purchase_text: str = _text(
        "Last: {last_purchase}", "the last-purchase line (displays with 3+ rows); {last_purchase}"
    )
    visitor_text: str = _text(
        "Your code: {code}\nAsk us to join!", "the visitor screen; {code} is the visitor code"
    )
    welcome_ttl_s: float = Field(
        default=120.0,
        ge=1.0,
        le=3600.0,
        description="back to idle after this many seconds on the welcome or visitor screen with no `left`",
    )
    message_ttl_s: float = Field(
        default=8.0,
        ge=1.0,
        le=3600.0,
        description="seconds a CRM message is shown when its cmd/display gives no ttl_s",
    )

    @field_validator(*_DISPLAY_TEXTS)
    @classmethod
    def _check_texts(cls, value: str, info: ValidationInfo) -> str:
        return _check_display_text(str(info.field_name), value)

    @field_validator("stopbits")
    @classmethod
    def _check_stopbits(cls, value: float) -> float:
        if value not in (1.0, 1.5, 2.0):
            raise ValueError(f"must be 1, 1.5 or 2, got {value:g}")
        return value

    @field_validator("code_page")
    @classmethod
    def _check_code_page(cls, value: str) -> str:
        from .display.codepages import canonical_codec

        return canonical_codec(value)

    @model_validator(mode="after")
    def _check_port(self) -> DisplayConfig:
        from .display.codepages import EPSON_TABLES

        if self.driver != "none" and self.port is None:
            raise _field_error("port", f"driver {self.driver!r} needs a serial port")
        if self.code_page_number is None and self.code_page not in EPSON_TABLES:
            raise _field_error(
                "code_page_number",
                f"no Epson table number is known for {self.code_page!r}: set the display's number",
            )
        initial, maximum = self.reopen_backoff_s
        if not (0.0 < initial <= maximum <= 3600.0):
            raise _field_error("reopen_backoff_s", "needs 0 < initial <= max <= 3600 seconds")
        return self


class MqttConfig(Section):
    host: str | None = Field(
        default=None, min_length=1, description="broker host name or address; unset = no MQTT link"
    )
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (8883 is usual with TLS)")
    root: str = Field(
        default="tillface",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="first topic level: <root>/<store_id>/<till_id>/...",
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    keepalive_s: int = Field(default=30, ge=5, le=600, description="keep-alive interval in seconds")
    username: str | None = Field(default=None, min_length=1, description="broker user name; unset = none")
    password_credential: str = Field(
        default="mqtt.password",
        min_length=1,
        description="systemd credential holding the broker password (tried first)",
    )
    password_env: str = Field(
        default="TILLFACE_MQTT_PASSWORD",
        min_length=1,
        description="environment variable holding the broker password (when no credential)",
    )
    tls: bool = Field(default=False, description="connect with TLS")
    ca_file: PathValue | None = Field(default=None, description="CA certificate (PEM); unset = system CAs")
    cert_file: PathValue | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    key_file: PathValue | None = Field(default=None, description="client private key (PEM) for mutual TLS")
    reconnect_backoff_s: Backoff = Field(
        default=(1.0, 30.0), description="[first, max] seconds between reconnection attempts"
    )
    health_interval_s: float = Field(
        default=60.0, ge=0.1, le=3600, description="seconds between retained health messages"
    )
    outbox_file: PathValue = Field(
        default=DEFAULT_STATE_DIR / "outbox.sqlite",
        description="the on-disk queue of unsent messages (default <state_dir>/outbox.sqlite)",
    )
    outbox_max_rows: int = Field(
        default=100_000, ge=100, le=10_000_000, description="outbox bound; see README for what is dropped"
    )
    sync_timeout_s: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="after a (re)connect, hold decisions at most this long for the store gallery to catch up",
    )
    unconfirmed_match_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="how long after losing the store (offline, or catching up) matches may still be "
        "published; 0 = none until caught up again (an erased member is never recognised)",
    )
    gallery_key_credential: str = Field(
        default="store-gallery.key",
        pattern=r"^[A-Za-z0-9_.-]{1,255}$",
        description="systemd credential holding the store key for templates on the wire (tried first)",
    )
    gallery_key_file: PathValue | None = Field(
        default=None,
        description="store key for templates on the wire when there is no credential; "
        "unset = the gallery key ([gallery] key_file)",
    )
    signing_key_credential: str = Field(
        default="till-signing.key",
        pattern=r"^[A-Za-z0-9_.-]{1,255}$",
        description="systemd credential holding this till's Ed25519 private key (tried first)",
    )
    signing_key_file: PathValue = Field(
        default=DEFAULT_STATE_DIR / "till-signing.key",
        description="this till's Ed25519 private key (PEM, mode 0600) when there is no credential "
        "(default <state_dir>/till-signing.key); it signs the till's events and member states",
    )
    store_public_key_credential: str = Field(
        default="store-signing.pub",
        pattern=r"^[A-Za-z0-9_.-]{1,255}$",
        description="systemd credential holding the store server's Ed25519 public key (tried first)",
    )
    store_public_key_file: PathValue = Field(
        default=DEFAULT_STATE_DIR / "store-signing.pub",
        description="the store server's public key (PEM) when there is no credential (default "
        "<state_dir>/store-signing.pub); commands, tombstones and the till roster must be signed by it",
    )
    signature_window_s: float = Field(
        default=300.0,
        ge=5,
        le=3600,
        description="a signed command whose ts is further than this from the till's clock is refused (stale)",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise _field_error("cert_file", "cert_file and key_file go together")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise _field_error("tls", "ca_file/cert_file are set but tls = false")
        lo, hi = self.reconnect_backoff_s
        if not 0 < lo <= hi:
            raise _field_error("reconnect_backoff_s", "needs 0 < first <= max")
        return self


class DebugConfig(Section):
    capture_frames: bool = Field(
        default=False,
        description="write frames to capture_dir; the only switch that writes frames (warns while on)",
    )
    capture_dir: PathValue = Field(
        default=DEFAULT_STATE_DIR / "captures",
        description="folder for debug frames (default <state_dir>/captures)",
    )


# Keys whose default lives under [unit] state_dir: (section, key) -> file name.
_STATE_DEFAULTS: dict[tuple[str, str], str] = {
    ("gallery", "key_file"): "gallery.key",
    ("gallery", "file"): "gallery.tfg",
    ("debug", "capture_dir"): "captures",
    ("mqtt", "outbox_file"): "outbox.sqlite",
    ("mqtt", "signing_key_file"): "till-signing.key",
    ("mqtt", "store_public_key_file"): "store-signing.pub",
}


class Config(Section):
    unit: UnitConfig
    camera: CameraConfig = CameraConfig()
    vision: VisionConfig = VisionConfig()
    quality: QualityConfig = QualityConfig()
    recognition: RecognitionConfig = RecognitionConfig()
    gallery: GalleryConfig = GalleryConfig()
    display: DisplayConfig = DisplayConfig()
    mqtt: MqttConfig = MqttConfig()
    debug: DebugConfig = DebugConfig()

    @model_validator(mode="before")
    @classmethod
    def _state_dir_defaults(cls, data: Any) -> Any:
        """Fill the keys that default to a place under `state_dir` before the sections validate."""
        if not isinstance(data, Mapping):
            return data
        unit = data.get("unit")
        if isinstance(unit, UnitConfig):
            state_dir: Any = unit.state_dir
        elif isinstance(unit, Mapping):
            state_dir = unit.get("state_dir", DEFAULT_STATE_DIR)
        else:
            return data
        if not isinstance(state_dir, str | Path):
            return data  # the unit section reports the type error
        out = dict(data)
        for (section, key), name in _STATE_DEFAULTS.items():
            raw = out.get(section, {})
            if isinstance(raw, Mapping) and key not in raw:
                out[section] = {**raw, key: Path(state_dir) / name}
        return out

    def warnings(self) -> list[str]:
        """Settings a person should be told about at start-up (the app logs them)."""
        out = []
        if self.debug.capture_frames:
            out.append(
                f"debug.capture_frames is on: camera frames are written to {self.debug.capture_dir} "
                "(privacy rule 1: turn it off after debugging)"
            )
        return out

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe dump for logs. No key material lives in the config (keys come from a credential
        or key file), but values of keys that look secret (password, token, ...) are masked anyway."""
        return _redact(self.model_dump(mode="json"))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("***" if any(p in k.lower() for p in _SECRET_KEY_PARTS) and v is not None else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def sections() -> dict[str, type[Section]]:
    """Section name -> model, in file order."""
    out: dict[str, type[Section]] = {}
    for name, info in Config.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            out[name] = info.annotation
    return out


def load_config(path: str | Path) -> Config:
    """Read and validate one TOML config file; raise `ConfigError` (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate TOML text; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_format_toml_error(source, text, exc)) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0], data)
        more = (
            f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
            if len(errors) > 1
            else ""
        )
        problems = [_one_line(f"{source}: {_format_error(e, data)}") for e in errors]
        raise ConfigError(_one_line(f"{source}: {first}{more}"), problems) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "path_type": "a path string",
    "tuple_type": "an array",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _format_error(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "config_value" and "key" in ctx:
        loc = (*loc, ctx["key"])
    key = _dotted(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        name = str(loc[-1])
        what = "section" if len(loc) == 1 else "key"
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(name, list(parent.model_fields), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{_dotted((*loc[:-1], close[0]))}'?"
        return f"{key}: unknown {what}{hint}"
    if kind == "missing":
        if isinstance(loc[-1], int):  # a short array
            return f"{_dotted(loc[:-1])}: too few values in the array"
        if len(loc) == 1:
            model = _model_at(loc)
            required = [n for n, f in model.model_fields.items() if f.is_required()] if model else []
            need = f" (needs {', '.join(required)})" if required else ""
            return f"{key}: required section [{key}] is missing{need}"
        return f"{key}: required key is missing"
    message = str(error.get("msg", "invalid value"))
    if kind in _TYPE_NAMES:
        return f"{key}: expected {_TYPE_NAMES[kind]}, got {_show(error.get('input'))}"
    if kind == "config_value" or kind.startswith("value_error"):
        return f"{key}: {message.removeprefix('Value error, ')}"
    message = message.replace("Input should be", "must be").replace("String should", "must")
    return f"{key}: {message[:1].lower()}{message[1:]} (got {_show(error.get('input'))})"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")


def _format_toml_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """`<file>:<line>: <key>: TOML syntax error: ...`, naming the key on the bad line when there is one."""
    lineno = getattr(exc, "lineno", None)
    if lineno is None:  # Python < 3.14 keeps the position only in the message
        found = re.search(r"at line (\d+)", str(exc))
        lineno = int(found.group(1)) if found else None
    if not lineno:
        return _one_line(f"{source}: TOML syntax error: {exc}")
    lines = text.splitlines()
    key = ""
    if 0 < lineno <= len(lines):
        section = ""
        for line in lines[: lineno - 1]:
            table = _TABLE_LINE.match(line)
            if table:
                section = table.group(1)
        key_match = _KEY_LINE.match(lines[lineno - 1])
        if key_match:
            key = f"{section}.{key_match.group(1)}" if section else key_match.group(1)
    where = f" {key}:" if key else ""
    return _one_line(f"{source}:{lineno}:{where} TOML syntax error: {exc}")
