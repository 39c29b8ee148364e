"""sd_notify: READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to systemd (Type=notify, WatchdogSec=).

The protocol is one datagram of newline-separated KEY=VALUE lines on $NOTIFY_SOCKET. With
systemd-python installed (the `journald` extra, or Debian's python3-systemd) `systemd.daemon.notify`
sends it; otherwise a plain socket does, so the service needs no systemd library. Outside systemd
(no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("tillface.system")


def library_notify() -> Callable[[str], bool] | None:
    """systemd-python's `systemd.daemon.notify` (it reads $NOTIFY_SOCKET itself), or None."""
    try:
        import systemd.daemon as daemon
    except ImportError:
        return None
    return lambda message: bool(daemon.notify(message))


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        """`environ` (tests) replaces os.environ; then the plain socket is used, never the library,
        which would read the process environment."""
        env = dict(os.environ if environ is None else environ)
        self._library = library_notify() if environ is None else None
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog_for_us = usec is not None and (pid is None or pid == str(os.getpid()))
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = int(usec) / 2e6 if watchdog_for_us and usec and usec.isdigit() else None
        self._last_ping = 0.0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        if self._library is not None:
            try:
                return self._library(message)
            except OSError as exc:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """Ping if the interval is due; the caller only calls this from a healthy frame loop."""
        if self.watchdog_interval_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval_s:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
