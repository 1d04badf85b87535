"""What a manifest's images are, as one digest: the key of every cache built from a dataset's pixels.

A manifest holds paths and labels, not pixels: a phantom re-rendered with another `supersample` or effect table, or
photos re-cropped with another `size` / `margin`, keep a byte-identical manifest.csv. The cached VAE and evaluator
are therefore keyed by the images' bytes too (~1 s per 10,000 small PNGs), so they are retrained exactly when
the pixels they learned from change.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def images_digest(manifest: str | os.PathLike, abspaths=None) -> str:
    """SHA-256 (16 hex) over every image the manifest names, in its row order: the path as written and the file's
    bytes. `abspaths`: the resolved paths when the caller has read the manifest already (read_manifest's
    `abspath` column), else the `path` column resolved beside the manifest."""
    manifest = Path(manifest)
    if abspaths is None:  # the `path` column as the VAE reads it: relative to the manifest's folder
        import csv

        with open(manifest, newline="", encoding="utf-8") as f:
            abspaths = [manifest.parent / row["path"] for row in csv.DictReader(f)]
    h = hashlib.sha256()
    base = manifest.resolve().parent  # resolved like the paths: a symlinked folder must not change the digest
    for path in abspaths:
        path = Path(path).resolve()
        h.update(os.path.relpath(path, base).encode("utf-8") + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
