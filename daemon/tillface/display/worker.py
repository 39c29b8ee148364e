"""The customer display's own thread: recognition never waits for the serial port.

Callers (the daemon loop, the MQTT link) only update the screen state under a lock and wake the
worker; the worker renders the newest screen and writes it. Nothing is queued: a screen that was
superseded before the worker got to it is simply never sent, so a slow port shows the latest screen
late rather than a backlog of stale ones. A write or poll that fails closes the port, the state turns
`reconnecting`, and the port is reopened with exponential back-off (`reopen_backoff_s`), sending the
driver's greeting (initialise, code page) and the current screen once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .drivers import Driver, make_driver
from .screens import IDLE, ScreenState, crm_display
from .transport import SerialTransport, transport_settings

if TYPE_CHECKING:
    from ..config import DisplayConfig

log = logging.getLogger("tillface.display")

DisplayState = Literal["off", "connected", "reconnecting"]
# How often an unchanged screen's port is polled, so an unplugged display shows in `health` soon.
POLL_INTERVAL_S = 1.0


class Display:
    """The customer display (see the package doc). All public methods are thread-safe and never block
    on the port; `stop()` returns within about `write_timeout_s` even with a dead port."""

    def __init__(self, cfg: DisplayConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self._cond = threading.Condition()
        self._screens = ScreenState(cfg.welcome_ttl_s, cfg.message_ttl_s)
        self._thread: threading.Thread | None = None
        self._transport: SerialTransport | None = None
        self._started = False
        self._stopping = False
        self._dirty = False
        self._reopen = False
        self._state: DisplayState = "off"
        self._screen: str | None = None  # the kind of the screen last written
        self._writes = 0
        self._failures = 0
        self._last_error: str | None = None

    # ---- lifecycle ----
    def start(self) -> None:
        with self._cond:
            self._started, self._stopping = True, False
            self._start_worker()

    def stop(self) -> None:
        """Stop the worker. It puts the idle screen up first (no name stays on the display after the
        daemon stops) if the port takes it within `write_timeout_s`."""
        with self._cond:
            self._started = False
            self._stopping = True
            thread, transport = self._thread, self._transport
            self._cond.notify_all()
        if thread is None:
            return
        thread.join(self._cfg.write_timeout_s + 0.5)
        if thread.is_alive() and transport is not None:
            transport.cancel_write()  # a write stuck on the port (POSIX ports can be interrupted)
            thread.join(0.5)
        if thread.is_alive():
            log.warning("display worker did not stop in time; left behind (daemon thread)")

    def reconfigure(self, cfg: DisplayConfig) -> None:
        """SIGHUP: texts and TTLs apply at once; changed port settings or driver reopen the port."""
        with self._cond:
            old, self._cfg = self._cfg, cfg
            self._screens.welcome_ttl_s = cfg.welcome_ttl_s
            self._screens.message_ttl_s = cfg.message_ttl_s
            if cfg == old:
                return
            self._reopen = self._reopen or transport_settings(cfg) != transport_settings(old)
            self._dirty = True
            if self._started:
                self._start_worker()  # driver "none" → something: the worker starts now
            self._cond.notify_all()

    # ---- inputs ----
    def on_event(self, record: Mapping[str, Any]) -> None:
        """A daemon event record; `match`, `visitor` and `left` change the screen, others are ignored."""
        with self._cond:
            if self._screens.on_event(record, self._clock()):
                self._wake()

    def show_crm(
        self,
        *,
        visit_id: str | None = None,
        member_id: str | None = None,
        name: str | None = None,
        points: int | None = None,
        last_purchase: str | None = None,
        suggestions: Sequence[str] = (),
        message: str | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """A validated `cmd/display` from the store CRM (see `screens.py` for what is applied)."""
        cmd = crm_display(
            visit_id=visit_id,
            member_id=member_id,
            name=name,
            points=points,
            last_purchase=last_purchase,
            suggestions=suggestions,
            message=message,
            ttl_s=ttl_s,
        )
        with self._cond:
            if self._screens.on_crm(cmd, self._clock()):
                self._wake()

    # ---- state ----
    @property
    def state(self) -> DisplayState:
        with self._cond:
            return self._state

    def health(self) -> dict[str, Any]:
        with self._cond:
            return {
                "state": self._state,
                "driver": self._cfg.driver,
                "port": self._cfg.port,
                "screen": self._screen,
                "writes": self._writes,
                "failures": self._failures,
                "last_error": self._last_error,
            }

    # ---- the worker ----
    def _wake(self) -> None:
        self._dirty = True
        self._cond.notify_all()

    def _start_worker(self) -> None:
        """Under the lock: start the worker if the display is on and none is running."""
        if self._cfg.driver == "none" or self._thread is not None:
            return
        self._state = "reconnecting"  # until the first open succeeds
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        self._thread.start()

    def _set_state(self, state: DisplayState, error: str | None = None) -> None:
        with self._cond:
            before, self._state = self._state, state
            if error is not None:
                self._last_error = error
                self._failures += 1
        if state == "connected" and before != "connected":
            log.info("customer display connected on %s", self._cfg.port)
        elif error is not None and (before == "connected" or self._failures == 1):
            # Once per loss, not once per attempt: a display unplugged for hours must not flood the log.
            log.warning(
                "customer display on %s unavailable (%s); reopening with back-off", self._cfg.port, error
            )
        elif error is not None:
            log.debug("customer display on %s still unavailable: %s", self._cfg.port, error)

    def _run(self) -> None:
        transport: SerialTransport | None = None
        driver: Driver | None = None
        driver_cfg: DisplayConfig | None = None
        greeted = False  # the driver's greeting went out on this open port
        written: bytes | None = None  # the bytes of the screen on the display; None: unknown
        delay = retry_at = next_poll = 0.0
        try:
            while True:
                with self._cond:
                    cfg, reopen, stopping = self._cfg, self._reopen, self._stopping
                    self._reopen = self._dirty = False
                    now = self._clock()
                    screen = IDLE if stopping else self._screens.current(now)
                    change_at = self._screens.next_change(now)
                    if cfg.driver == "none" and not stopping:
                        self._thread = None  # under the lock, so that reconfigure() can start a new one
                        return
                if stopping and transport is None:
                    return
                if reopen and transport is not None:
                    transport.close()
                    transport, delay, retry_at = None, 0.0, 0.0
                if driver_cfg is not cfg:  # new texts, code page, size: re-greet and redraw
                    driver, driver_cfg, greeted, written = make_driver(cfg), cfg, False, None
                assert driver is not None
                if transport is None and now >= retry_at:
                    transport = SerialTransport(cfg)
                    with self._cond:
                        self._transport = transport
                    try:
                        transport.open()
                    except Exception as exc:  # LinkError, or anything else odd: try again later
                        transport.close()
                        transport = None
                        delay = min(max(delay * 2, cfg.reopen_backoff_s[0]), cfg.reopen_backoff_s[1])
                        retry_at = now + delay
                        self._set_state("reconnecting", str(exc))
                    else:
                        greeted, written, delay = False, None, 0.0
                        self._set_state("connected")
                if transport is not None:
                    try:
                        if not greeted:
                            transport.write(driver.greeting())
                            greeted = True
                        data = driver.frame(screen)
                        if data != written:
                            transport.write(data)
                            written = data
                            with self._cond:
                                self._writes += 1
                                self._screen = screen.kind
                        elif now >= next_poll:
                            transport.poll()
                            next_poll = now + POLL_INTERVAL_S
                    except Exception as exc:  # LinkError, or anything else odd: treat the port as lost
                        transport.close()
                        transport = None
                        delay = cfg.reopen_backoff_s[0]
                        retry_at = now + delay
                        self._set_state("reconnecting", str(exc))
                if stopping:
                    if transport is not None and written is not None:
                        # Let the UART send the idle screen before close() discards what is unsent.
                        bits = len(written) * (cfg.bytesize + 2) / cfg.baud
                        time.sleep(min(cfg.write_timeout_s, bits + 0.05))
                    return
                self._sleep(change_at, retry_at if transport is None else next_poll)
        finally:
            if transport is not None:
                transport.close()
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._thread is None:  # not replaced by a newer worker (see reconfigure)
                    self._transport = None
                    self._state = "off"

    def _sleep(self, *until: float | None) -> None:
        """Wait for an input, a TTL running out, or the next reopen/poll, whichever is first."""
        with self._cond:
            if self._dirty or self._stopping:
                return
            deadline = min((t for t in until if t is not None), default=None)
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            self._cond.wait(timeout)
