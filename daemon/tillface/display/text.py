"""Text for a character display: what a code page can show, and fitting text to lines of N cells.

Names and messages come from the store CRM, so they are cleaned first: Unicode NFC (so that `e` +
combining accent becomes the one `é` a code page has), control characters become spaces (a name
must never smuggle display commands such as `ESC @` onto the wire), runs of spaces collapse.

Characters the code page lacks are transliterated with `anyascii` (`Анна` → `Anna` on a cp437
display) when `transliterate` is on, else shown as `?`. Names are stricter: a name in CJK script
(Han, kana, Hangul), whose romanisation would be a guess at its reading, or a name that would need
`?`, is not shown at all; the caller shows the member's code instead (DESIGN §5).

Fitting a name that is too long, in this order: the full name; first word + initial of the last word
(`Christopher M.`); the first word alone; the first word cut, with `.` marking the abbreviation.
Other text is word-wrapped, and a line that still does not fit is cut at a word boundary (when that
keeps most of the line) and ends with `…` (or `.` where the code page has no `…`).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from anyascii import anyascii

# Unicode blocks of CJK scripts: Hangul Jamo, CJK radicals/symbols, kana, Bopomofo, Hangul
# compatibility Jamo, CJK ideographs (+ extension A), Hangul syllables, compatibility ideographs,
# half-width kana/Hangul, and the supplementary ideograph planes.
_CJK_RANGES = (
    (0x1100, 0x11FF),
    (0x2E80, 0x2FDF),
    (0x3000, 0x30FF),
    (0x3100, 0x318F),
    (0x31A0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xF900, 0xFAFF),
    (0xFF65, 0xFFDC),
    (0x20000, 0x3FFFF),
)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def clean(text: str) -> str:
    """NFC, control and format characters as spaces, whitespace runs collapsed, ends stripped."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    return " ".join(text.split())


class Charset:
    """What one display can show: a single-byte code page, or any Unicode (`codec=None`, JSON lines)."""

    def __init__(self, codec: str | None, transliterate: bool = True) -> None:
        self.codec = codec
        self.transliterate = transliterate
        self.ellipsis = "…" if self.can_show("…") else "."

    def can_show(self, char: str) -> bool:
        return self.codec is None or _encodable(char, self.codec)

    def text(self, text: str) -> str:
        """`text` cleaned and made showable; characters with no place in the code page are
        transliterated (or `?`)."""
        return self._convert(clean(text)) or ""

    def name(self, name: str) -> str | None:
        """A name made showable, or None when it cannot be shown faithfully (CJK script, or a
        character that is neither in the code page nor transliterated)."""
        name = clean(name)
        if not name or any(is_cjk(c) and not self.can_show(c) for c in name):
            return None
        if not self.transliterate and not all(self.can_show(c) for c in name):
            return None
        shown = self._convert(name)
        return " ".join(shown.split()) or None

    def encode(self, text: str) -> bytes:
        """Bytes for the display; `text` comes from `text()`/`name()`, so nothing is replaced."""
        return text.encode(self.codec or "utf-8", errors="replace")

    def _convert(self, text: str) -> str:
        out: list[str] = []
        run: list[str] = []  # characters the code page lacks, transliterated together

        def flush() -> None:
            if run:
                word = "".join(run)
                latin = anyascii(word) if self.transliterate else "?" * len(word)
                out.append("".join(c if self.can_show(c) else "?" for c in latin))
                run.clear()

        for char in text:
            if self.can_show(char):
                flush()
                out.append(char)
            else:
                run.append(char)
        flush()
        return "".join(out)


@lru_cache(maxsize=4096)
def _encodable(char: str, codec: str) -> bool:
    try:
        return len(char.encode(codec)) == 1
    except UnicodeError:
        return False


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap; a word longer than a line is split across lines."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > width:
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:width])
            word = word[width:]
        if not word:
            continue
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current or not lines:
        lines.append(current)
    return lines


def truncate(text: str, width: int, marker: str) -> str:
    """`text` cut to `width` cells ending in `marker`; at a word boundary when that keeps at least
    60% of the room (so `Thank you for visit…` rather than `Thank…`)."""
    if len(text) <= width:
        return text
    room = max(0, width - len(marker))
    cut = text.rfind(" ", 0, room + 1)
    head = text[:cut] if cut >= 0.6 * room else text[:room]
    return head.rstrip(" ,;:-") + marker


def name_candidates(name: str) -> list[str]:
    """Ever shorter forms of a name: full, first + last initial, first word (see the module doc)."""
    words = name.split()
    out = [" ".join(words)]
    if len(words) > 1:
        out += [f"{words[0]} {words[-1][0]}.", words[0]]
    return out


def fit_name(name: str, width: int) -> str:
    """The longest form of `name` from `name_candidates` that fits `width` cells, else its first word
    cut with `.` (an abbreviation mark, whatever the code page)."""
    candidates = name_candidates(name)
    for candidate in candidates:
        if len(candidate) <= width:
            return candidate
    return truncate(candidates[-1], width, ".") if width > 1 else candidates[-1][:width]


def centre(text: str, width: int) -> str:
    """`text` padded with spaces to exactly `width` cells, centred (an odd space goes right)."""
    left = max(0, width - len(text)) // 2
    return (" " * left + text).ljust(width)[:width]


def layout(lines: list[str], width: int, rows: int, marker: str) -> list[str]:
    """Logical lines (most important first) onto at most `rows` display lines of `width` cells.

    A long line wraps into the rows that the lines after it leave free (each later line keeps one
    row while rows last); what still does not fit is cut with `marker`. Lines beyond `rows` are dropped.
    """
    out: list[str] = []
    for index, line in enumerate(lines):
        later = len(lines) - index - 1
        room = rows - len(out) - min(later, max(0, rows - len(out) - 1))
        if room <= 0:
            break
        wrapped = wrap(line, width)
        if len(wrapped) > room:
            rest = " ".join(wrapped[room - 1 :])
            wrapped = [*wrapped[: room - 1], truncate(rest, width, marker)]
        out.extend(wrapped)
    return out[:rows]
