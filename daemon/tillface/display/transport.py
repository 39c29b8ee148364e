"""The serial link to the display, through pyserial's `serial_for_url`.

So `port` may be a device (`/dev/ttyUSB0`, better a stable `/dev/serial/by-id/...` link, which an
unplugged and replugged adapter gets back), `socket://host:port` (a display behind a serial server),
`rfc2217://...`, or `loop://` (bytes come back; for trying a config with no display).

Every write is bounded by `write_timeout_s`: a port held up by flow control or a half-dead adapter
raises instead of blocking the display worker for ever.
"""

from __future__ import annotations

import contextlib
import termios
from typing import TYPE_CHECKING

import serial

if TYPE_CHECKING:
    from ..config import DisplayConfig

PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
STOPBITS = {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}

# What a failing port raises: pyserial's errors, termios.error from its ioctls on a vanished device
# (not an OSError), OSError for the rest (e.g. a socket:// peer gone).
LinkError = (serial.SerialException, termios.error, OSError, ValueError)


def describe(cfg: DisplayConfig) -> str:
    """`/dev/ttyUSB0 9600 8N1` and the flow control, for logs and `tillface doctor`."""
    stop = f"{cfg.stopbits:g}"
    flow = " RTS/CTS" if cfg.rtscts else ""
    flow += " XON/XOFF" if cfg.xonxoff else ""
    return f"{cfg.port} {cfg.baud} {cfg.bytesize}{PARITY[cfg.parity]}{stop}{flow}"


def transport_settings(cfg: DisplayConfig) -> tuple[object, ...]:
    """The settings whose change needs the port reopened."""
    return (
        cfg.driver,
        cfg.port,
        cfg.baud,
        cfg.bytesize,
        cfg.parity,
        cfg.stopbits,
        cfg.rtscts,
        cfg.xonxoff,
        cfg.write_timeout_s,
    )


class SerialTransport:
    def __init__(self, cfg: DisplayConfig, exclusive: bool = True) -> None:
        """`exclusive` locks the port (a second daemon must not write the same display);
        `tillface doctor` opens it shared, so that it can check a port the daemon holds."""
        if not cfg.port:
            raise ValueError("display.port is not set")
        self.cfg = cfg
        self.description = describe(cfg)
        self._exclusive = exclusive
        self._port: serial.SerialBase | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None and self._port.is_open

    def open(self) -> None:
        cfg = self.cfg
        self._port = serial.serial_for_url(
            cfg.port,
            baudrate=cfg.baud,
            bytesize=cfg.bytesize,
            parity=PARITY[cfg.parity],
            stopbits=STOPBITS[float(cfg.stopbits)],
            rtscts=cfg.rtscts,
            xonxoff=cfg.xonxoff,
            timeout=0,  # reads never wait: the display is written, not read
            write_timeout=cfg.write_timeout_s,
            exclusive=self._exclusive or None,
        )

    def write(self, data: bytes) -> None:
        if self._port is None:
            raise serial.PortNotOpenError()
        if data:
            self._port.write(data)

    def poll(self) -> None:
        """Read and drop whatever the display sent. A vanished device (USB adapter unplugged, pty
        hung up) raises here, so a lost display is noticed even while the screen does not change."""
        if self._port is None:
            raise serial.PortNotOpenError()
        self._port.read(max(1, self._port.in_waiting))

    def cancel_write(self) -> None:
        """Abort a write blocked in another thread (POSIX ports; others time out on their own)."""
        cancel = getattr(self._port, "cancel_write", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()

    def close(self, discard: bool = True) -> None:
        """Close; with `discard`, unsent bytes are dropped first, because the kernel would otherwise
        hold the close for up to 30 s draining them into a port stopped by flow control."""
        port, self._port = self._port, None
        if port is None:
            return
        # Closing must never fail: the port may be half gone (EIO from every ioctl).
        if discard:
            with contextlib.suppress(Exception):
                port.reset_output_buffer()
        with contextlib.suppress(Exception):
            port.close()
