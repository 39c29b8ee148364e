"""1,000 malformed commands against a running daemon (a real process, a real mosquitto).

Every payload is invalid by construction (random bytes, JSON that is not an object, objects with
missing, wrong, extra or oversized fields, huge strings, deep nesting, lone surrogates, unknown
command names). The daemon must stay up, answer every one of them with an `event/error` that names a
reason (in the order they were sent, on the command's topic, with the request_id when it was
readable), and not grow: its RSS after the run is within 10 MB of its RSS after the first 100.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from asyncapi_contract import Contract
from mosquitto import Mosquitto
from mqtt_peer import Peer
from signing_keys import StoreKeys
from tillface.link.schemas import COMMAND_MODELS
from tillface.recognition.gallery import create_key_file

UNIT = "tillface/s1/t1"
PAYLOADS = 1000
WARM_UP = 100
RSS_GROWTH_MAX_KB = 10 * 1024
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:"


@dataclass(frozen=True)
class Case:
    kind: str  # which family of malformation
    name: str  # the command name (last topic level)
    payload: bytes
    request_id: str | None = None  # what the error must carry back, when the payload makes it readable
    field: str | None = None  # the field the reason must name


# ---------------------------------------------------------------------- the oracle


def is_valid(name: str, payload: bytes) -> bool:
    """Would the contract accept this command? (Checked with the models, independently of the link.)"""
    model = COMMAND_MODELS.get(name)
    if model is None:
        return False
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def expected_words(case: Case) -> str | None:
    """Words the error's reason must contain for this payload (None: no particular wording)."""
    if case.name not in COMMAND_MODELS:
        return "unknown command"
    try:
        text = case.payload.decode("utf-8")
    except UnicodeDecodeError:
        return "UTF-8"
    try:
        data = json.loads(text)
    except RecursionError:
        return None
    except ValueError:
        return "not JSON"
    if not isinstance(data, dict):
        return "JSON object"
    return case.field if case.kind.startswith("field") else None  # the reason names the field at fault


# ---------------------------------------------------------------------- strategies

ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=40)
known_names = st.sampled_from(sorted(COMMAND_MODELS))
# Topic levels mosquitto accepts (no '/', '+', '#', control characters or surrogates).
unknown_names = st.one_of(
    st.sampled_from(["", "Display", "RELOAD", "enrol", "display2", "reloa", "erase", "cmd"]),
    st.text(
        alphabet=st.characters(categories=("L", "N", "Pd", "Pc", "So"), exclude_characters="/+#"),
        min_size=1,
        max_size=24,
    ),
).filter(lambda n: n not in COMMAND_MODELS)
any_names = st.one_of(known_names, unknown_names)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def valid_base(name: str, draw: st.DrawFn) -> dict[str, Any]:
    base: dict[str, Any] = {"request_id": draw(ids)}
    if name == "enroll":
        base |= {"visitor_code": "KMT-42", "member_id": draw(ids), "consent_ref": "form-17"}
    elif name == "display":
        base |= draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "member_id": ids,
                    "name": st.just("Ada"),
                    "points": st.integers(0, 10**6),
                    "suggestions": st.lists(st.just("tea"), max_size=3),
                    "message": st.just("Welcome back"),
                    "ttl_s": st.floats(0.5, 3600),
                },
            )
        )
    return base


WRONG_STRINGS = {
    # field -> strings that break its constraint
    "request_id": ["", " ", "a b", "a/b", "+", "#", "x" * 129],
    "visitor_code": ["", "kmt-42", "KMT42", "KMT-4", "KMTX-42", "KMT-42 "],
    "member_id": ["", "m 1", "m/1", "x" * 129],
    "consent_ref": ["", "c" * 201],
    "name": ["", "n" * 81],
    "message": ["", "m" * 201],
    "last_purchase": ["p" * 81],
}


@st.composite
def bad_fields(draw: st.DrawFn) -> Case:
    """A valid command with one thing wrong: a field missing, of a wrong type, out of range, or extra."""
    name = draw(known_names)
    data = valid_base(name, draw)
    fields = list(COMMAND_MODELS[name].model_fields)
    aliases = ["schema" if f == "schema_" else f for f in fields]
    required = [f for f in data if COMMAND_MODELS[name].model_fields[f].is_required()]
    how = draw(st.sampled_from(["missing", "wrong type", "wrong value", "extra", "schema"]))
    field: str | None
    if how == "missing":
        field = draw(st.sampled_from(required))
        del data[field]
    elif how == "wrong type":
        field = draw(st.sampled_from(aliases))
        data[field] = draw(json_values)
    elif how == "wrong value":
        choices = [f for f in aliases if f in WRONG_STRINGS] + (
            ["points", "ttl_s", "suggestions"] if name == "display" else []
        )
        field = draw(st.sampled_from(choices))
        if field == "points":
            data[field] = draw(st.integers(max_value=-1))
        elif field == "ttl_s":
            data[field] = draw(st.sampled_from([0, -1, 3600.5, 1e9]))
        elif field == "suggestions":
            data[field] = draw(st.sampled_from([["a", "b", "c", "d"], [""], ["s" * 41]]))
        else:
            data[field] = draw(st.sampled_from(WRONG_STRINGS[field]))
    elif how == "extra":
        field = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in aliases))
        data[field] = draw(json_values)
    else:
        field = "schema"
        data["schema"] = draw(st.one_of(st.integers().filter(lambda v: v != 1), st.text(max_size=5)))
    rid = data.get("request_id")
    readable = isinstance(rid, str) and is_id(rid)
    return Case(f"field {how}", name, dumps(data), rid if readable else None, field)


def is_id(text: str) -> bool:
    return 0 < len(text) <= 128 and not any(c.isspace() or c in "/+#" for c in text)


@st.composite
def raw_bytes(draw: st.DrawFn) -> Case:
    return Case("bytes", draw(any_names), draw(st.binary(max_size=600)))


@st.composite
def not_an_object(draw: st.DrawFn) -> Case:
    value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    return Case("not an object", draw(known_names), dumps(value))


@st.composite
def unknown_command(draw: st.DrawFn) -> Case:
    return Case("unknown command", draw(unknown_names), dumps({"request_id": draw(ids)}))


@st.composite
def huge(draw: st.DrawFn) -> Case:
    size = draw(st.sampled_from([10_000, 100_000, 300_000, 1_000_000]))
    name = draw(known_names)
    what = draw(st.sampled_from(["string field", "request_id", "extra", "garbage", "array"]))
    rid = draw(ids)
    if what == "string field":
        data = valid_base(name, draw) | {"request_id": rid}
        data["consent_ref" if name == "enroll" else "message"] = "x" * size
        field = "consent_ref" if name == "enroll" else "message"
        if name == "reload":
            field = "message"
        return Case("huge", name, dumps(data), rid, field)
    if what == "request_id":
        return Case("huge", name, dumps({"request_id": "r" * size}), None, "request_id")
    if what == "extra":
        return Case("huge", name, dumps({"request_id": rid, "blob": "b" * size}), rid, "blob")
    if what == "array":
        return Case("huge", name, dumps({"request_id": rid, "suggestions": ["s"] * (size // 5)}), rid)
    return Case("huge", name, b"{" + b"\xe2\x82\xac" * (size // 3))


@st.composite
def deep(draw: st.DrawFn) -> Case:
    depth = draw(st.sampled_from([50, 500, 2_000, 100_000]))
    name = draw(known_names)
    shape = draw(st.sampled_from(["array", "object", "inside"]))
    if shape == "array":
        return Case("deep", name, b"[" * depth + b"]" * depth)
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    if shape == "object":
        return Case("deep", name, nested)
    rid = draw(ids)
    return Case("deep", name, b'{"request_id":' + dumps(rid) + b',"x":' + nested + b"}", rid, "x")


@st.composite
def surrogates(draw: st.DrawFn) -> Case:
    """JSON with lone UTF-16 surrogate escapes: valid JSON text, but no valid Unicode string."""
    name = draw(known_names)
    lone = draw(st.sampled_from(["\\ud800", "\\udfff", "a\\ud83d", "\\udc00b"]))
    where = draw(st.sampled_from(["request_id", "key", "value"]))
    if where == "request_id":
        return Case("surrogate", name, f'{{"request_id": "{lone}"}}'.encode())
    rid = draw(ids)
    if where == "key":
        return Case("surrogate", name, f'{{"request_id": "{rid}", "{lone}": 1}}'.encode(), rid)
    return Case("surrogate", name, f'{{"request_id": "{rid}", "message": "{lone}"}}'.encode(), rid)


malformed = st.one_of(
    raw_bytes(), not_an_object(), bad_fields(), unknown_command(), huge(), deep(), surrogates()
).filter(lambda case: not is_valid(case.name, case.payload))


# ---------------------------------------------------------------------- the daemon under test


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Unit:
    proc: subprocess.Popen[bytes]
    store: Peer
    log: Path

    def errors(self) -> list[dict[str, Any]]:
        unique: dict[str, dict[str, Any]] = {}
        for m in self.store.on("/event/error"):
            body = m.json()
            unique.setdefault(body["event_id"], body)
        return list(unique.values())

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    work = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(work / "broker").start()
    state = work / "state"
    state.mkdir()
    create_key_file(state / "gallery.key")
    StoreKeys(work / "store-keys").provision("t1", state)
    config = work / "till.toml"
    config.write_text(
        f"""
[unit]
store_id = "s1"
till_id = "t1"
state_dir = "{state}"
log_level = "WARNING"

[camera]
# A camera that is not there: the daemon stays up, reopening it with back-off.
source = "replay:{work}/unplugged"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
health_interval_s = 5.0
""",
        encoding="utf-8",
    )
    log = work / "daemon.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillface", "run", "--config", str(config)],
            stdout=err,
            stderr=subprocess.STDOUT,
            env=env,
        )
    store = Peer(broker.port, [f"{UNIT}/event/error", f"{UNIT}/status"], client_id="fuzz-store")
    unit = Unit(proc, store, log)
    try:
        store.wait_for(
            lambda ms: any(m.topic.endswith("/status") and b'"online"' in m.payload for m in ms), 60
        )
        yield unit
    finally:
        store.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        broker.stop()


def test_a_thousand_malformed_commands_each_get_an_error_and_nothing_leaks(unit: Unit):
    contract = Contract()
    sent: list[Case] = []
    rss: dict[str, int] = {}
    started = time.monotonic()

    @settings(
        max_examples=PAYLOADS,
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(malformed)
    def send(case: Case) -> None:
        if len(sent) >= PAYLOADS:
            return
        unit.store.send(f"{UNIT}/cmd/{case.name}", case.payload)
        sent.append(case)
        if len(sent) == WARM_UP:
            wait_for_errors(unit, WARM_UP)
            time.sleep(0.5)
            rss["warm"] = rss_kb(unit.proc.pid)

    send()
    assert len(sent) == PAYLOADS, f"hypothesis generated {len(sent)} payloads"
    try:
        wait_for_errors(unit, PAYLOADS)
    finally:
        errors = unit.errors()
        missing = summarise_missing(unit, sent, errors)
    assert unit.proc.poll() is None, f"the daemon died:\n{unit.log_tail()}"
    time.sleep(0.5)
    rss["end"] = rss_kb(unit.proc.pid)
    elapsed = time.monotonic() - started
    print(f"{PAYLOADS} payloads in {elapsed:.1f} s; RSS {rss['warm']} kB after the warm-up, {rss['end']} kB")

    assert len(errors) == PAYLOADS, missing
    # answered in the order sent, each on its command's topic, each with a reason
    for case, error in zip(sent, errors, strict=True):
        where = f"{case.kind} on cmd/{case.name!r}: {case.payload[:80]!r} -> {error}"
        assert contract.problems(f"{UNIT}/event/error", json.dumps(error).encode()) == [], where
        assert error["topic"] == f"{UNIT}/cmd/{case.name}", where
        assert error["reason"].strip(), where
        assert (expected_words(case) or "") in error["reason"], where
        if case.request_id is not None and case.name in COMMAND_MODELS:
            assert error["request_id"] == case.request_id, where
    assert rss["end"] - rss["warm"] <= RSS_GROWTH_MAX_KB, rss
    unit.proc.send_signal(signal.SIGTERM)
    assert unit.proc.wait(timeout=20) == 0, unit.log_tail()


def wait_for_errors(unit: Unit, count: int, timeout: float = 90.0, quiet_s: float = 10.0) -> None:
    """Until `count` errors arrived, or none came for quiet_s (the rest are not coming), or timeout."""
    deadline = time.monotonic() + timeout
    seen, changed = -1, time.monotonic()
    while True:
        now = time.monotonic()
        got = len(unit.errors())
        if got >= count or now > deadline:
            return
        if unit.proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({unit.proc.returncode}):\n{unit.log_tail()}")
        if got != seen:
            seen, changed = got, now
        elif now - changed > quiet_s:
            return
        time.sleep(0.1)


def unanswered(sent: list[Case], errors: list[dict[str, Any]]) -> list[Case]:
    """The payloads that got no error: the longest in-order matching of errors to payloads."""

    def answers(case: Case, error: dict[str, Any]) -> bool:
        return (
            error["topic"] == f"{UNIT}/cmd/{case.name}"
            and (case.request_id is None or error.get("request_id") == case.request_id)
            and (expected_words(case) or "") in error["reason"]
        )

    n, m = len(sent), len(errors)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if answers(sent[i], errors[j]):
                best[i][j] = best[i + 1][j + 1] + 1
            else:
                best[i][j] = max(best[i + 1][j], best[i][j + 1])
    missing, i, j = [], 0, 0
    while i < n:
        # a payload any error on its topic would answer is the one left out when it makes no difference
        weak = sent[i].request_id is None and expected_words(sent[i]) is None
        if weak and best[i + 1][j] == best[i][j]:
            missing.append(sent[i])
            i += 1
        elif j < m and answers(sent[i], errors[j]) and best[i][j] == best[i + 1][j + 1] + 1:
            i, j = i + 1, j + 1
        elif j < m and best[i][j + 1] >= best[i + 1][j]:
            j += 1
        else:
            missing.append(sent[i])
            i += 1
    return missing


def summarise_missing(unit: Unit, sent: list[Case], errors: list[dict[str, Any]]) -> str:
    """Which payloads got no error, by kind, with examples."""
    if len(errors) >= len(sent):
        return ""
    kinds: dict[str, list[Case]] = {}
    for case in unanswered(sent, errors):
        kinds.setdefault(case.kind, []).append(case)
    lines = [f"{len(sent) - len(errors)} of {len(sent)} malformed commands got no event/error:"]
    for kind, cases in kinds.items():
        examples = ", ".join(f"cmd/{c.name} {c.payload[:50]!r}" for c in cases[:3])
        lines.append(f"  {kind}: {len(cases)}, e.g. {examples}")
    crashes: dict[str, int] = {}
    for line in unit.log.read_text(errors="replace").splitlines():
        if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line):
            crashes[line[:140]] = crashes.get(line[:140], 0) + 1
    lines.append("exceptions in the daemon's log:")
    lines += [f"  {n} x {line}" for line, n in sorted(crashes.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)
