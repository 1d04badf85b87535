"""What `python -m kgface.generate` draws, planned and then drawn: each output image is an `Item` (a generator
`Request`, its manifest row, its grid group and, for edits, the prepared input). `plan` validates the whole request
(diseases resolved through the run's profiles or the KG, inputs decoded) before anything is sampled; `generate`
draws the items in batches, SDEdit'ing those with an input. `kgface.trials` draws its daily faces through the same
two."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from ..config import as_list, as_number
from ..errors import UserError
from .editing import input_files, prepare_image

log = logging.getLogger(__name__)

MODES = ("sample", "transform", "progression", "compose")


@dataclass
class Item:
    """One output image: the request, its manifest fields, and (transform) the source image and edit mask."""
    request: object
    row: dict
    group: str                               # grid row / progression strip
    source: torch.Tensor | None = None       # uint8 [3, S, S], the prepared input
    source_name: str = ""
    extra: dict = field(default_factory=dict)


def parse_phenotypes(value) -> dict[str, float]:
    """The `phenotypes=` override -> {HPO id: intensity}; an unquoted dict (`{HP:0000316: 0.8}`, which Hydra reads as
    {'HP': '0000316: 0.8'}) and an empty set are errors."""
    from ..encoders import parse_phenotype_spec

    items = as_list(value, "phenotypes")
    bad = [i for i in items if not str(i).strip().upper().startswith("HP:")]
    if bad:
        raise UserError(f"phenotypes= item {bad[0]!r} is not 'HP:NNNNNNN=intensity'; write "
                        "'phenotypes=[\"HP:0000316=0.8\",\"HP:0000508=0.3\"]' (quoted)")
    spec = parse_phenotype_spec([str(i) for i in items])
    if not spec:
        raise UserError("phenotypes= is empty; give at least one visible HPO term, e.g. "
                        "'phenotypes=[\"HP:0000316=0.8\"]'")
    zero = [h for h, v in spec.items() if float(v) <= 0]
    if zero:  # it would be listed as requested, and the evaluator would expect what was asked to be absent
        raise UserError(f"phenotypes= gives {zero[0]} intensity {spec[zero[0]]:g}: an intensity must be > 0; leave "
                        "a phenotype out to ask for its absence")
    return spec


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
            from ..kg import ProfileBuilder
            from ..runtime import load_knowledge

            self._builder = ProfileBuilder(*load_knowledge(self.cfg, self.cache, progress=False))
        return self._builder

    def get(self, query: str, key: str | None = None):
        """`key`: the setting that named it (target, source_disease, ...), put before an unknown disease's message."""
        from ..kg import UnknownDiseaseError

        q = str(query).strip()
        if q in self.by_id:
            return self.by_id[q]
        if q.lower() == "healthy" and "healthy" in self.by_id:
            return self.by_id["healthy"]
        try:
            profile = self.builder.build(q)  # UnknownDiseaseError names the closest diseases
        except UnknownDiseaseError as exc:
            if key is None:
                raise
            raise UnknownDiseaseError(f"{key}={q}: {exc}") from None
        return self.by_id.get(profile.disease_id, profile)


# ----------------------------------------------------------------------------------------------------- planning
def _stages(values) -> list[float]:
    out = [as_number(s, "stages") for s in as_list(values, "stages")]
    bad = [s for s in out if not 0.0 <= s <= 3.0]
    if bad or not out:
        shown = "[" + ", ".join(str(int(s)) if s.is_integer() else repr(s) for s in bad) + "]"  # stages=[4]: "[4]"
        raise UserError(f"stages {shown}: a stage (or severity) must lie in [0, 3]")
    if len(set(out)) < len(out):  # the same faces drawn and listed twice: counted twice by an evaluation
        raise UserError(f"stages={[int(s) if s.is_integer() else s for s in out]} names a stage twice; list each once")
    return out


def _severities(cfg: DictConfig, profile) -> list[float]:
    """`stages=` as given, or `lesions=` (acne: lesion counts on the ACNE04 / Hayashi scale) mapped to the
    continuous severity the phantom renderer and the generator use (kgface.data.phantom.acne)."""
    if cfg.get("lesions") is None:
        return _stages(cfg.stages)
    from ..prompts.wording import STAGE_SCALES

    if profile.disease_id not in STAGE_SCALES:
        raise UserError(f"lesions= is a lesion-count scale; {profile.disease_id} ({profile.name}) has none "
                        f"(scales exist for {', '.join(STAGE_SCALES)}): use stages=")
    from ..data.phantom.acne import LESION_CAP, severity_from_count

    counts = [as_number(n, "lesions") for n in as_list(cfg.lesions, "lesions")]
    bad = [n for n in counts if not 0 <= n <= LESION_CAP or n != int(n)]
    if bad or not counts:  # 2.5 was drawn as 2 and 3.5 as 4 (half to even), each recorded as a whole count
        raise UserError(f"lesions={bad or '[]'}: lesion counts are whole numbers in [0, {LESION_CAP}]")
    out = [severity_from_count(int(round(n))) for n in counts]
    if len(set(out)) < len(out):  # lesions=[3,3]: the same faces twice, as stages=[1,1] (refused there)
        raise UserError(f"lesions={[int(n) for n in counts]} names one severity twice; list each count once")
    return out


NAME_LIMIT = 80  # characters of a photo's or identity's name in an output file name


def file_safe(text: str, limit: int | None = None) -> str:
    """An identity usable as a file name (strips and grid rows are named by it); `limit` caps its length where the
    name has a unique prefix of its own (an index): a long photo name passed the file system's 255 bytes."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "input"
    return safe if limit is None else safe[:limit].rstrip("._") or "input"


def _row(profile, severity: float, seed: int, mode: str, identity: str, phenotypes=None) -> dict:
    s = 0.0 if profile.healthy else float(severity)
    from ..prompts.wording import stage_of

    return {"identity": identity, "disease": profile.disease_id, "stage": stage_of(s), "severity": round(s, 4),
            "split": "test", "source": "generated", "phenotypes": json.dumps(phenotypes or {}, sort_keys=True),
            "mode": mode, "requested_disease": profile.disease_id, "requested_stage": round(s, 4), "seed": int(seed),
            "source_image": "", "name": profile.name, "lesion_count": _lesion_count(profile, s)}


def _lesion_count(profile, severity: float):
    """The lesion count a severity stands for on diseases with a lesion-count scale (acne), else empty."""
    from ..prompts.wording import STAGE_SCALES

    if profile.disease_id not in STAGE_SCALES:
        return ""
    from ..data.phantom.acne import count_from_severity

    return count_from_severity(severity)


def plan(cfg: DictConfig, profiles: Profiles, run_profiles, size: int, age: int) -> tuple[list[Item], dict]:
    """Every output of the request, validated (diseases resolved, inputs decoded) before any sampling."""
    from .generator import Request

    mode = cfg.mode
    seeds = [int(s) for s in as_list(cfg.seeds, "seeds")] or [0]
    if len(set(seeds)) < len(seeds):  # one seed is one face: twice, the same images listed twice (a strip 0-3-0-3)
        raise UserError(f"seeds={seeds} names a seed twice; list each once")
    listed = [("diseases", str(d)) for d in as_list(cfg.diseases, "diseases")]
    named = listed + [("disease", str(d)) for d in as_list(cfg.disease, "disease")]
    names = [d for _, d in named]
    items: list[Item] = []
    intensities: dict[str, dict] = {}
    if mode in ("sample", "compose"):
        targets = [profiles.get(d, k) for k, d in named] if names else ([] if mode == "compose" else
                                                                      list(run_profiles))
        if mode == "compose" and cfg.phenotypes is not None:
            from ..encoders import phenotype_profile
            from ..encoders.graph import profile_intensities

            spec = parse_phenotypes(cfg.phenotypes)
            custom = phenotype_profile(profiles.builder, spec, disease_id="custom")
            resolved = profile_intensities(custom)  # alt ids -> live ids: what is encoded, recorded and shown
            custom.name = "custom: " + ", ".join(f"{k}={v:g}" for k, v in resolved.items())
            intensities["custom"] = resolved
            targets.append(custom)
        ids = [t.disease_id for t in targets]
        twice = sorted({d for d in ids if ids.count(d) > 1})
        if twice:  # an id and a name of one disease (ORPHA:870, 'Down syndrome'): its faces drawn twice
            raise UserError(f"diseases / disease name {twice[0]} twice (an id and a name of one disease?); list "
                            "each once")
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
        target = profiles.get(cfg.target, "target")
        s = as_number(cfg.stage, "stage")
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
        p = profiles.get(names[0], named[0][0])
        if p.healthy:
            raise UserError("mode=progression needs a disease, not healthy")
        ramp = ([3.0 * i / (int(cfg.frames) - 1) for i in range(int(cfg.frames))] if cfg.frames and int(cfg.frames) > 1
                else _severities(cfg, p))
        sources = [(path, ident, prepare_image(path, size)) for path, ident in input_files(cfg.input)] \
            if cfg.input else [(None, None, None)]
        repeated = len({file_safe(str(ident), NAME_LIMIT) for _, ident, _ in sources}) < len(sources)  # as named
        for k, (path, ident, img) in enumerate(sources):
            # one strip per input image: inputs sharing an identity (a person at several stages) keep their own strip
            name = file_safe(f"{k:03d}_{ident}" if repeated else ident, NAME_LIMIT) if path else ""
            for seed in seeds:
                group = f"{name}_seed{seed}" if path else f"seed{seed}"
                for s in ramp:  # the same seed = the same noise for every frame: only the condition changes
                    row = _row(p, s, seed, mode, ident or f"seed-{seed}")
                    items.append(Item(Request(p, s, seed, age), row, group, img, path.stem if path else "",
                                      {"input": str(path)} if path else {}))
    else:
        raise UserError(f"mode={mode} is unknown; use one of {', '.join(MODES)}")
    return items, intensities


def check_inversion_seeds(seeds, eta: float) -> None:
    """inversion=true at eta 0 on a run that draws no phenotype sets: the start latent is the input's inversion, and
    nothing after it follows the seed, so several seeds would list one image under several seeds."""
    seeds = sorted(set(seeds))
    if len(seeds) > 1 and eta == 0:
        raise UserError(f"seeds={seeds} with inversion=true: the start is each input's DDIM inversion, not a "
                        "seed's noise, so every seed gives the same image; give one seed (or eta > 0, whose "
                        "step noise follows the seed)")


def check_distinct(gen, items: list[Item], inversion: tuple | None, run: str) -> None:
    """Rows that would hold one image under two labels are refused, as `plan` refuses stages=[1,1.0]: an
    evaluation would count the face twice, under labels the image does not tell apart."""
    if inversion is not None and not gen.draws_phenotypes:
        check_inversion_seeds({it.request.seed for it in items}, gen.eta)
    if gen.conditioner.mode != "text":
        return
    first = {}
    for it, prompt in zip(items, gen.prompts([it.request for it in items])):
        key = (prompt, it.request.seed, it.request.age, it.group, it.extra.get("input"))
        other = first.setdefault(key, it)
        if other.request.severity != it.request.severity:
            raise UserError(
                f"run={run} is conditioning=text, whose prompt names the stage, not the severity: severities "
                f"{other.request.severity:g} and {it.request.severity:g} of {it.row['disease']} give one image under "
                "two labels; ask whole stages (stages=[0,1,2,3]; mode=progression: frames=4 or fewer), or use a "
                "conditioning=kg, kg_text or class run for continuous severities")


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
        from .adapter import identity_image_embeds, set_identity_embeds

        if self.reference == "input":
            set_identity_embeds(self.adapter, identity_image_embeds(self.encoder, self.processor, sources,
                                                                    self.adapter.wants_hidden_states))


def generate(gen, items: list[Item], batch_size: int, strength: float, mask: torch.Tensor | None,
             progress: bool = True, identity: Identity | None = None, inversion: tuple | None = None
             ) -> torch.Tensor:
    """uint8 [N, 3, S, S]: batched; items with a source are SDEdit'ed from it (noised, or DDIM-inverted under
    `inversion` = (source profile, stage)) and composited through the mask."""
    from tqdm.auto import tqdm

    from .generator import Request

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
