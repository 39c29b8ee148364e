"""Logging: to journald with structured fields under systemd, else plain lines on stderr.

Under systemd (`JOURNAL_STREAM` or `INVOCATION_ID` set) and with systemd-python importable, records go
through `systemd.journal.JournalHandler`, and the `journal` dict a record carries in `extra` becomes
journal fields (`journalctl --namespace=tillface TILLFACE_EVENT=match`, `-o json`). Only fields that pass
`journal_fields` are sent: upper-case names and short scalar values. Lists, arrays, bytes and long
texts are dropped, so an embedding can never reach the journal, even by mistake.

Under systemd without systemd-python, stderr (which systemd connects to the journal) gets lines with a
`<N>` syslog priority prefix and no timestamp (journald adds its own). Outside systemd: timestamped
lines on stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

# journald's rule for field names (sd_journal_sendv(3)); ours all start with TILLFACE_.
_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")
# Identifiers, codes and scores are short; anything longer is not a field we meant to send.
MAX_VALUE_CHARS = 128
# Fields the handler sets itself; a record cannot override them.
_RESERVED = {"MESSAGE", "PRIORITY", "LOGGER", "THREAD_NAME", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}

# sd-daemon(3) priorities for the `<N>` prefix on stderr.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's `journal` extra as journald fields (name -> text); anything unsafe is dropped.

    Kept: names matching journald's rule (upper case, digits, '_'), values that are None, bool, int,
    float or text of at most MAX_VALUE_CHARS characters. Dropped: sequences, arrays, mappings, bytes,
    long texts and names journald would reject.
    """
    raw = getattr(record, "journal", None)
    if not isinstance(raw, Mapping):
        return {}
    fields: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _FIELD_NAME.match(name) or name in _RESERVED:
            continue
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()  # a numpy scalar (a score), not an array
        if value is None or isinstance(value, bool):
            fields[name] = str(value).lower()
        elif isinstance(value, Real):
            fields[name] = format(value, "g") if isinstance(value, float) else str(value)
        elif isinstance(value, str) and len(value) <= MAX_VALUE_CHARS and "\n" not in value:
            fields[name] = value
    return fields


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def journal_handler_class() -> type[logging.Handler] | None:
    """systemd-python's JournalHandler, extended to send only vetted fields; None if not installed."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class TillfaceJournalHandler(JournalHandler):
        """JournalHandler that sends the standard fields plus `journal_fields(record)`, nothing else.

        (The stock handler forwards every attribute of the record; this one forwards only what
        `journal_fields` lets through.)
        """

        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                fields: dict[str, Any] = dict(self._extra)
                fields.update(journal_fields(record))
                self.send(
                    message,
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    return TillfaceJournalHandler


def make_journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler | None:
    """A journal handler (SYSLOG_IDENTIFIER=tillface), or None without systemd-python.

    `sender` replaces `systemd.journal.send` (tests capture the fields with it)."""
    cls = journal_handler_class()
    if cls is None:
        return None
    kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": "tillface"}
    if sender is not None:
        kwargs["sender_function"] = sender
    handler = cls(**kwargs)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


class _PriorityPrefix(logging.Formatter):
    """`<6>tillface: message`: journald reads the priority from the prefix of a stderr line."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in _PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        return f"<{_PRIORITY[level]}>{super().format(record)}"


def setup_logging(level: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """Configure the root logger; returns where logs go: "journal", "stderr-journal" or "stderr"."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level)
    target = "stderr"
    handler: logging.Handler | None = None
    if under_systemd(environ):
        handler = make_journal_handler()
        target = "journal"
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_PriorityPrefix("%(name)s: %(message)s"))
            target = "stderr-journal"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return target
