"""The phantom benchmark: diseases drawn as the knowledge graph says, with labels known by construction.

An *individual* is an identity with a disease. Which of the disease's visible phenotypes it shows is drawn once per
individual (probability = the KG frequency; unknown frequency = `unknown_frequency`), so the same individual shows the
same phenotypes at every stage and only their intensity grows: stage 0 = no signs, 3 = full. Per individual and
phenotype an intensity factor u ~ U(intensity_min, 1) varies how strongly a sign shows. A phenotype is not drawn
below its curated `min_stage`, nor when its KG onset is later than the identity's age group. Severity is continuous:
s = stage + U(-severity_jitter, +severity_jitter), clipped to the stage's bin, and a phenotype's intensity is
u * s / 3. An individual who shows an acne term draws count_from_severity(s) lesions (ACNE04 / Hayashi bins), and its
acne terms' intensity is s / 3; acne's own stage 0 is mild acne, not healthy. Healthy is its own class: no
phenotypes, stage 0.

Labels hold only what was drawn: phenotypes with no renderer effect (reported per disease) are never labelled present,
nor hair terms on a bald head, nor the less frequent of two terms that cannot show together; terms drawn through one
effect carry the intensity it was drawn at; an individual who would show nothing by stage 3 is drawn again.
"""
from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from ...kg import FacialProfile
from ...prompts.wording import stage_levels
from .acne import count_from_severity
from .effects import TermEffect, conflict, effects_for_terms, shows_on
from .identity import AGE_GROUPS, sample_identity
from .render import render_face

log = logging.getLogger(__name__)

ACNE = "HP:0001061"
ACNE_LESIONS = {"HP:0025249": "comedo", "HP:0200034": "papule", "HP:0200039": "pustule", "HP:0033188": "nodule"}
ACNE_TERMS = {ACNE, "HP:0040137", *ACNE_LESIONS}
# HPO onset terms -> the youngest age group (index into AGE_GROUPS) that can show a phenotype with that onset.
ONSET_AGE = {
    **dict.fromkeys(["HP:0030674", "HP:0011460", "HP:0011461", "HP:0034199", "HP:0034198", "HP:0034197",
                     "HP:0003577", "HP:0003623", "HP:0003593", "HP:0011463", "HP:0410280"], 0),  # antenatal..childhood
    "HP:0003621": 1,  # juvenile
    **dict.fromkeys(["HP:0003581", "HP:0011462", "HP:0025708", "HP:0025709", "HP:0025710", "HP:0003596"], 2),
    "HP:0003584": 3,  # late onset
}
SPLITS = ("train", "val", "test")
OTHER_KEYS = ("name", "atlas", "heldout", "diseases")  # data.* keys of data=phantom read outside PhantomConfig


@dataclass(frozen=True)
class PhantomConfig:
    seed: int = 0
    size: int = 64
    supersample: int = 4
    per_class: int = 24                 # individuals per disease (each drawn at every stage)
    healthy_per_class: int = 96         # healthy images (one identity each)
    identities: int = 600               # the identity pool, split by identity
    split_fractions: tuple = (0.7, 0.1, 0.2)
    stages: tuple = (0, 1, 2, 3)
    unknown_frequency: float = 0.5
    intensity_min: float = 0.7
    severity_jitter: float = 0.4

    def __post_init__(self):
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PhantomConfig":
        """From a plain dict (e.g. the `data` config group); unknown keys are left to the caller (OTHER_KEYS)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
                      if k in cls.__dataclass_fields__})


def _whole(value, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"data.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def _pool_sizes(n: int, fractions) -> list[int]:
    """Identities per split, cut as identity_split cuts them (round() of the first two fractions, np.split)."""
    cuts = np.cumsum([round(f * n) for f in fractions[:-1]])
    return [len(part) for part in np.split(np.arange(n), cuts)]


def _wanted(n: int, fractions) -> list[int]:
    """Images per split that choose_identities / build_phantom draw for n: round() of the first two, the rest test."""
    first = [round(n * f) for f in fractions[:-1]]
    return first + [n - sum(first)]


def _validate(cfg: "PhantomConfig") -> None:
    """Settings the builder cannot honour are one-line errors naming the data.* key, before anything is drawn
    (they used to surface as numpy tracebacks, or split_fractions that do not sum to 1 were silently rebalanced)."""
    _whole(cfg.seed, "seed", 0)  # numpy seeds are >= 0: -1 was a numpy traceback naming no key
    per_class = _whole(cfg.per_class, "per_class", 1)
    healthy = _whole(cfg.healthy_per_class, "healthy_per_class", 0)
    _whole(cfg.size, "size", 16)  # the renderer's own limits, refused here rather than as a traceback mid-build
    _whole(cfg.supersample, "supersample", 1)
    identities = _whole(cfg.identities, "identities", 1)
    fractions = tuple(cfg.split_fractions) if isinstance(cfg.split_fractions, (list, tuple)) else None
    if fractions is None or len(fractions) != len(SPLITS) or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0 for f in fractions):
        raise UserError(f"data.split_fractions must be three fractions in [0, 1] (train, val, test), "
                        f"got {cfg.split_fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"data.split_fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):g})")
    stages = tuple(cfg.stages) if isinstance(cfg.stages, (list, tuple)) else ()
    whole = [not isinstance(x, bool) and isinstance(x, (int, np.integer)) and 0 <= x <= 3 for x in stages]
    if not stages or not all(whole) or len(set(stages)) != len(stages):
        raise UserError(f"data.stages must be distinct whole stages 0..3, e.g. [0, 1, 2, 3]; got {cfg.stages!r}")
    for key in ("unknown_frequency", "intensity_min", "severity_jitter"):  # jitter nan wrote nan severities
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UserError(f"data.{key} must be a number in [0, 1], got {value!r}")
    pool = _pool_sizes(identities, fractions)
    for key, n in (("per_class", per_class), ("healthy_per_class", healthy)):
        wanted = _wanted(n, fractions)
        if wanted[-1] < 0:  # train and val both rounded up past n
            raise UserError(f"data.{key}={n} is too small to split by data.split_fractions {list(fractions)} "
                            f"({wanted[0]} train + {wanted[1]} val); raise data.{key}")
        for split, want, have in zip(SPLITS, wanted, pool):
            if want > have:  # each identity is drawn at most once per class
                raise UserError(f"data.{key}={n} needs {want} {split} identities, but data.identities={identities} "
                                f"with split_fractions {list(fractions)} gives {have}; raise data.identities or "
                                f"lower data.{key}")


def slug(disease_id: str) -> str:
    return disease_id.replace(":", "_").replace("/", "_")


IDENTITY_PREFIX = "phantom-"  # manifest identity labels of phantom faces: "phantom-<identity number>"


def identity_label(identity_id: int) -> str:
    return f"{IDENTITY_PREFIX}{int(identity_id)}"


def identity_number(label: str) -> int:
    """The phantom identity number of a manifest `identity` label (the inverse of identity_label)."""
    text = str(label)
    number = text[len(IDENTITY_PREFIX):]
    if not text.startswith(IDENTITY_PREFIX) or not number.isdigit():
        raise ValueError(f"identity {text!r} is not a phantom identity label ({IDENTITY_PREFIX}<number>)")
    return int(number)


def identity_split(cfg: PhantomConfig) -> dict[int, str]:
    """Identity id -> split (fixed fractions of a seeded permutation: no identity is in two splits)."""
    order = np.random.default_rng([cfg.seed, 11]).permutation(cfg.identities)
    cuts = np.cumsum([round(f * cfg.identities) for f in cfg.split_fractions[:-1]])
    out = {}
    for k, ids in enumerate(np.split(order, cuts)):
        out.update({int(i): SPLITS[k] for i in ids})
    return out


def _key(disease_id: str) -> int:
    return zlib.crc32(disease_id.encode("utf-8"))


def _age_index(age_group: str) -> int:
    return AGE_GROUPS.index(age_group)


def _earliest_onset(profile: FacialProfile) -> int:
    """Youngest age group in which the disease can show at all (the latest of its phenotype onsets' minimum)."""
    ages = [ONSET_AGE.get(p.onset, 0) for p in profile.phenotypes]
    return min(ages) if ages else 0


def choose_identities(profile: FacialProfile, cfg: PhantomConfig, splits: dict[int, str], n: int) -> list[int]:
    """n identities for a disease, split-stratified, old enough for the disease's onsets."""
    rng = np.random.default_rng([cfg.seed, _key(profile.disease_id), 1])
    min_age = _earliest_onset(profile)
    chosen = []
    for k, split in enumerate(SPLITS):
        want = round(n * cfg.split_fractions[k]) if k < 2 else n - len(chosen)
        pool = [i for i, s in splits.items() if s == split
                and _age_index(sample_identity(cfg.seed, i).age_group) >= min_age]
        pool = sorted(pool)
        if len(pool) < want:
            raise UserError(f"data.per_class={n} needs {want} {split} identities old enough for "
                            f"{profile.disease_id}, but data.identities={cfg.identities} has {len(pool)}; raise "
                            "data.identities or lower data.per_class")
        chosen += [int(i) for i in rng.choice(pool, size=want, replace=False)]
    return chosen


MAX_DRAWS = 50  # draws of one individual's phenotypes until one of them can show (below)


def individual(profile: FacialProfile, identity_id: int, cfg: PhantomConfig,
               table: dict[str, TermEffect] | None = None) -> dict[str, float]:
    """HPO id -> intensity factor u for the phenotypes this individual has (drawn once, shared by all stages), each
    present with its KG frequency. With the renderer's `table` (the dataset's draw): of two drawn terms that cannot
    both show (effects.conflict: a wide and a narrow mouth, absent brows with synophrys) the more frequent one is
    kept; and an individual none of whose drawn phenotypes can show on its face by stage 3 (no renderer effect,
    a later onset than its age group, hair terms on a bald head) is drawn again from the same stream, up to
    MAX_DRAWS times: a stage-3 face labelled with a disease must show something of it (renderer 3; before, 153 of
    the benchmark's diseased rows, 117 of them leprosy, were the healthy face labelled stage 1-3)."""
    rng = np.random.default_rng([cfg.seed, identity_id, _key(profile.disease_id), 2])
    ordered = sorted(profile.phenotypes, key=lambda x: x.hpo_id)
    identity = sample_identity(cfg.seed, identity_id) if table is not None else None
    for _ in range(MAX_DRAWS):
        out = {}
        for p in ordered:
            freq = cfg.unknown_frequency if p.frequency is None else p.frequency
            present, u = rng.random() < freq, rng.uniform(cfg.intensity_min, 1.0)
            if present:
                out[p.hpo_id] = float(u)
        if table is None:
            return out
        out = _compatible(out, profile, table)
        if any(_can_show(p, identity, table, 3) for p in ordered if p.hpo_id in out):
            return out
    return out


def _frequency_rank(p) -> tuple:
    return -(p.frequency if p.frequency is not None else -1.0), p.hpo_id


def _compatible(drawn: dict[str, float], profile: FacialProfile, table: dict[str, TermEffect]) -> dict[str, float]:
    """`drawn` without the terms that conflict with a more frequent drawn one (effects.conflict)."""
    kept: list[str] = []
    for p in sorted((p for p in profile.phenotypes if p.hpo_id in drawn), key=_frequency_rank):
        key = table[p.hpo_id].key if p.hpo_id in table else None
        if key is None or not any(conflict(key, table[k].key) for k in kept if k in table):
            kept.append(p.hpo_id)
    return {h: drawn[h] for h in drawn if h in kept}


def _can_show(p, identity, table: dict[str, TermEffect], stage: int) -> bool:
    """Whether phenotype p is drawn on this identity at `stage`: it has an effect that changes this face, its
    curated min_stage is reached and its onset is not later than the identity's age group."""
    return (p.hpo_id in table and shows_on(table[p.hpo_id].key, identity) and stage >= int(p.min_stage or 0)
            and ONSET_AGE.get(p.onset, 0) <= _age_index(identity.age_group))


def severity_of(stage: int, identity_id: int, disease_id: str, cfg: PhantomConfig) -> float:
    """Continuous severity in the stage's bin [stage - 0.5, stage + 0.5). A stage 0 without signs is exactly 0;
    one with signs (acne grade 0) starts at 0.1, i.e. at least one lesion."""
    if disease_id == "healthy" or (stage == 0 and not stage_levels(disease_id)[0].signs):
        return 0.0
    rng = np.random.default_rng([cfg.seed, identity_id, _key(disease_id), 3 + stage])
    s = stage + rng.uniform(-cfg.severity_jitter, cfg.severity_jitter)
    low, high = (0.1, 0.49) if stage == 0 else (stage - 0.5, min(stage + 0.49, 3.0))
    return float(min(max(s, low), high))


def draw_labels(profile: FacialProfile, identity_id: int, stage: int, cfg: PhantomConfig,
                table: dict[str, TermEffect]) -> dict:
    """Everything the image will show: severity, lesion count, {HPO id: intensity} of drawn phenotypes."""
    identity = sample_identity(cfg.seed, identity_id)
    severity = severity_of(stage, identity_id, profile.disease_id, cfg)
    factors = individual(profile, identity_id, cfg, table)
    by_id = {p.hpo_id: p for p in profile.phenotypes}
    # acne-like: the disease's lesions are counted on the ACNE04 scale. Rosacea has no Acne/Comedo term, but its
    # papules and pustules are in ACNE_TERMS, so `shows_acne` below counts them too (renderer 2; docs/data.md)
    acne = any(p.hpo_id in (ACNE, "HP:0025249", "HP:0040137") for p in profile.phenotypes)
    # lesions show at stage 0 only where the disease's own scale says stage 0 has signs (acne grade 0 = mild acne);
    # acromegaly's acne, say, waits for stage 1 like its other signs
    lesion_terms = ACNE_TERMS if acne and stage_levels(profile.disease_id)[0].signs else set()
    shown = {}
    for hpo_id, u in factors.items():
        if not _can_show(by_id[hpo_id], identity, table, stage):
            continue
        # acne's stage 0 is mild acne: its lesions show from severity 0 on; other diseases show nothing at stage 0.
        # Lesions are counted from the severity alone, so an acne term's intensity is s / 3 (no individual factor)
        if stage > 0 or hpo_id in lesion_terms:
            t = severity / 3.0 if hpo_id in ACNE_TERMS else u * severity / 3.0
            if t > 0:
                shown[hpo_id] = round(min(t, 1.0), 4)
    # terms sharing one effect (long and curly eyelashes) are drawn once, at the larger intensity: labelled so
    drawn_at, _ = effects_for_terms(shown, table)
    shown = {hpo_id: drawn_at[table[hpo_id].key] for hpo_id in shown}
    # lesions only on an individual who shows an acne term: a disease that has acne in some patients (acromegaly at
    # 0.17, Cushing at 0.55) drew them on every face of stages 1-3 until renderer 2, unlabelled on most
    shows_acne = any(h in ACNE_TERMS for h in shown)
    lesions = count_from_severity(severity) if shows_acne and (stage > 0 or lesion_terms) else (0 if acne else -1)
    if acne and lesions == 0:
        shown = {h: t for h, t in shown.items() if h not in ACNE_TERMS}
    return {"identity": identity, "severity": round(severity, 4), "lesion_count": lesions, "phenotypes": shown}


def render_labels(labels: dict, cfg: PhantomConfig, table: dict[str, TermEffect]) -> Image.Image:
    phenotypes = dict(labels["phenotypes"])
    if ACNE in phenotypes and set(ACNE_LESIONS) & set(phenotypes):
        # draw only the lesion types this individual has (the generic term would add the natural mix, nodules too)
        phenotypes.pop(ACNE)
    effects, _ = effects_for_terms(phenotypes, table)
    lesions = labels["lesion_count"] if labels["lesion_count"] >= 0 else None
    return render_face(labels["identity"], effects, size=cfg.size, supersample=cfg.supersample, lesion_count=lesions)


def shown_identities(cfg: PhantomConfig, table: dict[str, TermEffect], hpo_id: str, identity_ids,
                     per_term: int) -> list:
    """The identities `isolated_effects` draws `hpo_id` on, in order: the first `per_term` of `identity_ids` it can
    show on (a hair term changes no pixel of a bald head). Callers pair its images with these identities' bare
    faces."""
    key = table[hpo_id].key
    return [i for i in identity_ids if shows_on(key, sample_identity(cfg.seed, int(i)))][:per_term]


def isolated_effects(cfg: PhantomConfig, table: dict[str, TermEffect], hpo_ids, identity_ids,
                     per_term: int = 12) -> tuple[list[Image.Image], list[str | None]]:
    """Each phenotype drawn alone at full intensity on the first `per_term` identities, plus every identity with
    nothing drawn (label None). A disease image shows its phenotypes together, so a head can score well on disease
    images by recognising the disease; alone on a healthy face only the phenotype itself can be read."""
    faces = {i: sample_identity(cfg.seed, int(i)) for i in identity_ids}
    images, labels = [], []
    for i in identity_ids:
        images.append(render_labels({"identity": faces[i], "lesion_count": -1, "phenotypes": {}}, cfg, table))
        labels.append(None)
    full_lesions = count_from_severity(3.0)
    for h in hpo_ids:
        if h not in table:
            continue
        for i in shown_identities(cfg, table, h, identity_ids, per_term):
            labels_i = {"identity": faces[i], "lesion_count": full_lesions if h in ACNE_TERMS else -1,
                        "phenotypes": {h: 1.0}}
            images.append(render_labels(labels_i, cfg, table))
            labels.append(h)
    return images, labels


ATLAS = "atlas"  # the disease label of phenotype-atlas rows (never a class: phenotype reading and composition)


ATLAS_KEYS = ("faces", "per_face", "intensity")


def atlas_settings(atlas) -> tuple[int, tuple[int, int], tuple[float, float]]:
    """`data.atlas` as (faces, per_face, intensity), checked: a setting the builder cannot honour is one line naming
    its data.atlas.* key (a reversed range drew from numpy's reversed interval, a string count was a traceback)."""
    if atlas is not None and not isinstance(atlas, dict):
        raise UserError(f"data.atlas must be a mapping ({{faces: N, per_face: [4, 8], intensity: [0.5, 1.0]}}) or "
                        f"null, got {atlas!r}")
    atlas = dict(atlas or {})
    unknown = sorted(set(atlas) - set(ATLAS_KEYS))
    if unknown:
        raise UserError(f"data.atlas.{unknown[0]} is not a setting of the phenotype atlas; known: "
                        f"{', '.join(ATLAS_KEYS)}")
    faces = _whole(atlas.get("faces", 0), "atlas.faces", 0)
    per_face = atlas.get("per_face", (4, 8))
    if (not isinstance(per_face, (list, tuple)) or len(per_face) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in per_face)
            or not 1 <= per_face[0] <= per_face[1]):
        raise UserError(f"data.atlas.per_face must be [low, high] whole numbers with 1 <= low <= high (phenotypes "
                        f"per atlas face), got {per_face!r}")
    intensity = atlas.get("intensity", (0.5, 1.0))
    if (not isinstance(intensity, (list, tuple)) or len(intensity) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in intensity)
            or not 0.0 < intensity[0] <= intensity[1] <= 1.0):
        raise UserError(f"data.atlas.intensity must be [low, high] with 0 < low <= high <= 1, got {intensity!r}")
    return faces, (int(per_face[0]), int(per_face[1])), (float(intensity[0]), float(intensity[1]))


def build_atlas(profiles: list[FacialProfile], cfg: PhantomConfig, table: dict[str, TermEffect], out: Path,
                faces: int, per_face=(4, 8), intensity=(0.5, 1.0), progress: bool = True) -> list[dict]:
    """The phenotype atlas: `faces` train-split identities, each with 4-8 (`per_face`) of the panel's renderable
    phenotypes drawn at random, independently of any disease, at intensities U(`intensity`). In disease images a
    phenotype always comes with its disease's others, so a head trained on them alone learns to read the disease;
    the atlas shows each phenotype in varied company (docs/evaluation.md, "Each phenotype alone"). At most one
    term per effect is drawn on a face. Rows go to `phenotype_atlas.csv`: the evaluator's phenotype heads read
    them, and the generator trains on them when trainer.atlas_share > 0 (kgface.diffusion.training_data)."""
    from tqdm import tqdm

    vocab = sorted({p.hpo_id for prof in profiles for p in prof.phenotypes if p.hpo_id in table})
    if not vocab or faces <= 0:
        return []
    train = sorted(i for i, s in identity_split(cfg).items() if s == "train")
    if not train:
        raise UserError("the phenotype atlas needs train identities: raise data.split_fractions' first share (train) "
                        "or data.identities")
    rng = np.random.default_rng([cfg.seed, 5])
    lo, hi = int(per_face[0]), int(per_face[1])
    (out / "images" / ATLAS).mkdir(parents=True, exist_ok=True)
    rows = []
    for k in tqdm(range(int(faces)), desc="rendering the phenotype atlas", disable=not progress, unit="img"):
        identity_id, count = int(rng.choice(train)), int(rng.integers(lo, hi + 1))
        identity = sample_identity(cfg.seed, identity_id)
        chosen, used, keys = {}, set(), []
        for j in rng.permutation(len(vocab)):
            key = table[vocab[j]].key
            # one term per effect; none this face cannot show (hair on a bald head) or whose marks another hides
            if (key.split("[")[0] not in used and shows_on(key, identity)
                    and not any(conflict(key, other) for other in keys)):
                chosen[vocab[j]] = round(float(rng.uniform(*intensity)), 4)
                used.add(key.split("[")[0])
                keys.append(key)
            if len(chosen) >= count:
                break
        acne = [t for h, t in chosen.items() if h in ACNE_TERMS]
        labels = {"identity": identity, "phenotypes": chosen,
                  # at least one lesion: an acne term labelled on a face must show (count 0 below t = 1/66)
                  "lesion_count": max(1, count_from_severity(3.0 * max(acne))) if acne else -1}
        rel = f"images/{ATLAS}/{k:05d}.png"
        render_labels(labels, cfg, table).save(out / rel, optimize=False, compress_level=1)
        rows.append({"path": rel, "identity": identity_label(identity_id), "disease": ATLAS, "stage": 0,
                     "severity": 0.0, "lesion_count": labels["lesion_count"] if acne else "", "split": "train",
                     "source": "phantom-atlas", "phenotypes": json.dumps(chosen, sort_keys=True),
                     "age_group": labels["identity"].age_group, "heldout": False})
    return rows


def renderable_share(profile: FacialProfile, table: dict[str, TermEffect], unknown: float) -> float:
    """Share of the profile's frequency mass that the renderer can draw."""
    f = [(unknown if p.frequency is None else p.frequency, p.hpo_id in table) for p in profile.phenotypes]
    total = sum(w for w, _ in f)
    return sum(w for w, ok in f if ok) / total if total else 0.0


def heldout_coverage(profiles: list[FacialProfile], heldout: list[str], table: dict[str, TermEffect],
                     unknown: float) -> dict[str, float]:
    """For each held-out disease: share of its renderable frequency mass whose HPO terms occur in a training
    disease (an unseen disease can only be composed from phenotypes the generator has seen)."""
    seen = {p.hpo_id for prof in profiles if prof.disease_id not in heldout for p in prof.phenotypes
            if p.hpo_id in table}
    out = {}
    for prof in profiles:
        if prof.disease_id in heldout:
            rend = [(unknown if p.frequency is None else p.frequency, p.hpo_id in seen) for p in prof.phenotypes
                    if p.hpo_id in table]
            total = sum(w for w, _ in rend)
            out[prof.disease_id] = sum(w for w, ok in rend if ok) / total if total else 0.0
    return out


def build_phantom(profiles: list[FacialProfile], cfg: PhantomConfig, table: dict[str, TermEffect], out: Path,
                  heldout: list[str], progress: bool = True) -> tuple[list[dict], dict]:
    """Render every (disease, individual, stage) into out/images/ and return (manifest rows, stats)."""
    from tqdm import tqdm

    splits = identity_split(cfg)
    jobs = []
    for prof in profiles:
        if prof.healthy:
            rng = np.random.default_rng([cfg.seed, 4])
            by_split = {s: sorted(i for i, v in splits.items() if v == s) for s in SPLITS}
            for k, split in enumerate(SPLITS):
                n = round(cfg.healthy_per_class * cfg.split_fractions[k]) if k < 2 else \
                    cfg.healthy_per_class - sum(1 for j in jobs if j[0].healthy)
                for i in rng.choice(by_split[split], size=n, replace=False):
                    jobs.append((prof, int(i), 0))
            continue
        for i in choose_identities(prof, cfg, splits, cfg.per_class):
            jobs += [(prof, i, stage) for stage in cfg.stages]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for prof, identity_id, stage in tqdm(jobs, desc="rendering phantom faces", disable=not progress, unit="img"):
        labels = draw_labels(prof, identity_id, stage, cfg, table) if not prof.healthy else {
            "identity": sample_identity(cfg.seed, identity_id), "severity": 0.0, "lesion_count": -1, "phenotypes": {}}
        rel = f"images/{slug(prof.disease_id)}/{identity_id:05d}_s{stage}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        render_labels(labels, cfg, table).save(out / rel, optimize=False, compress_level=1)
        rows.append({"path": rel, "identity": identity_label(identity_id), "disease": prof.disease_id, "stage": stage,
                     "severity": labels["severity"],
                     "lesion_count": labels["lesion_count"] if labels["lesion_count"] >= 0 else "",
                     "split": splits[identity_id], "source": "phantom",
                     "phenotypes": json.dumps(labels["phenotypes"], sort_keys=True),
                     "age_group": labels["identity"].age_group, "heldout": prof.disease_id in heldout})
    diseases = [p for p in profiles if not p.healthy]
    stats = {
        "images": len(rows),
        "renderable_share": {p.disease_id: round(renderable_share(p, table, cfg.unknown_frequency), 3)
                             for p in diseases},
        "unrenderable_terms": {p.disease_id: [f"{x.hpo_id} {x.name}" for x in p.phenotypes if x.hpo_id not in table]
                               for p in diseases},
        "heldout": list(heldout),
        "heldout_coverage": {k: round(v, 3) for k, v in heldout_coverage(profiles, heldout, table,
                                                                        cfg.unknown_frequency).items()},
        "onset_coverage": {p.disease_id: sum(1 for x in p.phenotypes if x.onset) for p in diseases},
    }
    # a disease row of stages 1-3 whose labels name nothing: every one of an individual's MAX_DRAWS draws failed to
    # show (e.g. only adult-onset terms on a child, a rare sole renderable term): a healthy-looking face under the
    # disease's label. Counted and said (none in the default or benchmark panel), not silently kept
    blank = Counter(r["disease"] for r in rows
                    if r["disease"] != "healthy" and int(r["stage"]) >= 1 and r["phenotypes"] == "{}"
                    and not (r["lesion_count"] not in ("", None) and int(r["lesion_count"]) > 0))
    stats["rows_showing_nothing"] = dict(sorted(blank.items()))
    if blank:
        log.warning("phantom: %d disease rows of stages 1-3 show none of their disease's phenotypes (%s): no draw of "
                    "the individual could show one; they look healthy under the disease's label", sum(blank.values()),
                    ", ".join(f"{d} {n}" for d, n in sorted(blank.items())))
    return rows, stats


def contact_sheet(rows: list[dict], root: Path, names: dict[str, str], per_disease: int = 2, stages=(0, 1, 2, 3),
                  label_width: int = 190) -> Image.Image:
    """One row per disease, stages left to right, for `per_disease` test identities (healthy: a few faces)."""
    from ...sheets import labelled_sheet

    by_disease: dict[str, list[dict]] = {}
    for r in rows:
        by_disease.setdefault(r["disease"], []).append(r)
    cols = per_disease * len(stages)
    sheet_rows = []
    for disease, items in by_disease.items():
        label = f"{disease}\n{names.get(disease, '')[:28]}" + ("\n(held out)" if items[0].get("heldout") else "")
        items = sorted(items, key=lambda r: (r["split"] != "test", r["identity"], r["stage"]))
        if disease == "healthy":
            picks = items[:cols]
        else:
            ids = list(dict.fromkeys(r["identity"] for r in items))[:per_disease]
            picks = [r for i in ids for s in stages for r in items if r["identity"] == i and r["stage"] == s]
        sheet_rows.append((label, [Image.open(root / r["path"]) for r in picks[:cols]]))
    return labelled_sheet(sheet_rows, columns=[f"stage {s}" for s in list(stages) * per_disease],
                          label_width=label_width)
