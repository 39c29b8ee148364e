"""`tillface gallery import`: enrol members from a folder of consented photos."""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from .config import Config
from .imageio import ImageReadError, read_rgb
from .recognition.gallery import GalleryStore, check_member_id
from .vision.pipeline import FacePipeline

EXIT_DATAERR = 65


def _rows_problems(rows: list[dict[str, str]], images: Path, consent_ref: str | None) -> list[str]:
    """Every reason the CSV cannot be imported as it is, one per bad row (nothing is imported then)."""
    root = images.resolve()
    problems = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            check_member_id(row.get("identity") or "")
        except ValueError as exc:
            problems.append(f"line {line}: identity: {exc}")
        if not ((row.get("consent_ref") or "").strip() or consent_ref):
            problems.append(f"line {line}: no consent reference (a consent_ref column, or --consent-ref)")
        # A labels file must not reach photos outside --images (absolute paths, '..', symlinks out).
        if not (root / row["path"]).resolve().is_relative_to(root):
            problems.append(f"line {line}: path {row['path']!r} is outside --images {images}")
    return problems


def import_photos(
    gallery: GalleryStore,
    config: Config,
    images: Path,
    labels: Path,
    progress: bool = True,
    consent_ref: str | None = None,
) -> int:
    """Each CSV row (path, identity[, consent_ref]) becomes a template of member `identity`, enrolled
    with the row's consent reference or `consent_ref`. Returns the exit code; a CSV with any bad row
    imports nothing."""
    with open(labels, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("path")]
    if rows and ("identity" not in rows[0]):
        print(f"{labels}: needs the columns path,identity (and consent_ref, or --consent-ref)")
        return EXIT_DATAERR
    problems = _rows_problems(rows, images, consent_ref)
    if problems:
        print(f"{labels}: nothing imported; fix these rows and run tillface gallery import again:")
        for problem in problems:
            print(f"  {problem}")
        return EXIT_DATAERR
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
        consent = (row.get("consent_ref") or "").strip() or consent_ref
        gallery.upsert(
            row["identity"], face.embedding[None, :], source="import", persist=False, consent_ref=consent
        )
        enrolled += 1
    gallery.save()
    print(
        f"imported {enrolled} photos, skipped {skipped}; gallery has {len(gallery.members())} members, "
        f"{gallery.size} templates (version {gallery.version})"
    )
    return 0
