"""The pictures a training run draws of itself, written in the dataset manifest format for the evaluator.

- `sample_grid`: every disease (held-out ones too) x stage. Copy k of a disease keeps one noise across its stages
  (a row of the sheet holds `per_cell` progressions of one face each, and stage is compared on one face), and every
  disease and copy has a noise of its own, so the set metrics (KID, FID, tstr, top-1) see as many independent faces
  as diseases x copies (before 909957c, 2026-12-02, copy k of every disease shared one noise: the default run's 104
  diseased images came from 2 noises). `shared_noise=True` keeps that old layout for the validation grids, where one
  face across diseases shows whether the generator reads its tokens at all.
- `transform_set`: test identities' real images turned into each disease at the top stage (healthy -> diseased) and
  diseased images back to healthy, by SDEdit (the input's latent noised to `strength`, then denoised with the target
  condition); the rows carry `source_image` so the evaluator measures identity preservation.
- `write_set` / `save_grid`: PNGs + manifest.csv (dataset columns plus the request), and a labelled contact sheet.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cache import atomic_path
from .editing import prepare_image
from .generator import Request
from .requests import file_safe


def save_png(image, path: Path) -> Path:
    """A PIL image written under a temporary name and renamed: a killed run leaves no truncated PNG."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def seed_order_of(ids: list[str], seed_order: list[str] | None) -> list[str]:
    """The disease ids whose places fix each disease's noise: `seed_order` (all the run's profiles), then any of
    `ids` it lacks; without it, `ids` themselves."""
    order = list(seed_order or ids)
    return order + [d for d in ids if d not in order]


def grid_requests(profiles, stages, per_cell: int, seed: int, shared_noise: bool = False,
                  seed_order: list[str] | None = None):
    """The grid's requests and manifest rows, every seed distinct but across one disease's stages: profile i's copy k
    starts from seed + i * per_cell + k at every stage; healthy, which has no stages, gets a face per cell from the
    seeds after all profiles' (seed + len(profiles) * per_cell + ...), so no two diseases share a face.
    shared_noise: copy k of every disease starts from seed + k instead (one face down a column of the sheet).
    seed_order: disease ids whose positions give i (default: the profiles' own order), so that a run which cannot
    draw some of them (class tokens skip the held-out diseases) draws the others from the same noise as a run that
    draws them all: a baselines run pairs its conditionings' requests by (disease, stage, seed)."""
    if any(not p.healthy for p in profiles) and any(float(s) != int(s) for s in stages):
        # a manifest label must say what was drawn
        raise ValueError(f"samples.stages={list(stages)}: the run's samples are drawn at whole stages "
                         f"0-3 (continuous severities: python -m kgface.generate stages=...)")
    order = seed_order_of([p.disease_id for p in profiles], seed_order)
    slot = {d: i for i, d in enumerate(order)}
    reqs, rows = [], []
    healthy_base = seed + len(order) * per_cell
    for p in profiles:
        i = slot[p.disease_id]
        for k in range(per_cell):
            for j, s in enumerate(stages):
                sd = (healthy_base + k * len(stages) + j if p.healthy
                      else seed + k if shared_noise else seed + i * per_cell + k)
                reqs.append(Request(p, 0.0 if p.healthy else float(s), sd))
                rows.append({"disease": p.disease_id, "stage": 0 if p.healthy else int(s), "seed": sd,
                             "mode": "sample"})
    return reqs, rows


def sample_grid(generator, profiles, stages, per_cell: int, seed: int, shared_noise: bool = False,
                seed_order: list[str] | None = None):
    """Images for every (profile, stage), laid out by `grid_requests`; returns (images, manifest rows)."""
    reqs, rows = grid_requests(profiles, stages, per_cell, seed, shared_noise, seed_order)
    _note_requested(generator, reqs, rows)
    return generator.sample(reqs), rows


def _note_requested(generator, reqs, rows) -> None:
    """A generator that draws phenotype sets records each image's set in its row."""
    drawn = generator.requested_phenotypes(reqs)
    for row, ids in zip(rows, drawn or []):
        row["requested_phenotypes"] = ids


def transform_jobs(profiles, test_df, identities: int, seed: int, seed_order: list[str] | None = None) -> list:
    """`transform_set`'s jobs, (source abspath, target profile, stage, seed): the first `identities` healthy test
    identities -> every disease at stage 3, then one stage-3 test face of each disease -> healthy. seed_order: as
    `grid_requests`'s, the disease ids whose places fix each job's noise (default: the profiles' order)."""
    by_id = {p.disease_id: p for p in profiles}
    healthy = next((p for p in profiles if p.healthy), None)
    if healthy is None or not len(test_df):
        return []
    test = test_df[test_df["disease"].isin(by_id)]
    ids = sorted(test.loc[test["disease"] == "healthy", "identity"].unique())[:identities]
    # job j of the full set (every disease of seed_order) starts from seed + j, whichever of them this run draws
    full_sick = [d for d in seed_order_of(list(by_id), seed_order) if d != healthy.disease_id]
    sick_all = test_df[(test_df["stage"].astype(int) == 3) & test_df["disease"].isin(full_sick)]
    back_slot = {d: m for m, d in enumerate(sorted(sick_all["disease"].unique()))}
    jobs = []  # (source abspath, target profile, stage, seed)
    for n, ident in enumerate(ids):
        src = test[(test["identity"] == ident) & (test["disease"] == "healthy")].iloc[0]
        jobs += [(src["abspath"], p, 3, seed + n * len(full_sick) + full_sick.index(p.disease_id))
                 for p in profiles if not p.healthy]
    sick = test[(test["stage"].astype(int) == 3) & (test["disease"] != "healthy")]
    for d, group in sick.groupby("disease"):
        jobs.append((group.sort_values("identity").iloc[0]["abspath"], healthy, 0,
                     seed + len(ids) * len(full_sick) + back_slot[d]))
    return jobs


def transform_set(generator, profiles, test_df, identities: int, strength: float, seed: int,
                  seed_order: list[str] | None = None):
    """SDEdit transformations of `identities` test identities (`transform_jobs`): healthy image -> every disease at
    stage 3, and a stage-3 image of each disease -> healthy. Returns (images, rows); rows carry `source_image`
    (absolute)."""
    jobs = transform_jobs(profiles, test_df, identities, seed, seed_order)
    if not jobs:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), []
    size = generator.backbone.image_size
    sources = torch.stack([prepare_image(path, size, notes=False) for path, _, _, _ in jobs])
    reqs = [Request(p, float(s), sd) for _, p, s, sd in jobs]
    images = []
    for i in range(0, len(reqs), 32):
        init = generator.encode(sources[i:i + 32])
        images.append(generator.decode(generator.latents(reqs[i:i + 32], init_latents=init, strength=strength)))
    rows = [{"disease": p.disease_id, "stage": s, "seed": sd, "mode": "transform", "source_image": str(path)}
            for path, p, s, sd in jobs]
    _note_requested(generator, reqs, rows)
    return torch.cat(images), rows


def write_set(images: torch.Tensor, rows: list[dict], folder: Path, heldout: set[str], name: str = "manifest.csv"
              ) -> Path:
    """folder/images/*.png + folder/<name> (the dataset format plus the request), for the evaluator."""
    from PIL import Image

    from ..data.manifest import write_manifest

    out = []
    for i, (img, r) in enumerate(zip(images, rows)):
        mode = r.get("mode", "sample")
        rel = f"images/{mode}_{file_safe(r['disease'])}_s{r['stage']}_seed{r['seed']}.png"  # an IRI holds slashes
        save_png(Image.fromarray(img.permute(1, 2, 0).numpy()), folder / rel)
        out.append({"path": rel, "identity": f"seed-{r['seed']}", "disease": r["disease"], "stage": r["stage"],
                    "severity": float(r["stage"]), "split": "test", "source": "generated", "phenotypes": "{}",
                    "mode": mode, "requested_disease": r["disease"], "requested_stage": r["stage"],
                    "seed": r["seed"], "source_image": r.get("source_image", ""), "heldout": r["disease"] in heldout,
                    # the phenotype set the generator drew for this image ('' when it conditions on whole profiles)
                    "requested_phenotypes": json.dumps(r["requested_phenotypes"]) if "requested_phenotypes" in r
                    else ""})
    return write_manifest(out, folder / name)


def fit_label(text: str, width: int) -> str:
    """`text` cut to `width` characters, a cut marked '..', keeping a trailing ' (...)' remark whole where it fits:
    a long name must not lose what marks it (train runs label held-out diseases 'Name (held out)')."""
    if len(text) <= width:
        return text
    head, sep, remark = text.rpartition(" (")
    if sep and remark.endswith(")") and len(sep + remark) + 3 <= width:
        return head[:width - len(sep + remark) - 2] + ".." + sep + remark
    return text[:max(width - 2, 0)] + ".."


def save_grid(images: torch.Tensor, rows: list[dict], names: dict, path: Path, columns: list[str]) -> Path:
    """A contact sheet: one row per disease (in first-seen order), cells in `rows` order, column titles given."""
    from ..sheets import labelled_sheet

    diseases = list(dict.fromkeys(r["disease"] for r in rows))
    # the healthy row holds stage-0 faces of other seeds under every column: its label says so, not the headers
    note = {"healthy": " (all stage 0)"}
    sheet_rows = [(f"{d}{note.get(d, '')}\n{fit_label(names.get(d, ''), 26)}",
                   [images[i] for i, r in enumerate(rows) if r["disease"] == d][:len(columns)]) for d in diseases]
    return save_png(labelled_sheet(sheet_rows, columns=columns, label_width=170), path)


def save_pairs(sources: list[str], images: torch.Tensor, rows: list[dict], names: dict, path: Path,
               per_row: int = 6) -> Path:
    """Before/after pairs of a transform set: source image above, its transformation below, titled by target."""
    from PIL import Image, ImageDraw

    size = images.shape[-1]
    n = len(rows)
    ncol = min(per_row, n)
    nrow = (n + ncol - 1) // ncol
    cell_h = 2 * size + 14
    sheet = Image.new("RGB", (ncol * (size + 4), nrow * (cell_h + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (src, img, r) in enumerate(zip(sources, images, rows)):
        x, y = (i % ncol) * (size + 4), (i // ncol) * (cell_h + 4)
        # the crop the transformation edited (a squashed whole photo before 2026-12-07)
        before = Image.fromarray(prepare_image(Path(src), size, notes=False).permute(1, 2, 0).numpy())
        sheet.paste(before, (x, y))
        sheet.paste(Image.fromarray(img.permute(1, 2, 0).numpy()), (x, y + size))
        draw.text((x + 1, y + 2 * size), fit_label("-> " + names.get(r["disease"], r["disease"]), size // 6),
                  fill="black")
    return save_png(sheet, path)
