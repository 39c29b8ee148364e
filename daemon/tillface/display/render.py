"""A `Screen` as the lines of one display: the config's texts filled in and fitted to columns × rows.

The welcome screen's lines, most important first (a 2-row display shows the first two that apply):
the name line (`welcome_name_text`, or `welcome_text` while the CRM has sent no name), the points
line, the last purchase line, then one line per suggestion. A name that cannot be shown in the code
page (see `text.py`) is replaced by the member's code. A name or code that does not fit its place in
the template is shortened (names only: `text.fit_name`), else put alone on its line; a code is never cut
while it fits a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .screens import Screen
from .text import Charset, centre, fit_name, layout, name_candidates, truncate

if TYPE_CHECKING:
    from ..config import DisplayConfig


def render_lines(screen: Screen, cfg: DisplayConfig, charset: Charset) -> list[str]:
    """The screen's text lines, each at most `cfg.columns` cells, at most `cfg.rows` of them, not padded."""
    width = cfg.columns
    if screen.kind == "visitor":
        code = charset.text(screen.code or "")
        lines = _template(cfg.visitor_text, charset, width, "code", [code], shorten=False)
    elif screen.kind == "welcome":
        lines = _welcome(screen, cfg, charset)
    elif screen.kind == "message":
        lines = [charset.text(screen.message or "")]
    else:
        lines = _template(cfg.idle_text, charset, width)
    return layout(lines, width, cfg.rows, charset.ellipsis)


def aligned(lines: Sequence[str], cfg: DisplayConfig) -> list[str]:
    """Exactly `cfg.rows` lines of exactly `cfg.columns` cells, aligned as configured."""
    padded = [*lines, *[""] * (cfg.rows - len(lines))][: cfg.rows]
    if cfg.align == "centre":
        return [centre(line, cfg.columns) for line in padded]
    return [line.ljust(cfg.columns)[: cfg.columns] for line in padded]


def _welcome(screen: Screen, cfg: DisplayConfig, charset: Charset) -> list[str]:
    width = cfg.columns
    name = charset.name(screen.name) if screen.name else None
    if name is not None:
        lines = _template(cfg.welcome_name_text, charset, width, "name", name_candidates(name))
    elif screen.name and screen.member_id:
        # A name the display cannot show (e.g. CJK on a cp437 VFD): the member's code instead.
        code = charset.text(screen.member_id)
        lines = _template(cfg.welcome_name_text, charset, width, "name", [code], shorten=False)
    else:
        lines = _template(cfg.welcome_text, charset, width)
    if screen.points is not None:
        lines += _template(cfg.points_text, charset, width, "points", [screen.points])
    if screen.last_purchase:
        last = charset.text(screen.last_purchase)
        lines += _template(cfg.last_purchase_text, charset, width, "last_purchase", [last])
    lines += [charset.text(s) for s in screen.suggestions]
    return lines


def _template(
    text: str,
    charset: Charset,
    width: int,
    key: str | None = None,
    candidates: Sequence[Any] = (),
    shorten: bool = True,
) -> list[str]:
    """The template's lines with `{key}` filled in by the first candidate value that lets its line fit
    `width`; failing that the value alone on the line (shortened with `fit_name` if `shorten`)."""
    out = []
    for raw in text.split("\n"):
        line = charset.text(raw)
        if key is None or "{" + key not in line:
            out.append(line.format())  # the config allows no other placeholder (`{{` → `{`)
            continue
        filled = [line.format(**{key: value}) for value in candidates]
        fitting = [f for f in filled if len(f) <= width]
        if fitting:
            out.append(fitting[0])
            continue
        alone = str(candidates[0])
        if shorten:
            out.append(fit_name(alone, width))
        else:
            out.append(alone if len(alone) <= width else truncate(alone, width, charset.ellipsis))
    return out
