"""Short visitor codes shown on the customer display (DESIGN §1 step 9), e.g. `KMT-42`.

Format: 3 letters, `-`, 2 digits. The alphabets leave out every character that is easily misread on
a 5x7 dot-matrix pole display or misheard when read aloud, and all vowels so that no code spells a word:

- letters `CDFHJKMNPQRTVWXY` (16): no vowels (A E I O U), no I/L (vs 1), O (vs 0), S (vs 5),
  Z (vs 2), B (vs 8), G (vs 6);
- digits `2346789` (7): no 0 (vs O), 1 (vs I/L), 5 (vs S).

That gives 16^3 x 7^2 = 200,704 codes per day per till, far above a till's daily visitors. Codes are
drawn with `secrets` and are unique within one local calendar day at one till; the set of used codes
starts afresh at local midnight. Codes only need to be unique while a visitor's enrolment window is
open (`enroll_ttl_s`), so a day is ample.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable
from datetime import date, datetime

LETTERS = "CDFHJKMNPQRTVWXY"
DIGITS = "2346789"
N_LETTERS = 3
N_DIGITS = 2
CODE_SPACE = len(LETTERS) ** N_LETTERS * len(DIGITS) ** N_DIGITS  # 200,704
CODE_PATTERN = re.compile(rf"^[{LETTERS}]{{{N_LETTERS}}}-[{DIGITS}]{{{N_DIGITS}}}$")
_RANDOM_TRIES = 64  # random draws before falling back to picking among the free codes


class VisitorCodesExhausted(RuntimeError):
    """Every code of the day has been issued."""


def code_from_index(index: int) -> str:
    """The code with number `index` in 0..CODE_SPACE-1 (a bijection)."""
    if not 0 <= index < CODE_SPACE:
        raise ValueError(f"index must be in 0..{CODE_SPACE - 1}")
    chars: list[str] = []
    for _ in range(N_DIGITS):
        index, d = divmod(index, len(DIGITS))
        chars.append(DIGITS[d])
    chars.append("-")
    for _ in range(N_LETTERS):
        index, c = divmod(index, len(LETTERS))
        chars.append(LETTERS[c])
    return "".join(reversed(chars))


def is_valid_code(code: str) -> bool:
    return bool(CODE_PATTERN.match(code))


def normalize_code(text: str) -> str | None:
    """A code as typed by a cashier or CRM (`kmt42`, `KMT 42`, ` kmt-42 `) in canonical form, or None."""
    compact = re.sub(r"[\s\-_]", "", text).upper()
    if len(compact) != N_LETTERS + N_DIGITS:
        return None
    code = f"{compact[:N_LETTERS]}-{compact[N_LETTERS:]}"
    return code if is_valid_code(code) else None


class VisitorCodes:
    """Issues codes unique within the local day; thread-safe.

    `clock` returns the current local time (injectable for tests); the day is `clock().date()`.
    """

    def __init__(self, clock: Callable[[], datetime] = datetime.now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._day: date | None = None
        self._used: set[int] = set()

    def _roll_over(self) -> None:
        today = self._clock().date()
        if today != self._day:
            self._day = today
            self._used = set()

    def issue(self) -> str:
        """A fresh code, never issued before today at this till."""
        with self._lock:
            self._roll_over()
            if len(self._used) >= CODE_SPACE:
                raise VisitorCodesExhausted(
                    f"all {CODE_SPACE} visitor codes of {self._day} are used; new codes start at midnight"
                )
            for _ in range(_RANDOM_TRIES):
                index = secrets.randbelow(CODE_SPACE)
                if index not in self._used:
                    break
            else:  # nearly full: choose uniformly among what is left
                index = secrets.choice([i for i in range(CODE_SPACE) if i not in self._used])
            self._used.add(index)
            return code_from_index(index)

    def issued_today(self) -> int:
        with self._lock:
            self._roll_over()
            return len(self._used)

    def __contains__(self, code: object) -> bool:
        """Whether `code` was issued today."""
        if not isinstance(code, str) or not is_valid_code(code):
            return False
        with self._lock:
            self._roll_over()
            return _index_of(code) in self._used


def _index_of(code: str) -> int:
    letters, digits = code.split("-")
    index = 0
    for ch in letters:
        index = index * len(LETTERS) + LETTERS.index(ch)
    for ch in digits:
        index = index * len(DIGITS) + DIGITS.index(ch)
    return index
