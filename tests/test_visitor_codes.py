"""Visitor codes: format, per-day uniqueness, midnight roll-over, exhaustion."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta

import pytest

from tillface.recognition import visitor_codes as vc
from tillface.recognition.visitor_codes import (
    CODE_SPACE,
    DIGITS,
    LETTERS,
    VisitorCodes,
    VisitorCodesExhausted,
    code_from_index,
    is_valid_code,
    normalize_code,
)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_alphabet_and_space() -> None:
    assert not set(LETTERS) & set("AEIOUILOSZBG")
    assert not set(DIGITS) & set("015")
    assert len(set(LETTERS)) == len(LETTERS) == 16 and len(set(DIGITS)) == len(DIGITS) == 7
    assert CODE_SPACE == 16**3 * 7**2 == 200_704


def test_format() -> None:
    codes = VisitorCodes()
    for _ in range(500):
        code = codes.issue()
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", code), code
        assert is_valid_code(code)
        assert set(code[:3]) <= set(LETTERS) and set(code[4:]) <= set(DIGITS)


def test_index_is_a_bijection() -> None:
    seen = {code_from_index(i) for i in range(CODE_SPACE)}
    assert len(seen) == CODE_SPACE and all(is_valid_code(c) for c in list(seen)[:1000])
    assert all(vc._index_of(code_from_index(i)) == i for i in range(0, CODE_SPACE, 97))
    with pytest.raises(ValueError):
        code_from_index(CODE_SPACE)


def test_unique_within_a_day() -> None:
    clock = Clock(datetime(2024, 5, 1, 9, 0))
    codes = VisitorCodes(clock)
    issued = []
    for i in range(20_000):
        clock.now += timedelta(seconds=2)  # still 1 May
        issued.append(codes.issue())
        if i == 0:
            assert issued[0] in codes
    assert clock.now.date() == datetime(2024, 5, 1).date()
    assert len(set(issued)) == len(issued) == codes.issued_today()


def test_new_day_starts_afresh() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 59, 58))
    codes = VisitorCodes(clock)
    first = codes.issue()
    assert first in codes and codes.issued_today() == 1
    clock.now = datetime(2024, 5, 2, 0, 0, 1)
    assert codes.issued_today() == 0 and first not in codes
    # A full day ends at midnight: every code is available again the next day.
    clock.now = datetime(2024, 5, 2, 12, 0)
    codes._used = set(range(CODE_SPACE))
    with pytest.raises(VisitorCodesExhausted, match=r"200704 visitor codes of 2024-05-02"):
        codes.issue()
    clock.now = datetime(2024, 5, 3, 0, 0)
    assert is_valid_code(codes.issue())


def test_last_free_codes_are_found_then_exhausted() -> None:
    codes = VisitorCodes(Clock(datetime(2024, 5, 1, 12, 0)))
    codes.issue()  # sets the day
    free = {5, 77_777, CODE_SPACE - 1}
    codes._used = set(range(CODE_SPACE)) - free
    got = {codes.issue() for _ in range(3)}
    assert got == {code_from_index(i) for i in free}
    with pytest.raises(VisitorCodesExhausted):
        codes.issue()


def test_normalize_code() -> None:
    code = code_from_index(12345)
    assert normalize_code(code) == code
    assert normalize_code(code.lower().replace("-", "")) == code
    assert normalize_code(f"  {code[:3].lower()} {code[4:]} ") == code
    assert normalize_code("ABC-12") is None  # A and 1 are not in the alphabets
    assert normalize_code("KMT-4") is None and normalize_code("") is None
    assert "not-a-code" not in VisitorCodes()


def test_thread_safe() -> None:
    codes = VisitorCodes()
    results: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(codes.issue() for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    issued = [c for r in results for c in r]
    assert len(set(issued)) == len(issued) == 8000
