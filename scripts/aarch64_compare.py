"""The two halves of the aarch64 check (scripts/check_aarch64.sh) and their comparison.

  reference    on x86 (the dev venv): picks faces-dev photos, runs the unit's FacePipeline on each
               (detect → align → embed) and both models on random inputs; writes every model input and
               output to an .npz.
  run          on arm64 under qemu-user: the same photos through the same code, the same random inputs,
               x86's detector inputs where this machine's differ, and the chips that x86's keypoints give;
               writes its own .npz.
  compare      on x86: prints the figures and exits 1 naming each failed criterion.
  lock-subset  prints a lock file's blocks (with their hashes) for the packages named.

The criteria, each on identical inputs, so that one stage's rounding is not charged to the next:
- embedder: the cosine of arm64's descriptor of a chip to x86's descriptor of the same chip (arm64's own
  chips from the full path, and random chips) is at least 0.9999;
- detector: BlazeFace's outputs on the same input differ by float rounding only (relative 1e-5), every
  photo takes the same detector passes, and the keypoints move by less than 0.01 px;
- alignment: x86's keypoints give arm64 the very chip they gave x86 (OpenCV's warp, equalisation);
- XNNPACK: both models have DELEGATE nodes.
The end-to-end cosine (each side's own chip) is printed too, without a bound: keypoints that differ by
~1e-5 px flip the bilinear rounding of a few chip pixels by one level, and int8 SFace turns that into a
cosine of about 0.99 (it does the same between two x86 frames a hair apart).

Interpreters are watched through a subclass of LiteRT's Interpreter put in place before tillface imports
it, so the check sees exactly the interpreters the unit makes: after allocate_tensors XNNPACK's
partitions are DELEGATE nodes in _get_ops_details() (LiteRT applies XNNPACK silently, and skips it just as
silently when it cannot make out the CPU). `run --no-xnnpack` builds them with
OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, which is how the check is shown to fail then.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import platform
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

MIN_EMBEDDER_COSINE = 0.9999
# Observed ≤ 2e-6 of each output tensor's largest magnitude; 1e-5 is still rounding (~80 float32 ulps),
# a wrong kernel is orders of magnitude off.
MAX_DETECTOR_RELATIVE = 1e-5
MAX_KEYPOINT_PX = 0.05


def faces_root() -> Path:
    return Path(os.environ.get("TILLFACE_FACES", REPO.parent / "shared" / "faces-dev"))


class Watch:
    """Every interpreter the unit creates, and each invoke's inputs and outputs."""

    def __init__(self, no_xnnpack: bool = False) -> None:
        from ai_edge_litert import interpreter as lite

        self.made: list[tuple[str, Any]] = []
        self.calls: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = []
        watch = self

        class Watched(lite.Interpreter):  # type: ignore[misc, name-defined]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                if no_xnnpack:
                    kwargs["experimental_op_resolver_type"] = (
                        lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                    )
                super().__init__(*args, **kwargs)
                self.model_name = Path(str(kwargs.get("model_path", args[0] if args else "?"))).name
                watch.made.append((self.model_name, self))

            def invoke(self) -> None:
                inputs = [self.get_tensor(d["index"]) for d in self.get_input_details()]
                super().invoke()
                outputs = [self.get_tensor(d["index"]) for d in self.get_output_details()]
                watch.calls.append((self.model_name, inputs, outputs))

        lite.Interpreter = Watched

    def interpreter(self, model_name: str) -> Any:
        return next(it for name, it in self.made if name == model_name)

    def xnnpack(self) -> dict[str, np.ndarray]:
        """'xnnpack:<model file>' → [DELEGATE nodes, other nodes] after allocate_tensors."""
        out = {}
        for name, it in self.made:
            ops = [o["op_name"] for o in it._get_ops_details()]
            out[f"xnnpack:{name}"] = np.array([ops.count("DELEGATE"), len(ops) - ops.count("DELEGATE")])
        return out

    def take_calls(self) -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
        calls, self.calls = self.calls, []
        return calls


def feed(interpreter: Any, x: np.ndarray) -> list[np.ndarray]:
    """One invoke with input `x`; the outputs in model order."""
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def model_files() -> tuple[str, str]:
    """The files of the unit's default detector and embedder."""
    from tillface.models import DEFAULT_EMBEDDER, load_manifest
    from tillface.vision.pipeline import DETECTOR_IDS

    manifest = load_manifest()
    return manifest.get(DETECTOR_IDS["short"]).file, manifest.get(DEFAULT_EMBEDDER).file


def candidate_photos(faces: Path, seed: int) -> list[str]:
    """faces-dev photos in a fixed order taking turns between its sources (LFW full and tight apart)."""
    groups: dict[str, list[str]] = defaultdict(list)
    with open(faces / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = row["source"]
            if key == "lfw_deepfunneled_subset":
                key += ":" + row["tags"].split(";")[0]
            groups[key].append(row["path"])
    rng = random.Random(seed)
    lists = []
    for key in sorted(groups):
        paths = sorted(groups[key])
        rng.shuffle(paths)
        lists.append(paths)
    return [p[i] for i in range(max(map(len, lists))) for p in lists if i < len(p)]


def pixels_sha(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()[:16]


def run_photos(watch: Watch, paths: list[str], wanted: int | None, ref: Any = None) -> dict[str, np.ndarray]:
    """The unit's path on each photo (with `wanted`: until that many photos had a face)."""
    from tillface.imageio import read_rgb
    from tillface.vision.align import align_for
    from tillface.vision.detector import Detection
    from tillface.vision.pipeline import FacePipeline

    faces = faces_root()
    _, embedder_file = model_files()
    t0 = time.perf_counter()
    pipeline = FacePipeline.from_manifest()
    out: dict[str, np.ndarray] = {"load_s": np.float64(time.perf_counter() - t0)}
    used: list[str] = []
    t0 = time.perf_counter()
    for path in paths:
        rgb = read_rgb(faces / path)
        watch.take_calls()
        obs = pipeline.process_still(rgb)
        detector_calls = [c for c in watch.take_calls() if c[0] != embedder_file]
        if obs is None and wanted is not None:
            continue
        p = f"photo{len(used)}"
        used.append(path)
        out[f"{p}_sha"] = np.array(pixels_sha(rgb))
        out[f"{p}_found"] = np.array(obs is not None)
        out[f"{p}_ndet"] = np.int64(len(detector_calls))
        for j, (_, inputs, outputs) in enumerate(detector_calls):
            out[f"{p}_det{j}_in"] = inputs[0]
            for k, o in enumerate(outputs):
                out[f"{p}_det{j}_out{k}"] = o
        if obs is not None:
            out[f"{p}_kps"] = obs.detection.keypoints
            out[f"{p}_chip"] = pipeline.assess(rgb, obs.detection)[0]
            out[f"{p}_emb"] = obs.embedding
        if ref is not None and f"{p}_kps" in ref.files:
            # What x86's keypoints give on this machine: the warp alone, then with the unit's
            # equalisation of dark chips.
            same = Detection(box=ref[f"{p}_box"], keypoints=ref[f"{p}_kps"], score=float(ref[f"{p}_score"]))
            out[f"{p}_warp_x86_kps"] = align_for(rgb, same.keypoints, pipeline.embedder.chip)
            out[f"{p}_chip_x86_kps"] = pipeline.assess(rgb, same)[0]
        elif obs is not None:
            out[f"{p}_box"] = obs.detection.box
            out[f"{p}_score"] = np.float64(obs.detection.score)
            out[f"{p}_warp"] = align_for(rgb, obs.detection.keypoints, pipeline.embedder.chip)
        if wanted is not None and len(used) >= wanted:
            break
    out["photos"] = np.array(used)
    out["photos_s"] = np.float64(time.perf_counter() - t0)
    return out


def cmd_reference(args: argparse.Namespace) -> int:
    faces = faces_root()
    if not (faces / "labels.csv").is_file():
        print(f"faces-dev not found at {faces}; set TILLFACE_FACES to the photo folder", file=sys.stderr)
        return 2
    watch = Watch()
    out = run_photos(watch, candidate_photos(faces, args.seed), wanted=args.chips)
    if len(out["photos"]) < args.chips:
        print(f"only {len(out['photos'])} faces found in faces-dev, {args.chips} asked", file=sys.stderr)
        return 2
    detector_file, embedder_file = model_files()
    det, emb = watch.interpreter(detector_file), watch.interpreter(embedder_file)
    rng = np.random.default_rng(args.seed)
    for i in range(args.random):
        # BlazeFace takes [-1, 1]; the embedder a chip's 0..255 as float32, as the unit feeds it.
        x = rng.uniform(-1.0, 1.0, tuple(det.get_input_details()[0]["shape"])).astype(np.float32)
        out[f"rand{i}_det_in"] = x
        for k, o in enumerate(feed(det, x)):
            out[f"rand{i}_det_out{k}"] = o
        c = rng.integers(0, 256, tuple(emb.get_input_details()[0]["shape"])).astype(np.float32)
        out[f"rand{i}_emb_in"] = c
        out[f"rand{i}_emb_out"] = feed(emb, c)[0]
    out["random"] = np.int64(args.random)
    out.update(watch.xnnpack())
    np.savez(args.out, **out)
    print(f"x86 reference: {len(out['photos'])} faces-dev photos with a face, {args.random} random inputs")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    ref = np.load(args.ref, allow_pickle=False)
    watch = Watch(no_xnnpack=args.no_xnnpack)
    out = run_photos(watch, [str(p) for p in ref["photos"]], wanted=None, ref=ref)
    detector_file, embedder_file = model_files()
    det, emb = watch.interpreter(detector_file), watch.interpreter(embedder_file)
    t0 = time.perf_counter()
    for i in range(len(ref["photos"])):
        p = f"photo{i}"
        for j in range(int(ref[f"{p}_ndet"])):
            key = f"{p}_det{j}_in"
            if key not in out or not np.array_equal(out[key], ref[key]):
                for k, o in enumerate(feed(det, ref[key])):
                    out[f"{p}_det{j}_direct{k}"] = o
    for i in range(int(ref["random"])):
        for k, o in enumerate(feed(det, ref[f"rand{i}_det_in"])):
            out[f"rand{i}_det_out{k}"] = o
        out[f"rand{i}_emb_out"] = feed(emb, ref[f"rand{i}_emb_in"])[0]
    out["random_s"] = np.float64(time.perf_counter() - t0)
    out.update(watch.xnnpack())
    out["machine"] = np.array(platform.machine())
    np.savez(args.out, **out)
    return 0


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-300))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over the largest magnitude in the reference tensor b."""
    diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
    return float(diff / max(float(np.max(np.abs(b.astype(np.float64)))), 1e-30))


def cmd_compare(args: argparse.Namespace) -> int:
    from tillface.vision.pipeline import FacePipeline

    ref = np.load(args.ref, allow_pickle=False)
    got = np.load(args.got, allow_pickle=False)
    cpu = args.cpu
    photos = [str(p) for p in ref["photos"]]
    n, nrand = len(photos), int(ref["random"])
    # x86's descriptors of arm64's own chips: the embedder compared on identical inputs.
    pipeline = FacePipeline.from_manifest()

    chip_cos, rand_cos, end_cos = [], [], []
    same_pixels = same_chips = aligned_same = found = compared_calls = 0
    align_diff = equalise_diff = equalised = 0
    kp_px = det_rel = 0.0
    disagree = []
    for i, path in enumerate(photos):
        p = f"photo{i}"
        same_pixels += str(ref[f"{p}_sha"]) == str(got[f"{p}_sha"])
        nref, ngot = int(ref[f"{p}_ndet"]), int(got[f"{p}_ndet"])
        if nref != ngot:
            disagree.append(f"{path}: {ngot} detector passes on aarch64, {nref} on x86")
        for j in range(nref):
            identical_input = j < ngot and np.array_equal(got[f"{p}_det{j}_in"], ref[f"{p}_det{j}_in"])
            k = 0
            while f"{p}_det{j}_out{k}" in ref.files:
                mine = got[f"{p}_det{j}_out{k}"] if identical_input else got[f"{p}_det{j}_direct{k}"]
                det_rel = max(det_rel, relative(mine, ref[f"{p}_det{j}_out{k}"]))
                k += 1
            compared_calls += 1
        if not bool(got[f"{p}_found"]):
            disagree.append(f"{path}: no face on aarch64")
            continue
        found += 1
        kp_px = max(kp_px, float(np.max(np.abs(got[f"{p}_kps"] - ref[f"{p}_kps"]))))
        chip = got[f"{p}_chip"]
        chip_cos.append(cosine(got[f"{p}_emb"], pipeline.embedder.embed(chip)))
        end_cos.append(cosine(got[f"{p}_emb"], ref[f"{p}_emb"]))
        same_chips += np.array_equal(chip, ref[f"{p}_chip"])
        warp = got[f"{p}_warp_x86_kps"]
        aligned_same += np.array_equal(warp, ref[f"{p}_warp"])
        align_diff = max(align_diff, int(np.max(np.abs(warp.astype(int) - ref[f"{p}_warp"].astype(int)))))
        if not np.array_equal(ref[f"{p}_warp"], ref[f"{p}_chip"]):  # a dark chip, equalised
            equalised += 1
            diff = np.abs(got[f"{p}_chip_x86_kps"].astype(int) - ref[f"{p}_chip"].astype(int))
            equalise_diff = max(equalise_diff, int(diff.max()))
    for i in range(nrand):
        rand_cos.append(cosine(got[f"rand{i}_emb_out"], ref[f"rand{i}_emb_out"]))
        k = 0
        while f"rand{i}_det_out{k}" in ref.files:
            det_rel = max(det_rel, relative(got[f"rand{i}_det_out{k}"], ref[f"rand{i}_det_out{k}"]))
            k += 1
    emb_cos = np.array(chip_cos + rand_cos)
    xnn = {k.split(":", 1)[1]: got[k] for k in got.files if k.startswith("xnnpack:")}
    xnn_ref = {k.split(":", 1)[1]: ref[k] for k in ref.files if k.startswith("xnnpack:")}

    print(
        f"{cpu}: embedder cosine to x86 min {emb_cos.min():.7f} mean {emb_cos.mean():.7f} "
        f"({len(chip_cos)} faces-dev chips from the full path, {nrand} random chips)"
    )
    print(
        f"{cpu}: detector max relative difference {det_rel:.1e} ({compared_calls} passes on the photos, "
        f"{nrand} random inputs); keypoints max {kp_px:.1e} px; faces {found}/{n}"
    )
    print(
        f"{cpu}: alignment: x86's keypoints give x86's warped chip {aligned_same}/{found}; photos decoded "
        f"identically {same_pixels}/{n}; dark chips equalised (CLAHE) {equalised}, differing from x86's "
        f"by up to {equalise_diff} levels"
    )
    e = np.array(end_cos)
    print(
        f"{cpu}: end to end (each side's own chip): cosine min {e.min():.4f} mean {e.mean():.4f}, "
        f"chips identical {same_chips}/{found} (no bound: sub-pixel keypoint rounding)"
    )
    print(
        f"{cpu}: XNNPACK nodes: "
        + ", ".join(
            f"{name} {int(v[0])} DELEGATE (x86 {int(xnn_ref.get(name, [0])[0])})"
            for name, v in sorted(xnn.items())
        )
    )
    if args.seconds is not None:
        print(
            f"{cpu}: time {args.seconds:.0f} s under qemu (start {float(got['load_s']):.1f} s, {n} photos "
            f"{float(got['photos_s']):.0f} s, random and direct inputs {float(got['random_s']):.0f} s)"
        )

    failures = []
    if emb_cos.min() < MIN_EMBEDDER_COSINE:
        failures.append(f"embedder cosine to x86 {emb_cos.min():.7f} is below {MIN_EMBEDDER_COSINE}")
    if det_rel > MAX_DETECTOR_RELATIVE:
        failures.append(
            f"detector disagrees with x86 beyond float rounding: relative difference {det_rel:.1e} "
            f"> {MAX_DETECTOR_RELATIVE:.0e}"
        )
    if kp_px > MAX_KEYPOINT_PX or disagree:
        failures.append(
            f"detector disagrees with x86 on the photos: keypoints {kp_px:.1e} px (bound {MAX_KEYPOINT_PX})"
            + "".join(f"; {d}" for d in disagree[:3])
        )
    if aligned_same != found:
        failures.append(
            f"alignment differs from x86's on {found - aligned_same} chips (by up to {align_diff})"
        )
    missing = sorted(name for name, v in xnn.items() if int(v[0]) == 0)
    if missing or not xnn:
        failures.append(f"XNNPACK was not in use: no DELEGATE node in {', '.join(missing) or 'any model'}")
    if str(got["machine"]) != "aarch64":
        failures.append(f"the arm64 half ran on {got['machine']}, not aarch64")
    for failure in failures:
        print(f"FAIL {cpu}: {failure}")
    return 1 if failures else 0


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cmd_lock_subset(args: argparse.Namespace) -> int:
    wanted = {canonical(n) for n in args.names}
    found = set()
    keep = False
    for line in Path(args.lock).read_text().splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            keep = canonical(m.group(1)) in wanted
            if keep:
                found.add(canonical(m.group(1)))
        elif not line.startswith(" "):
            keep = False
        if keep and not line.lstrip().startswith("#"):
            print(line)
    if wanted - found:
        print(f"{args.lock} pins none of: {', '.join(sorted(wanted - found))}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reference")
    p.add_argument("--out", required=True)
    p.add_argument("--chips", type=int, default=24)
    p.add_argument("--random", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("--ref", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-xnnpack", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("--ref", required=True)
    p.add_argument("--got", required=True)
    p.add_argument("--cpu", required=True)
    p.add_argument("--seconds", type=float)
    p = sub.add_parser("lock-subset")
    p.add_argument("lock")
    p.add_argument("names", nargs="+")
    args = parser.parse_args()
    commands = {
        "reference": cmd_reference,
        "run": cmd_run,
        "compare": cmd_compare,
        "lock-subset": cmd_lock_subset,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
