"""A small ESC/POS customer display (VFD) on the far end of a real pseudo-terminal, for the tests and
for `tillface demo`, which shows its screen in the terminal.

`VfdEmulator` decodes the bytes a driver sent the way an Epson DM-D compatible 2×20 display does:
ESC @, ESC t n, US $ n m, US MD1-3, US C n, CLR, HOM, CAN, CR, LF, BS, HT and printable bytes through
the selected character table. Its table numbers are written out here independently of the driver's
(`codepages.py`), so a wrong number shows up as wrong letters. Anything else is recorded in `errors`:
a real display would show garbage, so a test must fail.

`PtyDisplay` is the hardware: a pty pair whose slave is reached through a symlink (as
/dev/serial/by-id/... is for a USB adapter); a thread reads the master and feeds an emulator (or a
JSON-lines collector). `unplug()` closes the pty; `replug()` creates a new one behind the same link.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

# Epson `ESC t n` numbers of the tables a test uses (from the DM-D / ESC/POS manuals).
TABLES = {0: "cp437", 2: "cp850", 16: "cp1252", 17: "cp866", 18: "cp852", 19: "cp858", 46: "cp1251"}

ESC, US = 0x1B, 0x1F


class DisplayError(Exception):
    """Bytes a display would not understand."""


class VfdEmulator:
    def __init__(self, columns: int = 20, rows: int = 2) -> None:
        self.columns, self.rows = columns, rows
        self.errors: list[str] = []
        self.history: list[tuple[str, ...]] = []  # every distinct screen content seen, in order
        self.initialised = 0  # ESC @ count
        self._pending = bytearray()
        self._reset()

    def _reset(self) -> None:
        self.cells = [[" "] * self.columns for _ in range(self.rows)]
        self.row = self.col = 0
        self.table = 0
        self.mode = 1
        self.cursor_on = True

    @property
    def screen(self) -> tuple[str, ...]:
        return tuple("".join(r) for r in self.cells)

    @property
    def text(self) -> tuple[str, ...]:
        """The screen with each line stripped (alignment aside)."""
        return tuple(line.strip() for line in self.screen)

    def feed(self, data: bytes) -> None:
        self._pending += data
        while self._pending:
            used = self._step(self._pending)
            if used == 0:
                break  # an incomplete command: wait for more bytes
            del self._pending[:used]
        if not self.history or self.history[-1] != self.screen:
            self.history.append(self.screen)

    def _step(self, buf: bytearray) -> int:
        b = buf[0]
        if b == ESC:
            if len(buf) < 2:
                return 0
            if buf[1] == ord("@"):
                self._reset()
                self.initialised += 1
                return 2
            if buf[1] == ord("t"):
                if len(buf) < 3:
                    return 0
                if buf[2] not in TABLES:
                    self._error(f"ESC t {buf[2]}: unknown table")
                else:
                    self.table = buf[2]
                return 3
            self._error(f"unknown ESC {buf[1]:#04x}")
            return 2
        if b == US:
            if len(buf) < 2:
                return 0
            if buf[1] in (1, 2, 3):
                self.mode = buf[1]
                return 2
            if buf[1] == ord("C"):
                if len(buf) < 3:
                    return 0
                self.cursor_on = bool(buf[2])
                return 3
            if buf[1] == ord("$"):
                if len(buf) < 4:
                    return 0
                col, row = buf[2], buf[3]
                if not (1 <= col <= self.columns and 1 <= row <= self.rows):
                    self._error(f"US $ {col} {row}: outside the display")
                else:
                    self.col, self.row = col - 1, row - 1
                return 4
            self._error(f"unknown US {buf[1]:#04x}")
            return 2
        if b == 0x0C:  # CLR
            self.cells = [[" "] * self.columns for _ in range(self.rows)]
            self.row = self.col = 0
        elif b == 0x0B:  # HOM
            self.row = self.col = 0
        elif b == 0x18:  # CAN: clear the cursor line
            self.cells[self.row] = [" "] * self.columns
            self.col = 0
        elif b == 0x0D:
            self.col = 0
        elif b == 0x0A:
            self.row = min(self.row + 1, self.rows - 1)
        elif b == 0x08:
            self.col = max(0, self.col - 1)
        elif b == 0x09:
            self._advance()
        elif b < 0x20:
            self._error(f"unknown control byte {b:#04x}")
        else:
            self.cells[self.row][self.col] = bytes([b]).decode(TABLES[self.table], errors="replace")
            self._advance()
        return 1

    def _advance(self) -> None:
        self.col += 1
        if self.col == self.columns:
            # Overwrite mode: on to the next line, and from the last cell back home (no scrolling).
            self.col = 0
            self.row = (self.row + 1) % self.rows
            if self.mode != 1:
                self._error("wrote past the end of a line outside overwrite mode")

    def _error(self, message: str) -> None:
        self.errors.append(message)


class JsonlCollector:
    """The far end of a `jsonl` display: complete lines, in order."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.history = self.lines
        self._pending = b""

    def feed(self, data: bytes) -> None:
        *complete, self._pending = (self._pending + data).split(b"\n")
        self.lines.extend(complete)


class PtyDisplay:
    """A display on a pseudo-terminal, reached at `path` (a symlink to the pty's slave)."""

    def __init__(self, path: Path, sink: VfdEmulator | JsonlCollector, bytes_per_s: float | None = None):
        """`bytes_per_s` reads no faster than a UART at that rate would deliver (e.g. 960 for 9600
        baud 8N1), so the writer sees a display as slow as a real one."""
        self.path = path
        self.sink = sink
        self.bytes_per_s = bytes_per_s
        self.raw = bytearray()  # every byte received, across replugs
        self.lock = threading.Lock()
        self._master = self._slave = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.replug()

    def replug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # what a USB-serial adapter is: bytes in, bytes out
        tmp = self.path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)
        self._master, self._slave = master, slave
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1

    def close(self) -> None:
        if self._master >= 0:
            self.unplug()
        self.path.unlink(missing_ok=True)

    def _read(self, master: int) -> None:
        chunk = 4096 if self.bytes_per_s is None else max(1, int(self.bytes_per_s / 100))
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(master, chunk)
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the slave open right now
                    time.sleep(0.02)
                    continue
                raise
            with self.lock:
                self.raw += data
                self.sink.feed(data)
            if self.bytes_per_s is not None:
                time.sleep(len(data) / self.bytes_per_s)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll `predicate` (under the reader's lock) until it holds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.01)
        with self.lock:
            return predicate()
