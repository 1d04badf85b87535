"""`python -m kgface.generate run=RUN_DIR mode=... hydra.run.dir=OUT` — pictures from a trained run (docs/generation.md).

Modes:
- `sample`: diseases x stages x seeds (stage may be continuous: a severity in [0, 3]).
- `transform`: input image(s) (IMAGE | DIR | MANIFEST.csv) -> the same face with `target` (a disease or `healthy`) at
  `stage`: SDEdit (the input's latent pushed `strength` up the noise ladder, then denoised with the KG condition).
  `mask=` / `keep=` restrict the change: the output is composited in pixel space, mask*generated + (1-mask)*input, so
  pixels outside the mask are the input's exactly. `inversion=true` starts from the input's deterministic DDIM
  inversion (under `source_disease` / `source_stage`) instead of random noise. Every output gets pixel-space SSIM /
  PSNR to its input (`identity_ssim`, `identity_psnr`) and, when the run has an evaluator, the cosine of the
  evaluator's image features (`identity_similarity`); generation.json holds the means, or says why there is none.
- `progression`: one identity through stages 0..3 (or `frames=N` severities) with shared noise, so only the disease
  changes; `input=` starts from a photo. A strip PNG and an animated GIF per identity.
- `compose`: diseases the run never trained on (by KG id) or a custom phenotype set with intensities.
Any mode: `identity_adapter=CKPT identity_image=FACE|input|EMBEDS` stacks a user's IP-Adapter with the KG adapter
(kgface.diffusion.adapter.stack_ip_adapter), so outputs keep the reference's identity; `identity_scale` weighs it.
Outputs: OUT/images/*.png, OUT/manifest.csv (dataset format + request columns), OUT/grid.png, OUT/generation.json.
Everything is validated before anything is generated, written to a staging folder and moved in at the end.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import entry
from .errors import UserError
from .sheets import to_pil

log = logging.getLogger("kgface.generate")

MODES = ("sample", "transform", "progression", "compose")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Regions of a centred, square face crop as boxes (top, bottom, left, right) in fractions of the side: a heuristic
# for aligned crops (face_crop / the phantom layout), not a face parser.
REGIONS = {
    "hair": [(0.0, 0.18, 0.0, 1.0)],
    "forehead": [(0.12, 0.32, 0.2, 0.8)],
    "brows": [(0.28, 0.38, 0.18, 0.82)],
    "eyes": [(0.34, 0.50, 0.18, 0.82)],
    "nose": [(0.42, 0.66, 0.38, 0.62)],
    "cheeks": [(0.48, 0.72, 0.12, 0.38), (0.48, 0.72, 0.62, 0.88)],
    "mouth": [(0.68, 0.82, 0.30, 0.70)],
    "chin": [(0.80, 0.96, 0.30, 0.70)],
    "ears": [(0.35, 0.65, 0.0, 0.12), (0.35, 0.65, 0.88, 1.0)],
}


@dataclass
class Item:
    """One output image: the request, its manifest fields, and (transform) the source image and edit mask."""
    request: object
    row: dict
    group: str                               # grid row / progression strip
    source: torch.Tensor | None = None       # uint8 [3, S, S], the prepared input
    source_name: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- inputs
def _as_list(value, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, DictConfig):
        raise UserError(f"{key}= parsed as a dict ({OmegaConf.to_container(value)}); write a quoted list, e.g. "
                        f"'{key}=[\"HP:0000316=0.8\",\"HP:0000508=0.3\"]'")
    if isinstance(value, (ListConfig, list, tuple)):
        return list(value)
    return [value]


def parse_phenotypes(value) -> dict[str, float]:
    """The `phenotypes=` override -> {HPO id: intensity}; an unquoted dict (`{HP:0000316: 0.8}`, which Hydra reads as
    {'HP': '0000316: 0.8'}) and an empty set are errors."""
    from .encoders import parse_phenotype_spec

    items = _as_list(value, "phenotypes")
    bad = [i for i in items if not str(i).strip().upper().startswith("HP:")]
    if bad:
        raise UserError(f"phenotypes= item {bad[0]!r} is not 'HP:NNNNNNN=intensity'; write "
                        "'phenotypes=[\"HP:0000316=0.8\",\"HP:0000508=0.3\"]' (quoted)")
    spec = parse_phenotype_spec([str(i) for i in items])
    if not spec:
        raise UserError("phenotypes= is empty; give at least one visible HPO term, e.g. "
                        "'phenotypes=[\"HP:0000316=0.8\"]'")
    return spec


def input_files(spec) -> list[tuple[Path, str]]:
    """(image path, identity) for input=IMAGE | DIR | MANIFEST.csv."""
    if spec in (None, ""):
        raise UserError("this mode needs input=IMAGE, a folder of images or a manifest .csv")
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise UserError(f"input={path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not files:
            raise UserError(f"input={path} holds no images ({', '.join(IMAGE_EXTS)})")
        return [(p, p.stem) for p in files]
    if path.suffix.lower() == ".csv":
        from .data.manifest import read_manifest

        df, _ = read_manifest(path)
        return [(Path(a), str(i) or Path(a).stem) for a, i in zip(df["abspath"], df["identity"])]
    return [(path, path.stem)]


def prepare_image(path: Path, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: decoded to RGB and centre-cropped/resized when needed (each with a logged note)."""
    import numpy as np

    from .data.images import face_crop, load_rgb

    img = load_rgb(path)  # unreadable / truncated / not an image: ImageError (one line)
    if img.info.get("source_mode", "RGB") != "RGB":
        log.warning("%s: converted %s to RGB", path, img.info["source_mode"])
    if img.size != (size, size):
        log.warning("%s: %dx%d is not the model's %dx%d; centre-cropped and resized", path, *img.size, size, size)
        img = face_crop(img, size)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def region_mask(names, size: int) -> torch.Tensor:
    """[1, S, S] float: 1 inside the union of the named regions (REGIONS), 0 elsewhere."""
    m = torch.zeros(1, size, size)
    for name in names:
        if str(name) not in REGIONS:
            raise UserError(f"mask region '{name}' is unknown; use a PNG or regions from {', '.join(REGIONS)}")
        for top, bottom, left, right in REGIONS[str(name)]:
            m[:, round(top * size):round(bottom * size), round(left * size):round(right * size)] = 1.0
    return m


def edit_mask(mask, keep, size: int) -> torch.Tensor | None:
    """Where the output may differ from the input ([1, S, S] in [0, 1], feathered inward), or None (everywhere)."""
    if mask is None and keep is None:
        return None
    if mask is None:
        m = torch.ones(1, size, size)
    elif isinstance(mask, (ListConfig, list, tuple)):
        m = region_mask(mask, size)
    else:
        from PIL import Image

        from .data.images import load_rgb

        img = load_rgb(Path(str(mask)).expanduser()).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        import numpy as np

        m = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    if keep is not None:
        m = m * (1 - region_mask(_as_list(keep, "keep"), size))
    if float(m.max()) == 0.0:
        raise UserError("the mask leaves nothing to change (mask minus keep is empty)")
    # feather the edge inside the edit region only: pixels outside stay exactly the input's
    soft = torch.nn.functional.avg_pool2d(m[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return torch.minimum(m, soft)


# ----------------------------------------------------------------------------------------------------- metrics
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM of two uint8 [3, H, W] images (uniform window, per channel; as skimage's defaults)."""
    x, y = a.float()[None], b.float()[None]
    w = min(window, x.shape[-1], x.shape[-2])
    pool = lambda t: torch.nn.functional.avg_pool2d(t, w, stride=1)  # noqa: E731
    mx, my = pool(x), pool(y)
    n = w * w
    vx = (pool(x * x) - mx * mx) * n / (n - 1)
    vy = (pool(y * y) - my * my) * n / (n - 1)
    cxy = (pool(x * y) - mx * my) * n / (n - 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def find_evaluator(cfg: DictConfig, run_dir: Path) -> tuple[object | None, str]:
    """(evaluator or None, where it came from / why there is none): `evaluator_dir=PATH`, else RUN_DIR/evaluator (a
    baselines generator RUN_DIR/<mode>: the run's shared OUT/evaluator); `evaluator_dir=false` skips it."""
    from .evaluation import load_evaluator

    if cfg.evaluator_dir is False:
        return None, "evaluator_dir=false: identity_similarity not computed"
    if cfg.evaluator_dir not in (None, "", True):
        path = Path(str(cfg.evaluator_dir)).expanduser()
        if not path.exists():
            raise UserError(f"evaluator_dir={path} does not exist; give a saved evaluator folder (RUN_DIR/evaluator)")
        return load_evaluator(path), str(path)
    folders = [run_dir / "evaluator"]
    if not (run_dir / "config.yaml").is_file():  # a baselines sub-run: the evaluator is the parent run's
        folders.append(run_dir.parent / "evaluator")
    for folder in folders:
        if (folder / "evaluator.json").is_file():
            return load_evaluator(folder), str(folder)
    return None, (f"run={run_dir} has no evaluator/ (train it with evaluate=true, or pass evaluator_dir=PATH): "
                  "identity_similarity not computed")


def identity_scores(items: list[Item], images: torch.Tensor, evaluator=None) -> dict:
    """Per output with a source: identity_ssim / identity_psnr (pixels) and, with an evaluator, identity_similarity
    (cosine of its L2-normalised CLIP image features, source vs output), into each item's row; returns the means."""
    from .evaluation.metrics import identity_similarity

    idx = [i for i, it in enumerate(items) if it.source is not None]
    if not idx:
        return {}
    for i in idx:
        items[i].row["identity_ssim"] = round(ssim(items[i].source, images[i]), 4)
        items[i].row["identity_psnr"] = round(psnr(items[i].source, images[i]), 2)
    means = {"images": len(idx),
             "identity_ssim": round(sum(items[i].row["identity_ssim"] for i in idx) / len(idx), 4),
             "identity_psnr": round(sum(items[i].row["identity_psnr"] for i in idx) / len(idx), 2)}
    if evaluator is not None:
        src = evaluator.features(torch.stack([items[i].source for i in idx]))
        out = evaluator.features(images[idx])
        for k, i in enumerate(idx):
            items[i].row["identity_similarity"] = round(identity_similarity(src[k:k + 1], out[k:k + 1]), 4)
        means["identity_similarity"] = round(identity_similarity(src, out), 4)
    return means


# ----------------------------------------------------------------------------------------------------- profiles
class Profiles:
    """Resolves a disease id/name: the run's own profile when it has one, else the knowledge graph's (lazily)."""

    def __init__(self, cfg: DictConfig, run_profiles, cache):
        self.cfg, self.cache = cfg, cache
        self.by_id = {p.disease_id: p for p in run_profiles}
        self._builder = None

    @property
    def builder(self):
        if self._builder is None:
            from .kg import ProfileBuilder
            from .runtime import load_knowledge

            self._builder = ProfileBuilder(*load_knowledge(self.cfg, self.cache, progress=False))
        return self._builder

    def get(self, query: str):
        q = str(query).strip()
        if q in self.by_id:
            return self.by_id[q]
        if q.lower() == "healthy" and "healthy" in self.by_id:
            return self.by_id["healthy"]
        profile = self.builder.build(q)  # UnknownDiseaseError names the closest diseases
        return self.by_id.get(profile.disease_id, profile)


class _IntensityBuilder:
    """The encoder's graph builder, encoding custom phenotype profiles with their intensities (phenotype_profile)."""

    def __init__(self, inner, intensities: dict[str, dict]):
        self.inner, self.intensities = inner, intensities

    def batch(self, profiles, intensities=None):
        return self.inner.batch(profiles, [self.intensities.get(p.disease_id) for p in profiles])

    def __getattr__(self, name):
        return getattr(self.inner, name)


# ----------------------------------------------------------------------------------------------------- planning
def _stages(values) -> list[float]:
    out = [float(s) for s in _as_list(values, "stages")]
    bad = [s for s in out if not 0.0 <= s <= 3.0]
    if bad or not out:
        raise UserError(f"stages {bad or '[]'}: a stage (or severity) must lie in [0, 3]")
    return out


def _severities(cfg: DictConfig, profile) -> list[float]:
    """`stages=` as given, or `lesions=` (acne: lesion counts on the ACNE04 / Hayashi scale) mapped to the
    continuous severity the phantom renderer and the generator use (kgface.data.phantom.acne)."""
    if cfg.get("lesions") is None:
        return _stages(cfg.stages)
    from .prompts.wording import STAGE_SCALES

    if profile.disease_id not in STAGE_SCALES:
        raise UserError(f"lesions= is a lesion-count scale; {profile.disease_id} ({profile.name}) has none "
                        f"(scales exist for {', '.join(STAGE_SCALES)}): use stages=")
    from .data.phantom.acne import LESION_CAP, severity_from_count

    counts = [float(n) for n in _as_list(cfg.lesions, "lesions")]
    bad = [n for n in counts if not 0 <= n <= LESION_CAP]
    if bad or not counts:
        raise UserError(f"lesions={bad or '[]'}: lesion counts must lie in [0, {LESION_CAP}]")
    return [severity_from_count(int(round(n))) for n in counts]


def _file_safe(text: str) -> str:
    """An identity usable as a file name (strips and grid rows are named by it)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "input"


def _number(value, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value}: not a number") from None


def _row(profile, severity: float, seed: int, mode: str, identity: str, phenotypes=None) -> dict:
    s = 0.0 if profile.healthy else float(severity)
    return {"identity": identity, "disease": profile.disease_id, "stage": int(round(s)), "severity": round(s, 4),
            "split": "test", "source": "generated", "phenotypes": json.dumps(phenotypes or {}, sort_keys=True),
            "mode": mode, "requested_disease": profile.disease_id, "requested_stage": round(s, 4), "seed": int(seed),
            "source_image": "", "name": profile.name, "lesion_count": _lesion_count(profile, s)}


def _lesion_count(profile, severity: float):
    """The lesion count a severity stands for on diseases with a lesion-count scale (acne), else empty."""
    from .prompts.wording import STAGE_SCALES

    if profile.disease_id not in STAGE_SCALES:
        return ""
    from .data.phantom.acne import count_from_severity

    return count_from_severity(severity)


def plan(cfg: DictConfig, profiles: Profiles, run_profiles, size: int, age: int) -> tuple[list[Item], dict]:
    """Every output of the request, validated (diseases resolved, inputs decoded) before any sampling."""
    from .diffusion.generator import Request

    mode = cfg.mode
    seeds = [int(s) for s in _as_list(cfg.seeds, "seeds")] or [0]
    names = [str(d) for d in _as_list(cfg.diseases, "diseases") + _as_list(cfg.disease, "disease")]
    items: list[Item] = []
    intensities: dict[str, dict] = {}
    if mode in ("sample", "compose"):
        targets = [profiles.get(d) for d in names] if names else ([] if mode == "compose" else list(run_profiles))
        if mode == "compose" and cfg.phenotypes is not None:
            from .encoders import phenotype_profile
            from .encoders.graph import profile_intensities

            spec = parse_phenotypes(cfg.phenotypes)
            custom = phenotype_profile(profiles.builder, spec, disease_id="custom")
            resolved = profile_intensities(custom)  # alt ids -> live ids: what is encoded, recorded and shown
            custom.name = "custom: " + ", ".join(f"{k}={v:g}" for k, v in resolved.items())
            intensities["custom"] = resolved
            targets.append(custom)
        if not targets:
            raise UserError("mode=compose needs disease=KG_ID (or diseases=[...]) and/or "
                            "'phenotypes=[\"HP:0000316=0.8\"]'")
        for p in targets:
            stages = [0.0] if p.healthy else _severities(cfg, p)
            for seed in seeds:
                for s in stages:
                    items.append(Item(Request(p, s, seed, age), _row(p, s, seed, mode, f"seed-{seed}",
                                                                     intensities.get(p.disease_id)), p.disease_id))
    elif mode == "transform":
        target = profiles.get(cfg.target)
        s = _number(cfg.stage, "stage")
        if not 0.0 <= s <= 3.0:
            raise UserError(f"stage={cfg.stage}: the target stage must lie in [0, 3]")
        if target.healthy:  # healthy was only ever trained at severity 0, and its rows say 0
            if s != 0.0:
                log.info("target=healthy: stage=%g ignored (healthy is drawn at severity 0)", s)
            s = 0.0
        for path, ident in input_files(cfg.input):
            img = prepare_image(path, size)
            for seed in seeds:
                row = _row(target, s, seed, mode, ident)
                items.append(Item(Request(target, s, seed, age), row, ident, img, path.stem,
                                  {"input": str(path)}))
    elif mode == "progression":
        if len(names) != 1:
            raise UserError(f"mode=progression needs one disease=ID (got {names or 'none'})")
        p = profiles.get(names[0])
        if p.healthy:
            raise UserError("mode=progression needs a disease, not healthy")
        ramp = ([3.0 * i / (int(cfg.frames) - 1) for i in range(int(cfg.frames))] if cfg.frames and int(cfg.frames) > 1
                else _severities(cfg, p))
        sources = [(path, ident, prepare_image(path, size)) for path, ident in input_files(cfg.input)] \
            if cfg.input else [(None, None, None)]
        repeated = len({_file_safe(str(ident)) for _, ident, _ in sources}) < len(sources)  # as the files are named
        for k, (path, ident, img) in enumerate(sources):
            # one strip per input image: inputs sharing an identity (a person at several stages) keep their own strip
            name = _file_safe(f"{k:03d}_{ident}" if repeated else ident) if path else ""
            for seed in seeds:
                group = f"{name}_seed{seed}" if path else f"seed{seed}"
                for s in ramp:  # the same seed = the same noise for every frame: only the condition changes
                    row = _row(p, s, seed, mode, ident or f"seed-{seed}")
                    items.append(Item(Request(p, s, seed, age), row, group, img, path.stem if path else "",
                                      {"input": str(path)} if path else {}))
    else:
        raise UserError(f"mode={mode} is unknown; use one of {', '.join(MODES)}")
    return items, intensities


# ----------------------------------------------------------------------------------------------------- sampling
@dataclass
class Identity:
    """A stacked identity adapter and its reference: fixed (set once) or, with identity_image=input, each output's
    own input image (set per batch)."""
    adapter: object
    reference: str
    encoder: object = None
    processor: object = None

    def feed(self, sources: torch.Tensor | None) -> None:
        from .diffusion.adapter import identity_image_embeds, set_identity_embeds

        if self.reference == "input":
            set_identity_embeds(self.adapter, identity_image_embeds(self.encoder, self.processor, sources,
                                                                    self.adapter.wants_hidden_states))


def generate(gen, items: list[Item], batch_size: int, strength: float, mask: torch.Tensor | None,
             progress: bool = True, identity: Identity | None = None, inversion: tuple | None = None
             ) -> torch.Tensor:
    """uint8 [N, 3, S, S]: batched; items with a source are SDEdit'ed from it (noised, or DDIM-inverted under
    `inversion` = (source profile, stage)) and composited through the mask."""
    from tqdm.auto import tqdm

    from .diffusion.generator import Request

    out = []
    bar = tqdm(total=len(items), desc="generate", unit="img", disable=not progress)
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start:start + batch_size]
        reqs = [it.request for it in chunk]
        if chunk[0].source is not None:
            src = torch.stack([it.source for it in chunk])
            if identity is not None:
                identity.feed(src)
            init = gen.encode(src)
            if inversion is not None:
                source_reqs = [Request(inversion[0], inversion[1], r.seed, r.age) for r in reqs]
                latents = gen.latents(reqs, noise=gen.invert(init, source_reqs, strength), strength=strength)
            else:
                latents = gen.latents(reqs, init_latents=init, strength=strength)
            imgs = gen.decode(latents)
            if mask is not None:
                imgs = (mask * imgs.float() + (1 - mask) * src.float()).round().clamp(0, 255).to(torch.uint8)
        else:
            imgs = gen.decode(gen.latents(reqs))
        out.append(imgs)
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------- writing
def save_grid(images: torch.Tensor, items: list[Item], path: Path, title: str = "") -> None:
    """One row per group (disease, input or identity), its images left to right, labelled by severity and seed."""
    from .sheets import labelled_sheet

    groups = list(dict.fromkeys(it.group for it in items))
    idx = [[i for i, it in enumerate(items) if it.group == g] for g in groups]
    rows = [(f"{g}\n{items[ix[0]].row.get('name', '')[:28]}", [images[i] for i in ix]) for g, ix in zip(groups, idx)]
    captions = [[f"s{items[i].row['severity']:g} seed{items[i].row['seed']}" for i in ix] for ix in idx]
    labelled_sheet(rows, title=title, captions=captions, cell=max(images.shape[-1], 48), label_width=180).save(path)


def save_strip(images: list[torch.Tensor], labels: list[str], png: Path, gif: Path) -> None:
    from PIL import Image, ImageDraw

    size = images[0].shape[-1]
    cell = max(size, 64)
    frames = [to_pil(im).resize((cell, cell)) for im in images]
    strip = Image.new("RGB", (cell * len(frames), cell + 14), "white")
    draw = ImageDraw.Draw(strip)
    for k, (f, lab) in enumerate(zip(frames, labels)):
        strip.paste(f, (k * cell, 0))
        draw.text((k * cell + 2, cell + 1), lab, fill="black")
    strip.save(png)
    frames[0].save(gif, save_all=True, append_images=frames[1:] + frames[-2:0:-1], duration=400, loop=0)


def write_outputs(out_dir: Path, cfg: DictConfig, items: list[Item], images: torch.Tensor, summary: dict) -> Path:
    """Write into a staging folder, then move it in: OUT never holds a half-written set."""
    from .data.manifest import write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".generate-", dir=out_dir))
    try:
        (staging / "images").mkdir()
        rows, sources = [], {}
        for i, (it, img) in enumerate(zip(items, images)):
            tag = it.row["disease"].replace(":", "_")
            src = f"_{it.source_name}" if it.source_name else ""
            rel = f"images/{i:04d}_{tag}_s{it.row['severity']:g}_seed{it.row['seed']}{src}.png"
            to_pil(img).save(staging / rel)
            row = dict(it.row, path=rel, **it.extra)
            if it.source is not None:
                key = it.extra.get("input", it.source_name)
                if key not in sources:
                    sources[key] = f"sources/{len(sources):04d}_{it.source_name}.png"
                    (staging / "sources").mkdir(exist_ok=True)
                    to_pil(it.source).save(staging / sources[key])
                row["source_image"] = sources[key]
            rows.append(row)
        if cfg.mode == "progression":
            (staging / "strips").mkdir()
            for g in dict.fromkeys(it.group for it in items):
                idx = [i for i, it in enumerate(items) if it.group == g]
                save_strip([images[i] for i in idx], [f"s{items[i].row['severity']:g}" for i in idx],
                           staging / "strips" / f"{g}.png", staging / "strips" / f"{g}.gif")
        if cfg.grid:
            save_grid(images, items, staging / "grid.png", f"{cfg.mode}: {summary['run']}")
        (staging / "generation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        # move in: folders file by file, then the manifest last (atomically), so it only names files that exist;
        # an older manifest in a reused OUT goes first, so it never describes the images that replace its own
        (out_dir / "manifest.csv").unlink(missing_ok=True)
        for entry_ in sorted(staging.iterdir()):
            dest = out_dir / entry_.name
            if entry_.is_dir():
                dest.mkdir(exist_ok=True)
                for f in entry_.iterdir():
                    os.replace(f, dest / f.name)
            else:
                os.replace(entry_, dest)
        return write_manifest(rows, out_dir / "manifest.csv")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- identity
def _existing(cfg: DictConfig, key: str, what: str) -> Path:
    path = Path(str(cfg[key])).expanduser()
    if not path.exists():
        raise UserError(f"{key}={path} does not exist ({what})")
    return path


def check_identity(cfg: DictConfig):
    """Validate the identity_* keys before anything loads; returns (checkpoint, encoder folder or None, reference:
    a PIL image, precomputed embeddings, 'input', or None when no identity adapter is asked for)."""
    if cfg.identity_adapter in (None, ""):
        if cfg.identity_image not in (None, ""):
            raise UserError("identity_image= needs identity_adapter=CHECKPOINT.safetensors (the IP-Adapter it feeds)")
        return None
    ckpt = _existing(cfg, "identity_adapter", "an IP-Adapter checkpoint, .safetensors")
    if cfg.identity_image in (None, ""):
        raise UserError("identity_adapter= needs identity_image=FACE (an image), identity_image=input (each input is "
                        "its own reference) or identity_image=EMBEDS.safetensors (precomputed image_embeds)")
    try:
        float(cfg.identity_scale)
    except (TypeError, ValueError):
        raise UserError(f"identity_scale={cfg.identity_scale} is not a number") from None
    ref = str(cfg.identity_image)
    if ref == "input":
        if not (cfg.mode in ("transform", "progression") and cfg.input):
            raise UserError("identity_image=input needs input images (mode=transform, or mode=progression with "
                            "input=)")
        reference = "input"
    else:
        path = _existing(cfg, "identity_image", "the reference face: an image or image_embeds .safetensors")
        if path.suffix == ".safetensors":
            from .diffusion.adapter import read_identity_embeds

            return ckpt, None, read_identity_embeds(path)  # no image encoder needed
        from .data.images import load_rgb

        reference = load_rgb(path)  # unreadable: ImageError (one line)
    if cfg.identity_encoder not in (None, ""):
        encoder = _existing(cfg, "identity_encoder", "the IP-Adapter's CLIP vision model folder")
    else:
        encoder = ckpt.parent / "image_encoder"
        if not encoder.is_dir():
            raise UserError(f"identity_encoder= is not set and {encoder} does not exist; give the CLIP vision model "
                            "folder of the IP-Adapter (h94/IP-Adapter: models/image_encoder)")
    return ckpt, encoder, reference


def stack_identity(checked, unet, scale: float) -> Identity:
    """Stack the checked identity adapter on the run's UNet and set a fixed reference now."""
    from .diffusion.adapter import (identity_image_embeds, load_identity_encoder, set_identity_embeds,
                                    stack_ip_adapter)

    ckpt, encoder_dir, reference = checked
    adapter = stack_ip_adapter(unet, ckpt, scale=scale)
    encoder = processor = None
    if encoder_dir is not None:
        encoder, processor = load_identity_encoder(encoder_dir)
    if isinstance(reference, torch.Tensor):
        set_identity_embeds(adapter, reference)
        return Identity(adapter, "embeddings")
    if reference != "input":
        set_identity_embeds(adapter, identity_image_embeds(encoder, processor, [reference],
                                                           adapter.wants_hidden_states))
        return Identity(adapter, "image", encoder, processor)
    return Identity(adapter, "input", encoder, processor)


# ----------------------------------------------------------------------------------------------------- entry
def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .diffusion.generator import Generator
    from .diffusion.run_loading import heldout_of, load_run
    from .runtime import make_cache, torch_device

    t0 = time.perf_counter()
    if int(cfg.get("num_threads") or 0) > 0:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode} is unknown; use one of {', '.join(MODES)}")
    if cfg.mode == "compose" and cfg.phenotypes is not None:
        parse_phenotypes(cfg.phenotypes)  # fail on a mis-parsed override before loading anything
    if (cfg.mask is not None or cfg.keep is not None) and not (cfg.mode in ("transform", "progression") and cfg.input):
        raise UserError("mask= / keep= need an input image (mode=transform, or mode=progression with input=)")
    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise UserError("run= is required: a kgface.train output directory (python -m kgface.generate run=RUN_DIR)")
    if not 0.0 < _number(cfg.strength, "strength") <= 1.0:
        raise UserError(f"strength={cfg.strength} must lie in (0, 1]")
    if not _number(cfg.batch_size, "batch_size") >= 1:
        raise UserError(f"batch_size={cfg.batch_size} must be >= 1")
    seeds = [_number(s, "seeds") for s in _as_list(cfg.seeds, "seeds")]
    if any(s != int(s) or s < 0 for s in seeds):
        raise UserError(f"seeds={cfg.seeds}: seeds are integers >= 0")
    if cfg.frames is not None and (_number(cfg.frames, "frames") != int(cfg.frames) or int(cfg.frames) < 2):
        raise UserError(f"frames={cfg.frames}: a progression ramp needs an integer number of frames >= 2")
    if cfg.inversion and not (cfg.mode in ("transform", "progression") and cfg.input):
        raise UserError("inversion=true needs input images (mode=transform, or mode=progression with input=)")
    checked_identity = check_identity(cfg)
    cache = make_cache(cfg)
    device = torch_device(cfg.get("device"))
    run_dir = Path(str(cfg.run)).expanduser()
    backbone, conditioner, run_profiles, run_cfg = load_run(run_dir, cache=cache, adapter_scale=cfg.adapter_scale)
    backbone.unet.to(device)  # the text encoder stays on the CPU: its states are cached per prompt and moved
    backbone.vae.to(device)
    conditioner.to(device)
    if run_cfg.kg.source != cfg.kg.source:
        raise UserError(f"kg={cfg.kg.source} but run={cfg.run} was trained with kg={run_cfg.kg.source}; "
                        f"set kg={run_cfg.kg.source}")
    age = -1
    if cfg.age is not None:
        from .diffusion.training_data import AGE_INDEX

        if not getattr(conditioner.encoder, "age_groups", 0):
            raise UserError(f"age={cfg.age}: run={cfg.run} was not trained with ages")
        if str(cfg.age) not in AGE_INDEX:
            raise UserError(f"age={cfg.age} is unknown; use one of {', '.join(AGE_INDEX)}")
        age = AGE_INDEX[str(cfg.age)]

    profiles = Profiles(cfg, run_profiles, cache)
    trained = {p.disease_id for p in conditioner.profiles}
    # `diseases=null` means every profile the run can draw: a class run cannot draw the diseases it held out
    drawable = [p for p in run_profiles if p.disease_id in trained] if conditioner.mode == "class" else run_profiles
    items, intensities = plan(cfg, profiles, drawable, backbone.image_size, age)
    heldout = heldout_of(run_dir)
    inversion = None
    if cfg.inversion:
        s = _number(cfg.source_stage, "source_stage")
        if not 0.0 <= s <= 3.0:
            raise UserError(f"source_stage={cfg.source_stage}: the input's stage must lie in [0, 3]")
        inversion = (profiles.get(cfg.source_disease), s)
    if conditioner.mode == "class":
        asked = {it.row["disease"]: it.row["name"] for it in items}
        if inversion:
            asked[inversion[0].disease_id] = inversion[0].name
        unseen = sorted(set(asked) - trained)
        if unseen:
            named = [f"{d} ({asked[d]}{', held out in training' if d in heldout else ''})" for d in unseen]
            raise UserError(f"run={cfg.run} uses conditioning=class, which cannot draw diseases it never saw: "
                            f"{', '.join(named)}; use a conditioning=kg, text or kg_text run for them")
    if intensities and conditioner.uses_kg:
        conditioner.graph_builder = _IntensityBuilder(conditioner.graph_builder, intensities)
    for it in items:
        it.row["trained"] = it.row["disease"] in trained
        it.row["heldout"] = it.row["disease"] in heldout
    mask = edit_mask(cfg.mask, cfg.keep, backbone.image_size)
    evaluator, evaluator_note = (find_evaluator(cfg, run_dir)
                                 if any(it.source is not None for it in items) else (None, ""))
    identity = None
    if checked_identity is not None:
        identity = stack_identity(checked_identity, backbone.unet, float(cfg.identity_scale))
        ref = "input" if identity.reference == "input" else str(cfg.identity_image)
        for it in items:
            it.row["identity_reference"] = it.extra.get("input", "") if ref == "input" else ref

    guidance = _number(cfg.guidance if cfg.guidance is not None else run_cfg.model.sample.guidance, "guidance")
    steps = _number(cfg.steps if cfg.steps is not None else run_cfg.model.sample.steps, "steps")
    n_train = int(backbone.scheduler.config.num_train_timesteps)
    if steps != int(steps) or not 1 <= steps <= n_train:
        raise UserError(f"steps={steps:g}: DDIM steps are an integer in [1, {n_train}] (the model's noise ladder)")
    steps = int(steps)
    gen = Generator(backbone, conditioner, guidance=guidance, steps=steps)
    drawn = gen.requested_phenotypes([it.request for it in items])
    for it, ids in zip(items, drawn or []):  # a run trained on observed phenotype sets draws one per image
        it.row["requested_phenotypes"] = json.dumps(ids)
    log.info("%s: %d images from %s (guidance %g, %d steps)", cfg.mode, len(items), cfg.run, guidance, steps)
    images = generate(gen, items, int(cfg.batch_size), float(cfg.strength), mask, progress=bool(cfg.progress),
                      identity=identity, inversion=inversion)
    scores = identity_scores(items, images, evaluator)
    if scores:
        scores["evaluator"] = evaluator_note if evaluator is not None else None
        if evaluator is None:
            scores["identity_similarity"] = None
            scores["note"] = evaluator_note
    summary = {"run": str(cfg.run), "mode": cfg.mode, "conditioning": conditioner.mode, "images": len(items),
               "guidance": guidance, "steps": steps, "strength": float(cfg.strength),
               "mask": OmegaConf.to_container(cfg.mask) if isinstance(cfg.mask, ListConfig) else cfg.mask,
               "keep": OmegaConf.to_container(cfg.keep) if isinstance(cfg.keep, ListConfig) else cfg.keep,
               "inversion": ({"source_disease": inversion[0].disease_id, "source_stage": inversion[1]}
                             if inversion else False),
               "identity_adapter": ({"checkpoint": str(checked_identity[0]), "reference": identity.reference,
                                     "image": str(cfg.identity_image), "scale": float(cfg.identity_scale),
                                     "encoder": str(checked_identity[1]) if checked_identity[1] else None}
                                    if identity else None),
               "identity": scores or "no input images: nothing to compare (identity scores are for transform and "
                                     "progression with input=)",
               "seconds": round(time.perf_counter() - t0, 1)}
    manifest = write_outputs(out_dir, cfg, items, images, summary)
    print(f"{len(items)} images in {time.perf_counter() - t0:.0f} s: {manifest}")
    return {**summary, "manifest": str(manifest)}


main = entry("generate")(run)

if __name__ == "__main__":
    main()
