"""The member gallery: templates per member, kept in RAM and persisted encrypted (DESIGN §6).

File format (`TFG2`): magic `TFG2` (4 bytes) + the key id (8 bytes, `key_id()`: which key encrypted it,
revealing nothing of the key) + 12-byte random nonce + AES-256-GCM ciphertext (with its 16-byte tag); the
associated data is the magic, the format version and the key id, so a file of another format can never be
mistaken for this one, and a wrong key is named as such. `TFG1` files (the same without the key id) are
still read; the next save writes `TFG2`. The plaintext, which only ever exists in memory, is:

    u32 big-endian header length | JSON header | template ids (n x 16 bytes, uuid4)
    | member index (n x <u4) | created (n x <f8, Unix seconds) | source index (n x u1)
    | embeddings (n x dim x <f4, L2-normalised)

The header holds the gallery version, the embedder that made the templates (model id; templates of two
embedders cannot be compared, so a file of another embedder is refused), dim, n, the member id list,
the source names, each member's sync revision and the tombstones of erased members (member id ->
revision, no biometrics). 100k templates
of 128 floats are ~52 MB and save or load in well under a second: no per-float text anywhere.

Key: 32 bytes from the systemd credential `$CREDENTIALS_DIRECTORY/<key_credential>` when present, else
from the key file, which must be a regular file owned by the current user with mode 0600 or stricter.
The key never appears in logs, reprs or exception messages.

Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder); only ciphertext
is ever written. A file that fails to load is never overwritten: the store refuses to save until a
load succeeds, so a wrong key cannot turn into an empty gallery on disk.

Every upsert and erase writes one line to the `tillface.audit` logger (member id, template count,
version, source; never biometrics).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..models import DEFAULT_EMBEDDER, LEGACY_EMBEDDER
from .matcher import Matcher

if TYPE_CHECKING:
    from ..config import GalleryConfig

MAGIC = b"TFG2"  # TFG1 (no key id) is still read; saving writes TFG2
FORMAT_VERSION = 1
LEGACY_MAGIC = b"TFG1"
LEGACY_ASSOCIATED_DATA = LEGACY_MAGIC + struct.pack(">H", FORMAT_VERSION)
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
DEFAULT_DIM = 128


def key_id(key: bytes) -> str:
    """A key's public name (16 hex digits): says which key a file or message was encrypted with, and
    reveals nothing of the key (a hash of it, under its own label)."""
    return hashlib.sha256(b"tillface key id\0" + bytes(key)).hexdigest()[: 2 * KEY_ID_SIZE]


def _associated_data(kid: bytes) -> bytes:
    return MAGIC + struct.pack(">H", FORMAT_VERSION) + kid


MAX_MEMBER_ID_LENGTH = 128

Source = Literal["enroll", "import", "sync"]
SOURCES: tuple[Source, ...] = ("enroll", "import", "sync")

audit_log = logging.getLogger("tillface.audit")
log = logging.getLogger(__name__)


class GalleryError(Exception):
    """The gallery or its key cannot be used; the message names the file and never holds key material."""


@dataclass(frozen=True, eq=False)
class Template:
    id: str  # uuid4 hex
    member_id: str
    embedding: np.ndarray  # float32 (dim,), unit length, read-only
    created: float  # Unix seconds
    source: Source


# ---------------------------------------------------------------- key handling


def _decode_key(data: bytes, where: str) -> bytes:
    """32 raw bytes, or the same as 64 hex digits or base64 text (handy for systemd SetCredential=)."""
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    try:
        if len(text) == 2 * KEY_SIZE:
            return bytes.fromhex(text.decode("ascii"))
        if len(text) == 44:
            key = base64.b64decode(text, validate=True)
            if len(key) == KEY_SIZE:
                return key
    except (ValueError, binascii.Error):
        pass
    raise GalleryError(
        f"{where} does not hold a {KEY_SIZE}-byte key (raw, 64 hex digits or base64); "
        f"it has {len(data)} bytes"
    )


def read_key_file(path: str | Path) -> bytes:
    """Read a key file, refusing one that others could read or that another user owns."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise GalleryError(
            f"gallery key file {path} does not exist (create one with create_key_file)"
        ) from None
    except OSError as exc:
        raise GalleryError(f"cannot open gallery key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GalleryError(f"gallery key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise GalleryError(
                f"gallery key file {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
            )
        if st.st_mode & 0o077:
            raise GalleryError(
                f"gallery key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"it must be 0600 or stricter (chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(4096)
    finally:
        os.close(fd)
    return _decode_key(data, f"gallery key file {path}")


def load_key(
    key_file: str | Path,
    credential: str | None = "gallery.key",
    credentials_dir: str | Path | None = None,
) -> bytes:
    """The gallery key: the systemd credential if present, else the key file.

    `credentials_dir` defaults to `$CREDENTIALS_DIRECTORY` (set by systemd for LoadCredential=).
    systemd already restricts the credentials folder to the service, so its mode is not checked.
    """
    key = read_credential_key(credential, credentials_dir) if credential else None
    return key if key is not None else read_key_file(key_file)


def read_credential_key(credential: str, credentials_dir: str | Path | None = None) -> bytes | None:
    """A 32-byte key from the systemd credential `credential`, or None when there is no such credential
    (`credentials_dir` defaults to `$CREDENTIALS_DIRECTORY`)."""
    folder = credentials_dir if credentials_dir is not None else os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    cred = Path(folder) / credential
    if not cred.is_file():
        return None
    try:
        data = cred.read_bytes()
    except OSError as exc:
        raise GalleryError(f"cannot read systemd credential {cred}: {exc.strerror}") from None
    log.info("key from systemd credential %s", credential)
    return _decode_key(data, f"systemd credential {cred}")


def create_key_file(path: str | Path) -> None:
    """Write a new random 32-byte key with mode 0600; never overwrites an existing key.

    The key is written to a temp file, synced, then hard-linked into place, so a crash cannot leave a
    short key behind and an existing key file makes this fail with `GalleryError`.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        raise GalleryError(f"gallery key file {path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise GalleryError(f"gallery key file {path} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


# ---------------------------------------------------------------- file helpers


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `path` atomically: temp file (0600) in the same folder, fsync, rename, fsync."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# ---------------------------------------------------------------- the store


class GalleryStore:
    """Members and their templates, persisted encrypted at `path`; thread-safe.

    Call `load()` first (a missing file is an empty gallery); mutations and `save()` refuse to run on
    a store whose file failed to load, so a bad key never overwrites the last good file.
    """

    def __init__(
        self, path: str | Path, key: bytes, dim: int = DEFAULT_DIM, *, embedder: str = DEFAULT_EMBEDDER
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise GalleryError(f"the gallery key must be {KEY_SIZE} bytes")
        self.path = Path(path)
        self.embedder = embedder  # model id of the embedder whose templates this gallery holds
        self._aead = AESGCM(bytes(key))  # the raw key is not kept on the store
        self.key_id = key_id(bytes(key))
        self._dim = int(dim)
        self._lock = threading.RLock()
        self._members: dict[str, list[Template]] = {}
        self._version = 0
        # Store-wide sync (link/gallery_sync.py): each member's state carries a revision, a hybrid
        # logical clock (max(last + 1, now in ms)), so the newest change wins at every till; erased
        # members leave a tombstone so that an older copy can never bring them back.
        self._revisions: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        # Consent reference of each imported member (enrolled members' consents live in the store).
        self._consents: dict[str, str] = {}
        self._loaded = False
        self._matcher_cache: tuple[int, Matcher] | None = None

    @classmethod
    def from_config(
        cls,
        config: GalleryConfig,
        credentials_dir: str | Path | None = None,
        embedder: str = DEFAULT_EMBEDDER,
    ) -> GalleryStore:
        key = load_key(config.key_file, config.key_credential, credentials_dir)
        return cls(config.file, key, embedder=embedder)

    def __repr__(self) -> str:
        return f"GalleryStore({str(self.path)!r}, version={self._version}, templates={self.size})"

    # -------------------------------------------------------------- properties

    @property
    def version(self) -> int:
        return self._version

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        """Number of templates."""
        with self._lock:
            return sum(len(t) for t in self._members.values())

    def members(self) -> list[str]:
        with self._lock:
            return sorted(self._members)

    def templates_of(self, member_id: str) -> list[Template]:
        with self._lock:
            return list(self._members.get(member_id, ()))

    def consent_of(self, member_id: str) -> str | None:
        """The consent reference an imported member was enrolled with (None for other members)."""
        with self._lock:
            return self._consents.get(member_id)

    def __contains__(self, member_id: object) -> bool:
        with self._lock:
            return member_id in self._members

    # -------------------------------------------------------------- persistence

    def load(self, missing_ok: bool = True) -> None:
        """Replace the in-memory gallery by the file's; a missing file is an empty gallery at version 0."""
        with self._lock:
            self._loaded = False
            try:
                blob = self.path.read_bytes()
            except FileNotFoundError:
                if not missing_ok:
                    raise GalleryError(f"gallery file {self.path} does not exist") from None
                self._members, self._version = {}, 0
                self._revisions, self._tombstones, self._consents = {}, {}, {}
                self._matcher_cache = None
                self._loaded = True
                log.info("gallery %s does not exist yet: starting empty", self.path)
                return
            except OSError as exc:
                raise GalleryError(f"cannot read gallery file {self.path}: {exc.strerror}") from None
            members, version, dim, revisions, tombstones, embedder, consents = self._decode(blob)
            if embedder != self.embedder and members:
                raise GalleryError(
                    f"gallery file {self.path} holds templates made by embedder {embedder!r}, but this unit "
                    f"runs {self.embedder!r} ([vision] embedder); templates of two embedders cannot be "
                    "compared. Set [vision] embedder back, or enrol the members again into a new gallery "
                    "file (tillface gallery import); the file was left untouched"
                )
            self._members, self._version, self._dim = members, version, dim
            self._revisions, self._tombstones, self._consents = revisions, tombstones, consents
            self._matcher_cache = None
            self._loaded = True
            log.info(
                "gallery %s loaded: version %d, %d members, %d templates",
                self.path,
                version,
                len(members),
                self.size,
            )

    def save(self) -> None:
        """Write the gallery atomically (ciphertext only)."""
        with self._lock:
            self._require_loaded("save")
            blob = self._encode()
            try:
                _atomic_write(
                    self.path, [MAGIC, bytes.fromhex(self.key_id), blob[:NONCE_SIZE], blob[NONCE_SIZE:]]
                )
            except OSError as exc:
                raise GalleryError(f"cannot write gallery file {self.path}: {exc.strerror or exc}") from None

    def rekey(self, new_key: bytes) -> tuple[str, str]:
        """Encrypt the gallery with `new_key` from now on and rewrite the file at once (atomically);
        returns (old key id, new key id). The old key no longer opens the file."""
        if not isinstance(new_key, bytes | bytearray) or len(new_key) != KEY_SIZE:
            raise GalleryError(f"the new gallery key must be {KEY_SIZE} bytes")
        with self._lock:
            self._require_loaded("rekey it")
            old, old_aead = self.key_id, self._aead
            self._aead, self.key_id = AESGCM(bytes(new_key)), key_id(bytes(new_key))
            try:
                self.save()
            except GalleryError:
                self._aead, self.key_id = old_aead, old
                raise
            audit_log.info("gallery rekey from key %s to key %s version=%d", old, self.key_id, self._version)
            return old, self.key_id

    def _require_loaded(self, action: str) -> None:
        if not self._loaded:
            raise GalleryError(
                f"gallery {self.path} is not loaded (or failed to load); refusing to {action} "
                "so that the file on disk is not overwritten"
            )

    def _encode(self) -> bytes:
        """nonce + ciphertext of the current gallery."""
        templates = [t for member in sorted(self._members) for t in self._members[member]]
        member_ids = sorted(self._members)
        member_index = {m: i for i, m in enumerate(member_ids)}
        n = len(templates)
        header = json.dumps(
            {
                "format": FORMAT_VERSION,
                "version": self._version,
                "embedder": self.embedder,
                "dim": self._dim,
                "count": n,
                "members": member_ids,
                "sources": list(SOURCES),
                "revisions": [self._revisions.get(m, 0) for m in member_ids],
                "tombstones": self._tombstones,
                "consents": {m: self._consents[m] for m in member_ids if m in self._consents},
                "saved": time.time(),
            },
            separators=(",", ":"),
        ).encode()
        ids = b"".join(bytes.fromhex(t.id) for t in templates)
        members = np.fromiter((member_index[t.member_id] for t in templates), dtype="<u4", count=n)
        created = np.fromiter((t.created for t in templates), dtype="<f8", count=n)
        sources = np.fromiter((SOURCES.index(t.source) for t in templates), dtype="u1", count=n)
        matrix = (
            np.stack([t.embedding for t in templates]).astype("<f4", copy=False)
            if n
            else np.zeros((0, self._dim), dtype="<f4")
        )
        plaintext = b"".join(
            [
                struct.pack(">I", len(header)),
                header,
                ids,
                members.tobytes(),
                created.tobytes(),
                sources.tobytes(),
                matrix.tobytes(),
            ]
        )
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, _associated_data(bytes.fromhex(self.key_id)))

    def _decode(
        self, blob: bytes
    ) -> tuple[dict[str, list[Template]], int, int, dict[str, int], dict[str, int], str, dict[str, str]]:
        where = f"gallery file {self.path}"
        magic = blob[: len(MAGIC)]
        head = len(MAGIC) + (KEY_ID_SIZE if magic == MAGIC else 0)
        if len(blob) < head + NONCE_SIZE + TAG_SIZE:
            raise GalleryError(f"{where} is truncated ({len(blob)} bytes); it was left untouched")
        if magic == MAGIC:
            kid = blob[len(MAGIC) : head]
            aad = _associated_data(kid)
            if kid.hex() != self.key_id:
                raise GalleryError(
                    f"{where} cannot be decrypted with this key: it was written with key id {kid.hex()}, "
                    f"the key given has id {self.key_id} (wrong key, or a key rotated by tillface gallery "
                    "rekey without installing the new key); it was left untouched"
                )
        elif magic == LEGACY_MAGIC:
            aad = LEGACY_ASSOCIATED_DATA
        else:
            raise GalleryError(f"{where} is not a tillface gallery (bad magic); it was left untouched")
        nonce = blob[head : head + NONCE_SIZE]
        try:
            plaintext = self._aead.decrypt(nonce, blob[head + NONCE_SIZE :], aad)
        except InvalidTag:
            raise GalleryError(
                f"{where} cannot be decrypted: wrong key, or the file is corrupt or truncated; "
                "it was left untouched"
            ) from None
        try:
            return self._parse(plaintext)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            # Authenticated but unreadable: written by a newer or broken version.
            raise GalleryError(f"{where} has an invalid layout ({exc}); it was left untouched") from None

    @staticmethod
    def _parse(
        plaintext: bytes,
    ) -> tuple[dict[str, list[Template]], int, int, dict[str, int], dict[str, int], str, dict[str, str]]:
        (header_len,) = struct.unpack_from(">I", plaintext, 0)
        header = json.loads(plaintext[4 : 4 + header_len])
        if header["format"] != FORMAT_VERSION:
            raise ValueError(f"format {header['format']} is not supported")
        n, dim, version = int(header["count"]), int(header["dim"]), int(header["version"])
        embedder = str(header.get("embedder", LEGACY_EMBEDDER))
        member_ids: list[str] = [str(m) for m in header["members"]]
        # Files written before store sync have no revisions: every member is at revision 0.
        revision_list = [int(r) for r in header.get("revisions", [0] * len(member_ids))]
        if len(revision_list) != len(member_ids):
            raise ValueError("revisions do not match the member list")
        tombstones = {str(m): int(r) for m, r in header.get("tombstones", {}).items()}
        sources: list[str] = [str(s) for s in header["sources"]]
        if not set(sources) <= set(SOURCES):
            raise ValueError(f"unknown template source in {sources}")
        offset = 4 + header_len
        sizes = [16 * n, 4 * n, 8 * n, n, 4 * n * dim]
        if len(plaintext) != offset + sum(sizes):
            raise ValueError(f"{len(plaintext) - offset} payload bytes for {n} templates of {dim} floats")
        parts = []
        for size in sizes:
            parts.append(plaintext[offset : offset + size])
            offset += size
        ids = parts[0]
        members = np.frombuffer(parts[1], dtype="<u4")
        created = np.frombuffer(parts[2], dtype="<f8")
        source_idx = np.frombuffer(parts[3], dtype="u1")
        matrix = np.frombuffer(parts[4], dtype="<f4").reshape(n, dim).astype(np.float32)
        if n and (members.max() >= len(member_ids) or source_idx.max() >= len(sources)):
            raise ValueError("index out of range")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("non-finite embedding")
        matrix.setflags(write=False)
        source_names = [cast(Source, s) for s in sources]  # checked above
        out: dict[str, list[Template]] = {}
        for i, (m, ts, si, row) in enumerate(
            zip(members.tolist(), created.tolist(), source_idx.tolist(), matrix, strict=True)
        ):
            member = member_ids[m]
            template = Template(ids[16 * i : 16 * i + 16].hex(), member, row, ts, source_names[si])
            out.setdefault(member, []).append(template)
        revisions = {m: r for m, r in zip(member_ids, revision_list, strict=True) if m in out}
        consents = {str(m): str(c) for m, c in header.get("consents", {}).items() if m in out}
        return out, version, dim, revisions, tombstones, embedder, consents

    # -------------------------------------------------------------- changes

    def upsert(
        self,
        member_id: str,
        embeddings: np.ndarray,
        source: Source,
        *,
        replace: bool = False,
        persist: bool = True,
        consent_ref: str | None = None,
    ) -> list[str]:
        """Add templates (rows of `embeddings`, shape (k, dim)) to a member, creating the member if new.

        `replace=True` drops the member's existing templates first. Rows are L2-normalised. The file is
        rewritten at once unless `persist=False` (for bulk imports: call `save()` at the end). Returns
        the new template ids. An imported member needs `consent_ref` (where the customer's consent is
        recorded, e.g. a form number): the gallery keeps it with the member until the member is erased.
        """
        check_member_id(member_id)
        if source == "import" and not (consent_ref and consent_ref.strip()):
            raise ValueError(f"member {member_id}: an imported member needs a consent reference")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        rows = np.asarray(embeddings, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self._dim:
            raise ValueError(f"embeddings must have shape (k>=1, {self._dim}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("embeddings contain non-finite values")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if not (norms > 1e-6).all():
            raise ValueError("an embedding has zero length")
        rows = (rows / norms).astype(np.float32)
        rows.setflags(write=False)
        now = time.time()
        new = [
            Template(tid, member_id, row, now, source)
            for tid, row in zip(_uuid4_hex(len(rows)), rows, strict=True)
        ]
        with self._lock:
            self._require_loaded("change it")
            existing = [] if replace else self._members.get(member_id, [])
            self._matcher_cache = None
            self._members[member_id] = [*existing, *new]
            self._revisions[member_id] = self._next_revision(member_id)
            self._tombstones.pop(member_id, None)
            if consent_ref:
                self._consents[member_id] = consent_ref
            self._version += 1
            audit_log.info(
                "gallery upsert member=%s templates_added=%d templates_total=%d replace=%s "
                "version=%d source=%s consent=%s",
                member_id,
                len(new),
                len(self._members[member_id]),
                replace,
                self._version,
                source,
                self._consents.get(member_id, "-"),
            )
            if persist:
                self.save()
        return [t.id for t in new]

    def erase(self, member_id: str, *, source: str = "erase") -> bool:
        """Remove a member from memory and rewrite the file at once (DESIGN §6 rule 5).

        Returns False (and changes nothing) when the member is unknown. `source` is recorded in the
        audit line (e.g. "cmd", "sync").
        """
        with self._lock:
            self._require_loaded("change it")
            removed = self._members.get(member_id)
            if removed is None:
                audit_log.info(
                    "gallery erase member=%s templates=0 found=false version=%d source=%s",
                    member_id,
                    self._version,
                    source,
                )
                return False
            self._matcher_cache = None
            del self._members[member_id]
            self._consents.pop(member_id, None)
            self._tombstones[member_id] = self._next_revision(member_id)
            self._revisions.pop(member_id, None)
            self._version += 1
            audit_log.info(
                "gallery erase member=%s templates=%d found=true version=%d source=%s",
                member_id,
                len(removed),
                self._version,
                source,
            )
            self.save()
            return True

    # -------------------------------------------------------------- store-wide sync

    def _next_revision(self, member_id: str) -> int:
        last = max(self._revisions.get(member_id, 0), self._tombstones.get(member_id, 0))
        return max(last + 1, int(time.time() * 1000))

    def revision_of(self, member_id: str) -> tuple[int, bool]:
        """(revision, erased) of a member's newest known state; (0, False) if never seen."""
        with self._lock:
            if member_id in self._members:
                return self._revisions.get(member_id, 0), False
            if member_id in self._tombstones:
                return self._tombstones[member_id], True
            return 0, False

    def sync_state(self) -> dict[str, tuple[int, bool]]:
        """Every member and tombstone: member id -> (revision, erased)."""
        with self._lock:
            state = {m: (r, True) for m, r in self._tombstones.items()}
            state.update({m: (self._revisions.get(m, 0), False) for m in self._members})
            return state

    def apply_remote(
        self,
        member_id: str,
        revision: int,
        templates: list[tuple[str, np.ndarray]] | None,
        *,
        origin: str,
    ) -> bool:
        """Apply another till's (or the store's) state of a member: its templates, or None to erase.

        Applied only when `revision` is newer than what this gallery knows of the member (templates or
        tombstone), so re-delivery and out-of-order copies are harmless. Returns True if applied
        (and persisted).
        """
        check_member_id(member_id)
        with self._lock:
            self._require_loaded("change it")
            known = max(self._revisions.get(member_id, 0), self._tombstones.get(member_id, 0))
            if revision <= known:
                return False
            self._matcher_cache = None
            if templates is None:
                removed = self._members.pop(member_id, [])
                self._consents.pop(member_id, None)
                self._revisions.pop(member_id, None)
                self._tombstones[member_id] = revision
                self._version += 1
                audit_log.info(
                    "gallery erase member=%s templates=%d found=%s version=%d source=sync origin=%s",
                    member_id,
                    len(removed),
                    str(bool(removed)).lower(),
                    self._version,
                    origin,
                )
            else:
                now = time.time()
                new = []
                for tid, emb in templates:
                    row = np.asarray(emb, dtype=np.float32).reshape(-1)
                    if row.shape != (self._dim,) or not np.isfinite(row).all():
                        raise ValueError(f"template {tid} has shape {row.shape}, expected ({self._dim},)")
                    norm = float(np.linalg.norm(row))
                    if norm < 1e-6:
                        raise ValueError(f"template {tid} has zero length")
                    unit = (row / norm).astype(np.float32)
                    unit.setflags(write=False)
                    new.append(Template(tid, member_id, unit, now, "sync"))
                if not new:
                    raise ValueError("a member update needs at least one template")
                self._members[member_id] = new
                self._revisions[member_id] = revision
                self._tombstones.pop(member_id, None)
                self._version += 1
                audit_log.info(
                    "gallery upsert member=%s templates_added=%d templates_total=%d replace=true "
                    "version=%d source=sync origin=%s",
                    member_id,
                    len(new),
                    len(new),
                    self._version,
                    origin,
                )
            self.save()
            return True

    # -------------------------------------------------------------- search

    def matcher(self) -> Matcher:
        """A `Matcher` over the current templates; cached until the next change."""
        cached = self._matcher_cache
        if cached is not None and cached[0] == self._version:
            return cached[1]
        with self._lock:
            cached = self._matcher_cache
            if cached is not None and cached[0] == self._version:
                return cached[1]
            templates = [t for member in self._members.values() for t in member]
            matrix = (
                np.stack([t.embedding for t in templates])
                if templates
                else np.zeros((0, self._dim), dtype=np.float32)
            )
            matcher = Matcher(matrix, [t.member_id for t in templates])
            self._matcher_cache = (self._version, matcher)
            return matcher

    def stats(self) -> Mapping[str, int]:
        """For health messages: version, members, templates."""
        with self._lock:
            return {"version": self._version, "members": len(self._members), "templates": self.size}


def _uuid4_hex(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as hex, in one batch."""
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return [row.tobytes().hex() for row in raw]


def check_member_id(member_id: str) -> None:
    """Raises ValueError naming what is wrong with a member id (the one rule for member ids)."""
    if not isinstance(member_id, str) or not member_id or len(member_id) > MAX_MEMBER_ID_LENGTH:
        raise ValueError(f"member id must be a string of 1..{MAX_MEMBER_ID_LENGTH} characters")
    if not member_id.isprintable() or any(c.isspace() or c in "/+#" for c in member_id):
        # A member id names an MQTT topic level (gallery/members/<id>): one bad id would stop the
        # till's store-wide sync.
        raise ValueError(f"member id {member_id!r} must be printable, without spaces, '/', '+' or '#'")
