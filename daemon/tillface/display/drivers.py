"""Display drivers: the bytes that put a `Screen` on the wire.

`escpos`: the ESC/POS customer-display command set of 2×20 VFD pole displays (Epson DM-D compatible).
After every (re)open: `ESC @` initialise, `US MD1` overwrite mode (writing the last cell must not
scroll), `US C 0` cursor off, `ESC t n` character table, `CLR` clear, `HOM` home. Each screen is
then written whole, every row as `US $ 1 r` (cursor to column 1 of row r) and exactly `columns`
characters, so no stale character survives and no clear (and its flicker) is needed between screens.

`jsonl`: one UTF-8 JSON object per screen and line, for a microcontroller-driven screen:
`{"schema": 1, "screen": "welcome", "lines": [...], "name": ..., "points": ...}` where `lines` are
fitted to columns × rows (not padded) and the content fields present are those the screen has.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from .codepages import table_number
from .render import aligned, render_lines
from .screens import Screen
from .text import Charset, clean

if TYPE_CHECKING:
    from ..config import DisplayConfig

ESC, US = b"\x1b", b"\x1f"
INITIALISE = ESC + b"@"
OVERWRITE_MODE = US + b"\x01"
CURSOR_OFF = US + b"C\x00"
CLEAR = b"\x0c"
HOME = b"\x0b"


def select_table(number: int) -> bytes:
    return ESC + b"t" + bytes([number])


def cursor_to(column: int, row: int) -> bytes:
    """`US $ n m`: column n and row m, both counted from 1."""
    return US + b"$" + bytes([column, row])


class Driver(Protocol):
    def greeting(self) -> bytes:
        """Bytes to send after the port is (re)opened (the display may have been power-cycled)."""
        ...

    def frame(self, screen: Screen) -> bytes:
        """Bytes that show `screen` completely."""
        ...


class EscPosDriver:
    def __init__(self, cfg: DisplayConfig) -> None:
        self.cfg = cfg
        self.charset = Charset(cfg.code_page, cfg.transliterate)
        self.table = table_number(cfg.code_page, cfg.code_page_number)

    def greeting(self) -> bytes:
        return INITIALISE + OVERWRITE_MODE + CURSOR_OFF + select_table(self.table) + CLEAR + HOME

    def frame(self, screen: Screen) -> bytes:
        rows = aligned(render_lines(screen, self.cfg, self.charset), self.cfg)
        return b"".join(cursor_to(1, r) + self.charset.encode(line) for r, line in enumerate(rows, 1))


class JsonlDriver:
    def __init__(self, cfg: DisplayConfig) -> None:
        self.cfg = cfg
        self.charset = Charset(None)

    def greeting(self) -> bytes:
        return b""

    def frame(self, screen: Screen) -> bytes:
        record: dict[str, Any] = {
            "schema": 1,
            "screen": screen.kind,
            "lines": render_lines(screen, self.cfg, self.charset),
        }
        fields: dict[str, Any] = {
            "name": clean(screen.name) if screen.name else None,
            "points": screen.points,
            "last_purchase": clean(screen.last_purchase) if screen.last_purchase else None,
            "suggestions": [clean(s) for s in screen.suggestions] or None,
            "code": screen.code,
            "message": clean(screen.message) if screen.message else None,
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return line.encode("utf-8") + b"\n"


def make_driver(cfg: DisplayConfig) -> Driver:
    if cfg.driver == "escpos":
        return EscPosDriver(cfg)
    if cfg.driver == "jsonl":
        return JsonlDriver(cfg)
    raise ValueError(f"no driver for display.driver {cfg.driver!r}")
