"""End-to-end signatures on the MQTT link (issue 14): valid broker credentials alone cannot forge.

Every state-changing message carries two fields beside its payload:
    key_id   which key signed it: the first 16 hex digits of SHA-256 over the raw Ed25519 public key
             (so keys can rotate: a receiver knows which of its trusted keys to try)
    sig      base64 of the Ed25519 signature over  b"tillface-sig/1\\n" + topic + b"\\n" + canonical,
             where canonical is the payload without `sig` as JSON with sorted keys, compact separators
             and UTF-8 (`canonical()`). The topic is signed too: a message cannot be moved to another
             command, till or member.

Who signs what (keys named in security/layout.py):
    the store server (store-signing.key)  every command (cmd/display, cmd/enroll, cmd/reload), every
                                          gallery tombstone, and the roster of till keys
    each till (till-signing.key)          its events, health and status, and the member states
                                          (enrolments) it publishes on the store gallery

A receiver checks, in this order: the signature and key id (`verify`), that `store`/`till` in the
payload name the topic's store and till (`check_addressed`), and for commands and events that `ts` is
within the freshness window and `event_id` was not seen before (`ReplayGuard`). Any failure raises
`SignatureError` whose `reason` says which check failed; the message changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"tillface-sig/1\n"
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
SIG_PATTERN = r"^[A-Za-z0-9+/]{86}==$"  # 64 bytes, base64
DEFAULT_WINDOW_S = 300.0


class SignatureError(ValueError):
    """A message that fails authentication; `reason` says which check failed (for the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file or credential that cannot be used; the message names it."""


# ------------------------------------------------------------------ keys


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_raw_b64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_from_raw_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("not a base64 Ed25519 public key (32 bytes)") from None


def _check_private_mode(path: Path) -> None:
    st = path.stat()
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"private key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must be 0600 or stricter (chmod 600 {path})"
        )


def private_key_from_pem(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{where} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key_from_pem(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "private key file")
    _check_private_mode(path)
    return private_key_from_pem(data, f"private key file {path}")


def load_public_key(path: Path) -> Ed25519PublicKey:
    return public_key_from_pem(_read(path, "public key file"), f"public key file {path}")


def _credential(name: str | None, credentials_dir: str | Path | None) -> Path | None:
    folder = credentials_dir if credentials_dir is not None else os.environ.get("CREDENTIALS_DIRECTORY")
    if name and folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    return None


def load_private_credential(
    credential: str | None, key_file: Path, credentials_dir: str | Path | None = None
) -> Ed25519PrivateKey:
    """A private key from the systemd credential if present (systemd guards its folder), else the file."""
    cred = _credential(credential, credentials_dir)
    if cred is not None:
        return private_key_from_pem(_read(cred, "systemd credential"), f"systemd credential {cred}")
    return load_private_key(key_file)


def load_public_credential(
    credential: str | None, key_file: Path, credentials_dir: str | Path | None = None
) -> Ed25519PublicKey:
    cred = _credential(credential, credentials_dir)
    if cred is not None:
        return public_key_from_pem(_read(cred, "systemd credential"), f"systemd credential {cred}")
    return load_public_key(key_file)


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """A new Ed25519 pair: private key PEM (PKCS#8, mode 0600, never overwritten), public key PEM
    (SubjectPublicKeyInfo). Returns the key id."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(public)


# ------------------------------------------------------------------ signing and verifying


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The signed form: the payload without `sig`, JSON with sorted keys, compact, UTF-8."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _message(topic: str, payload: Mapping[str, Any]) -> bytes:
    return DOMAIN + topic.encode("utf-8") + b"\n" + canonical(payload)


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, topic: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The payload with `key_id` and `sig` (a new dict; the payload must not carry them)."""
        body = {k: v for k, v in payload.items() if k not in ("key_id", "sig")}
        body["key_id"] = self.key_id
        body["sig"] = base64.b64encode(self._key.sign(_message(topic, body))).decode("ascii")
        return body


def verify(topic: str, payload: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey], signer: str) -> str:
    """Check the signature against the trusted `keys` (key id -> key) of `signer` (named in reasons).
    Returns the key id that signed."""
    sig, kid = payload.get("sig"), payload.get("key_id")
    if sig is None and kid is None:
        raise SignatureError(f"unsigned (no sig/key_id; only messages signed by {signer} are accepted)")
    if not isinstance(sig, str) or not isinstance(kid, str):
        raise SignatureError("sig and key_id must both be strings")
    key = keys.get(kid)
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        raise SignatureError(f"key_id {kid} is not a key of {signer} (trusted: {known})")
    try:
        raw = base64.b64decode(sig, validate=True)
        key.verify(raw, _message(topic, payload))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"bad signature (key_id {kid} of {signer}): forged or altered") from None
    return kid


def check_addressed(payload: Mapping[str, Any], store: str, till: str | None = None) -> None:
    """`store` (and `till`) in the payload must be the ones the topic names."""
    if payload.get("store") != store:
        raise SignatureError(
            f"misaddressed: payload names store {payload.get('store')!r}, the topic {store!r}"
        )
    if till is not None and payload.get("till") != till:
        named = payload.get("till")
        raise SignatureError(f"misaddressed: payload names till {named!r}, the topic {till!r}")


def parse_ts(ts: Any) -> float:
    if not isinstance(ts, str):
        raise SignatureError("ts is missing (RFC 3339 UTC time of sending)")
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SignatureError(f"ts {ts!r} is not an RFC 3339 time") from None


def check_fresh(
    payload: Mapping[str, Any], max_skew_s: float, max_age_s: float, now: float | None = None
) -> float:
    """`ts` within [now - max_age_s, now + max_skew_s]; returns it (epoch seconds)."""
    sent = parse_ts(payload.get("ts"))
    now = time.time() if now is None else now
    if sent > now + max_skew_s:
        raise SignatureError(
            f"stale: ts {payload['ts']} is {sent - now:.0f} s ahead (window {max_skew_s:g} s)"
        )
    if sent < now - max_age_s:
        age = now - sent
        raise SignatureError(f"stale: ts {payload['ts']} is {age:.0f} s old (window {max_age_s:g} s)")
    return sent


class ReplayGuard:
    """Freshness and de-duplication: `ts` within [now - max_age_s, now + max_skew_s] and an `event_id`
    not seen within that time. Ids are remembered for as long as their message would still be fresh,
    so the memory is bounded by the window."""

    def __init__(
        self,
        max_skew_s: float = DEFAULT_WINDOW_S,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_skew_s = max_skew_s
        self.max_age_s = max_skew_s if max_age_s is None else max_age_s
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # event_id -> forget after
        self._lock = threading.Lock()

    def check(self, payload: Mapping[str, Any], remember: bool = True) -> None:
        event_id = payload.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise SignatureError("event_id is missing (needed to refuse replays)")
        sent = parse_ts(payload.get("ts"))
        now = self._clock()
        if sent > now + self.max_skew_s:
            raise SignatureError(
                f"stale: ts {payload['ts']} is {sent - now:.0f} s ahead (window {self.max_skew_s:g} s)"
            )
        if sent < now - self.max_age_s:
            raise SignatureError(
                f"stale: ts {payload['ts']} is {now - sent:.0f} s old (window {self.max_age_s:g} s)"
            )
        with self._lock:
            while self._seen:
                oldest, until = next(iter(self._seen.items()))
                if until > now:
                    break
                del self._seen[oldest]
            if event_id in self._seen:
                raise SignatureError(f"replayed: event_id {event_id} was already received")
            if remember:
                self._seen[event_id] = now + self.max_age_s + self.max_skew_s
