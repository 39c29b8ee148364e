"""Builds scripted till visits from real faces-dev photos (rendered at test time, never committed)."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tillface.imageio import read_rgb
from tillface.scenario import ScriptedVisit, VisitTruth, render_visits


@dataclass(frozen=True)
class Scenario:
    replay_dir: Path
    truth: list[VisitTruth]
    enrol_csv: Path  # path,identity of the enrolment photos
    members: set[str]
    strangers: set[str]


def lfw_identities(faces: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Standard LFW photos: identities with >= 2 photos, and the single-photo identities."""
    by_id: dict[str, list[str]] = defaultdict(list)
    with open(faces / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["tags"] == "lfw_250_full":
                by_id[row["identity"]].append(row["path"])
    multi = {k: sorted(v) for k, v in sorted(by_id.items()) if len(v) >= 2}
    single = {k: v[0] for k, v in sorted(by_id.items()) if len(v) == 1}
    return multi, single


def pick_identities(
    faces: Path, members: int, strangers: int, rng: random.Random, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """Members (LFW identities with >= 2 photos) and strangers (single-photo identities)."""
    multi, single = lfw_identities(faces)
    return rng.sample(sorted(set(multi) - exclude), members), rng.sample(
        sorted(set(single) - exclude), strangers
    )


def build_scenario(
    faces: Path,
    out: Path,
    members: int,
    strangers: int,
    seed: int = 0,
    exclude: frozenset[str] = frozenset(),
    **render: float,
) -> Scenario:
    """`exclude`: identities not to draw (a held-back scenario shares no one with another)."""
    multi, single = lfw_identities(faces)
    rng = random.Random(seed)
    member_ids, stranger_ids = pick_identities(faces, members, strangers, rng, exclude)
    visits = [ScriptedVisit(read_rgb(faces / multi[m][1]), m) for m in member_ids]
    visits += [ScriptedVisit(read_rgb(faces / single[s]), s) for s in stranger_ids]
    rng.shuffle(visits)
    truth = render_visits(visits, out / "replay", seed=seed, **render)  # type: ignore[arg-type]
    enrol_csv = out / "enrol.csv"
    with open(enrol_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity"])
        for m in member_ids:
            w.writerow([multi[m][0], m])
    return Scenario(out / "replay", truth, enrol_csv, set(member_ids), set(stranger_ids))


def write_config(path: Path, state_dir: Path, source: str, fps: int = 15, extra: str = "") -> Path:
    path.write_text(
        f"""
[unit]
store_id = "s1"
till_id = "t1"
state_dir = "{state_dir}"

[camera]
source = "{source}"
fps = {fps}
{extra}
""",
        encoding="utf-8",
    )
    return path
