"""The customer display over serial (DESIGN §5): screens, drivers (`escpos`, `jsonl`), the transport.

    display = make_display(config.display)   # driver "none": a display whose state stays "off"
    display.start()
    display.on_event(record)                 # match / visitor / left records from tillface.events
    display.show_crm(visit_id=..., name=..., points=...)   # a validated cmd/display
    display.reconfigure(new_config.display)  # SIGHUP
    display.state                            # "off" | "connected" | "reconnecting"
    display.stop()

Modules: `screens` (what to show, from events, CRM commands and TTLs), `text` (code pages,
transliteration, fitting), `render` (a screen as the lines of one display), `drivers` (the bytes),
`transport` (pyserial), `worker` (the thread that writes, reopens and reports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .screens import CrmDisplay, Screen
from .worker import Display, DisplayState

if TYPE_CHECKING:
    from ..config import DisplayConfig

__all__ = ["CrmDisplay", "Display", "DisplayState", "Screen", "make_display"]


def make_display(cfg: DisplayConfig) -> Display:
    """The daemon's display; with driver "none" it keeps no thread and its state is "off" (a SIGHUP
    that sets a driver starts it)."""
    return Display(cfg)
