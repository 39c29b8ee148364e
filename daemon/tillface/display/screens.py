"""What the customer display should show now: a small state machine fed by visit events and the CRM.

- idle: nobody at the till (the store greeting).
- welcome: a `match`. The unit does not know names, so it shows its own greeting until the CRM's
  `cmd/display` for that visit brings a name and points, which then fill the welcome screen.
- visitor: a `visitor` decision: the visitor code and an invitation to join.
- message: a CRM message, shown for its TTL; then back to the current visit's screen or idle.

`left` (or the welcome TTL, in case a `left` never comes) returns to idle. A `cmd/display` is applied
only to the visit at the till: one for a visit that already left (or for another member) is dropped,
so a late CRM answer can never put the previous customer's name in front of the next one. The newest
input always decides the screen; nothing is queued. All methods take `now` (time.monotonic()).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("tillface.display")

ScreenKind = Literal["idle", "welcome", "visitor", "message"]
MAX_TTL_S = 3600.0


@dataclass(frozen=True)
class Screen:
    """One screen's content, before it is fitted to a display (see `render.py`)."""

    kind: ScreenKind
    name: str | None = None
    member_id: str | None = None
    points: int | None = None
    last_purchase: str | None = None
    suggestions: tuple[str, ...] = ()
    code: str | None = None
    message: str | None = None


IDLE = Screen("idle")


@dataclass(frozen=True)
class CrmDisplay:
    """A validated `cmd/display` (DESIGN §4): what the CRM wants shown for a visit, or a free message."""

    visit_id: str | None = None
    member_id: str | None = None
    name: str | None = None
    points: int | None = None
    last_purchase: str | None = None
    suggestions: tuple[str, ...] = ()
    message: str | None = None
    ttl_s: float | None = None


@dataclass
class _Visit:
    visit_id: str
    kind: Literal["match", "visitor"]
    since: float  # start of the welcome TTL: the decision, or the CRM's latest update
    member_id: str | None = None
    code: str | None = None
    name: str | None = None
    points: int | None = None
    last_purchase: str | None = None
    suggestions: tuple[str, ...] = field(default_factory=tuple)

    def screen(self) -> Screen:
        crm = self.name is not None or self.points is not None
        if self.kind == "visitor" and not crm:
            return Screen("visitor", code=self.code)
        return Screen(
            "welcome",
            name=self.name,
            member_id=self.member_id,
            points=self.points,
            last_purchase=self.last_purchase,
            suggestions=self.suggestions,
        )


@dataclass(frozen=True)
class _Message:
    text: str
    until: float


class ScreenState:
    def __init__(self, welcome_ttl_s: float, message_ttl_s: float) -> None:
        self.welcome_ttl_s = welcome_ttl_s
        self.message_ttl_s = message_ttl_s
        self._visit: _Visit | None = None
        self._message: _Message | None = None

    def on_event(self, record: Mapping[str, Any], now: float) -> bool:
        """A daemon event record (`tillface.events.event_record`); True if the screen may change."""
        kind = record.get("event")
        visit_id = record.get("visit_id")
        if not isinstance(visit_id, str):
            return False
        visit = self._visit if self._visit and self._visit.visit_id == visit_id else None
        if kind == "match":
            if visit is None:
                self._visit = _Visit(visit_id, "match", now, member_id=record.get("member_id"))
            else:  # a visitor upgraded to a match: keep what the CRM already sent for the visit
                visit.kind, visit.since, visit.member_id = "match", now, record.get("member_id")
        elif kind == "visitor":
            self._visit = _Visit(visit_id, "visitor", now, code=record.get("visitor_code"))
        elif kind == "left":
            if visit is None:
                return False  # a late `left` of an earlier visit
            self._visit = None
        else:
            return False
        self._message = None  # the newest input decides the screen
        return True

    def on_crm(self, cmd: CrmDisplay, now: float) -> bool:
        """A `cmd/display`; True if applied, False if dropped (not for the visit at the till)."""
        visit = self._visit
        refers = cmd.visit_id is not None or cmd.member_id is not None
        if refers and not _is_for(cmd, visit):
            log.debug("cmd/display dropped: not for the visit at the till")
            return False
        changed = False
        if refers and visit is not None:
            updates = {
                "member_id": cmd.member_id,
                "name": cmd.name,
                "points": cmd.points,
                "last_purchase": cmd.last_purchase,
                "suggestions": tuple(cmd.suggestions) or None,
            }
            for key, value in updates.items():
                if value is not None:
                    setattr(visit, key, value)
                    changed = True
            if changed:
                visit.since = now  # the CRM's update restarts the welcome TTL
        elif cmd.name is not None or cmd.points is not None:
            # Without a reference the data could belong to a customer who already left.
            log.debug("cmd/display name/points without a visit or member reference ignored")
        if cmd.message is not None:
            ttl = cmd.ttl_s if cmd.ttl_s is not None else self.message_ttl_s
            self._message = _Message(cmd.message, now + min(max(0.0, ttl), MAX_TTL_S))
            changed = True
        elif changed:
            self._message = None
        return changed

    def current(self, now: float) -> Screen:
        message = self._message
        if message is not None and now < message.until:
            return Screen("message", message=message.text)
        visit = self._visit
        if visit is not None and now < visit.since + self.welcome_ttl_s:
            return visit.screen()
        return IDLE

    def next_change(self, now: float) -> float | None:
        """When `current()` will change by itself (a TTL running out), or None."""
        times = []
        if self._message is not None and now < self._message.until:
            times.append(self._message.until)
        if self._visit is not None and now < self._visit.since + self.welcome_ttl_s:
            times.append(self._visit.since + self.welcome_ttl_s)
        return min(times) if times else None


def _is_for(cmd: CrmDisplay, visit: _Visit | None) -> bool:
    """Whether a `cmd/display` that names a visit and/or member is for the visit at the till."""
    if visit is None:
        return False
    if cmd.visit_id is not None and cmd.visit_id != visit.visit_id:
        return False
    if cmd.member_id is None:
        return True
    if cmd.visit_id is None:
        return visit.member_id == cmd.member_id  # a member reference alone must name the match
    return visit.member_id in (None, cmd.member_id)


def crm_display(
    *,
    visit_id: str | None = None,
    member_id: str | None = None,
    name: str | None = None,
    points: int | None = None,
    last_purchase: str | None = None,
    suggestions: Sequence[str] = (),
    message: str | None = None,
    ttl_s: float | None = None,
) -> CrmDisplay:
    return CrmDisplay(visit_id, member_id, name, points, last_purchase, tuple(suggestions), message, ttl_s)
