"""`tillface gallery import`: enrol members from a folder of consented photos."""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from .config import Config
from .imageio import ImageReadError, read_rgb
from .recognition.gallery import GalleryStore
from .vision.pipeline import FacePipeline


def import_photos(
    gallery: GalleryStore, config: Config, images: Path, labels: Path, progress: bool = True
) -> int:
    """Each CSV row (path, identity) becomes a template of member `identity`. Returns the exit code."""
    with open(labels, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("path")]
    if rows and ("identity" not in rows[0]):
        print(f"{labels}: needs the columns path,identity")
        return 65
    pipeline = FacePipeline.from_manifest(
        detector=config.vision.detector,
        embedder=config.vision.embedder,
        num_threads=config.vision.num_threads,
    )
    enrolled = skipped = 0
    bar = tqdm(rows, desc="import", unit="photo", disable=not progress)
    for row in bar:
        path = images / row["path"]
        try:
            face = pipeline.process_still(read_rgb(path), template=True)
        except ImageReadError as exc:
            bar.write(f"skipped {row['path']}: {exc}")
            skipped += 1
            continue
        if face is None:
            bar.write(f"skipped {row['path']}: no usable face found")
            skipped += 1
            continue
        gallery.upsert(row["identity"], face.embedding[None, :], source="import", persist=False)
        enrolled += 1
    gallery.save()
    print(
        f"imported {enrolled} photos, skipped {skipped}; gallery has {len(gallery.members())} members, "
        f"{gallery.size} templates (version {gallery.version})"
    )
    return 0
