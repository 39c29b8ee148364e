"""The lock in requirements/ (scripts/lock.sh) pins everything pyproject.toml asks for, with hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
# lock file -> (extras of the tillface package it installs, platform_machine)
PROFILES = {
    "dev-x86_64": (("dev", "demo"), "x86_64"),
    "dev-aarch64": (("dev", "demo"), "aarch64"),
    "demo-x86_64": (("reference", "demo", "store"), "x86_64"),
    "demo-aarch64": (("reference", "demo", "store"), "aarch64"),
    "unit-x86_64": ((), "x86_64"),
    "unit-aarch64": ((), "aarch64"),
    "unit-aarch64-picamera2": ((), "aarch64"),
    "store-x86_64": (("store",), "x86_64"),
    "store-aarch64": (("store",), "aarch64"),
    "build-x86_64": (("build",), "x86_64"),
}


def read_lock(path: Path) -> dict[str, Version]:
    """Package name -> pinned version; every pin must carry at least one hash."""
    pins: dict[str, Version] = {}
    text = path.read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\n", 1)[0]
        if first.startswith("#") or not first.strip():
            continue
        name, _, version = first.split(" ", 1)[0].partition("==")
        assert version, f"{path.name}: {first!r} is not an exact pin"
        assert "--hash=sha256:" in block, f"{path.name}: {name} has no hash"
        pins[canonicalize_name(name.split("[", 1)[0])] = Version(version)
    return pins


def wanted(pyproject: dict, extras: tuple[str, ...], machine: str) -> list[Requirement]:
    """Every requirement of the package with these extras on this machine, the package's own extras
    (`tillface[reference,...]`) followed."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    todo, seen, found = ["", *extras], set(), []
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["dependencies"] if extra == "" else optional[extra]:
            req = Requirement(line)
            env = {"platform_machine": machine, "sys_platform": "linux", "python_version": "3.11"}
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if canonicalize_name(req.name) == own:
                todo.extend(req.extras)
            else:
                found.append(req)
    return found


def problems(pyproject: dict, lock: str) -> list[str]:
    extras, machine = PROFILES[lock]
    pins = read_lock(LOCKS / f"{lock}.txt")
    out = []
    for req in wanted(pyproject, extras, machine):
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            out.append(f"{lock}: {req} is not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            out.append(f"{lock}: {req} but the lock has {pinned}")
    return out


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("lock", sorted(PROFILES))
def test_lock_pins_every_requirement_of_pyproject(pyproject, lock):
    assert problems(pyproject, lock) == [], "pyproject.toml and the lock disagree: run scripts/lock.sh"


def test_a_dependency_added_to_pyproject_alone_fails_the_check(pyproject):
    pyproject["project"]["dependencies"].append("leftpad>=1.0")
    pyproject["project"]["optional-dependencies"]["store"].append("fastapi>=999")
    assert "unit-x86_64: leftpad>=1.0 is not in the lock" in problems(pyproject, "unit-x86_64")
    found = problems(pyproject, "store-aarch64")
    assert any(p.startswith("store-aarch64: fastapi>=999 but the lock has") for p in found), found


def test_tooling_and_journald_locks_pin_what_they_install():
    assert {"pip", "setuptools", "wheel"} <= set(read_lock(LOCKS / "tooling.txt"))
    assert set(read_lock(LOCKS / "journald.txt")) == {"systemd-python"}


def test_shared_versions_are_the_tested_ones():
    """What a unit or the store runs is what the test suite (dev) ran, on both machines."""
    dev = read_lock(LOCKS / "dev-x86_64.txt")
    for lock in ("unit-x86_64", "unit-aarch64", "demo-x86_64", "demo-aarch64", "store-x86_64", "dev-aarch64"):
        pins = read_lock(LOCKS / f"{lock}.txt")
        differ = {n: (v, dev[n]) for n, v in pins.items() if n in dev and dev[n] != v}
        assert differ == {}, f"{lock} differs from dev-x86_64: {differ}"
