"""Every sentence kgface shows a text encoder: the stage scale, the template (`llm=none`) descriptions, the
generator's training prompts, the evaluator's captions and zero-shot prompts, and negative prompts.

Wording lives here and nowhere else, so that the generator and the evaluator describe a disease the same way and a
change of wording is one diff. Functions take a `FacialProfile` and are deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from kgface.kg.profiles import FacialProfile, Phenotype

N_STAGES = 4


def stage_of(severity: float) -> int:
    """The stage whose severity bin [s - 0.5, s + 0.5) holds `severity`, the phantom's bins: 0.5 is stage 1 and 2.5
    stage 3 (Python's round() sends halves to the even stage: 0.5 -> 0, 2.5 -> 2)."""
    return int(min(N_STAGES - 1, max(0, math.floor(float(severity) + 0.5))))
ACNE = "MONDO:0011438"

# With conditioning=kg the disease reaches the UNet through the KG encoder only; the text must not leak it.
NEUTRAL_PROMPT = "a frontal portrait photograph of a person's face, neutral expression, even lighting"
HEALTHY_TEXT = "a healthy face with no visible signs of disease"
QUALITY_NEGATIVE = "blurry, low quality, distorted face, cartoon, drawing, watermark, text"
HEALTHY_NEGATIVE = "rash, skin lesions, facial redness, swelling, scars, facial malformation"


@dataclass(frozen=True)
class StageLevel:
    """One step of a disease's 0..3 severity scale."""

    name: str  # short, fits in a prompt: "moderate"
    clause: str  # what a face at this stage shows, in words: "clearly visible signs"
    lesions: tuple[int, int | None] | None = None  # lesion-count range (inclusive; None = open) where graded by count
    signs: bool = True  # whether a face at this stage shows any phenotype at all


DEFAULT_SCALE = (
    StageLevel("earliest", "no visible signs yet", signs=False),
    StageLevel("mild", "mild, subtle signs"),
    StageLevel("moderate", "clearly visible signs"),
    StageLevel("severe", "pronounced, fully developed signs"),
)

# Per-disease scales. Acne follows ACNE04 / Hayashi et al. 2008 grades by lesion count on one side of the face.
STAGE_SCALES: dict[str, tuple[StageLevel, ...]] = {
    ACNE: (
        StageLevel("mild", "at most 5 acne lesions", (0, 5)),
        StageLevel("moderate", "6 to 20 acne lesions", (6, 20)),
        StageLevel("severe", "21 to 50 acne lesions", (21, 50)),
        StageLevel("very severe", "more than 50 acne lesions", (51, None)),
    ),
}


def stage_levels(disease_id: str) -> tuple[StageLevel, ...]:
    """The full 0..3 scale of a disease (name, clause, lesion counts); the default where none is curated."""
    return STAGE_SCALES.get(disease_id, DEFAULT_SCALE)


def stage_scale(disease_id: str) -> list[str]:
    """The four short stage names of a disease, stage 0 first."""
    return [level.name for level in stage_levels(disease_id)]


def _check_stage(stage: int) -> int:
    if not 0 <= int(stage) < N_STAGES:
        raise ValueError(f"stage must be in 0..{N_STAGES - 1}, got {stage}")
    return int(stage)


# how many phenotypes a template description names at each stage: more signs as the disease progresses
STAGE_LIMITS = (3, 3, 5, 7)


def _frequency(p: Phenotype) -> float:
    return 0.8 if p.frequency is None else p.frequency


def appear_stage(p: Phenotype) -> int:
    """First stage at which the template shows a phenotype: frequent signs early, rare ones only at full severity.

    The curated `min_stage` of the KG is a floor; an unknown frequency counts as frequent (the KG lists it, so it is
    a sign of the disease, but we cannot say how rare it is).
    """
    f = _frequency(p)
    by_frequency = 1 if f >= 0.5 else 2 if f >= 0.2 else 3
    return max(int(p.min_stage or 0), by_frequency)


def _by_frequency(phenotypes: list[Phenotype]) -> list[Phenotype]:
    return sorted(phenotypes, key=lambda p: (-_frequency(p), p.hpo_id))


# how many of a disease's frequent phenotypes a description of full severity must name (one sentence holds few)
FINAL_STAGE_FREQUENT = 3


def frequent_phenotypes(profile: FacialProfile, limit: int = FINAL_STAGE_FREQUENT) -> list[Phenotype]:
    """The signs most patients show (frequency >= 0.5, or not given: the KG lists it, so it counts as frequent),
    most frequent first, at most `limit`: what any description of the disease at full severity must show. Ranked by
    the whole percent the LLM request shows (then the lower id, as its rules say): 84.4% and 83.6% are a tie there;
    the threshold is read on that percent too (0.496 shows as 50%, so it counts)."""
    frequent = [p for p in profile.phenotypes if round(100 * _frequency(p)) >= 50]
    return sorted(frequent, key=lambda p: (-round(100 * _frequency(p)), p.hpo_id))[:limit]


def stage_phenotypes(profile: FacialProfile, stage: int, limit: int | None = None) -> list[Phenotype]:
    """The phenotypes a template description of `stage` shows, most frequent first.

    A stage whose scale level has no signs shows nothing; a stage 0 with signs (acne's "at most 5 lesions") shows
    those the KG marks as present from the start (`min_stage` 0, frequency >= 0.5). From stage 1 on a disease shows
    at least its most frequent phenotype whose `min_stage` allows that stage (none if none does).
    """
    stage = _check_stage(stage)
    if not stage_levels(profile.disease_id)[stage].signs:
        return []
    ranked = _by_frequency(profile.phenotypes)
    if stage == 0:
        chosen = [p for p in ranked if int(p.min_stage or 0) == 0 and _frequency(p) >= 0.5]
    else:
        # at least the most frequent phenotype the stage may show (a later min_stage is not drawn there either)
        chosen = [p for p in ranked if appear_stage(p) <= stage] or [p for p in ranked
                                                                      if int(p.min_stage or 0) <= stage][:1]
    shown = chosen[:STAGE_LIMITS[stage] if limit is None else limit]
    if stage == N_STAGES - 1 and limit is None:
        # the answer rule's frequent signs (ranked by whole percent, then id) always: ranked by raw frequency the cap
        # could cut one whose shown percent ties with those kept
        frequent = frequent_phenotypes(profile)
        must = [p for p in frequent if p not in shown]
        if must:  # they replace the last of the others
            dropped = [p for p in reversed(shown) if p not in frequent][:len(must)]
            shown = [p for p in shown if p not in dropped] + must
    return shown


def _join(items: list[str]) -> str:
    """Join as `a, b and c`, or as `a; b; c` when an item has its own commas (curated wording often does)."""
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    if any("," in i or ":" in i for i in items):
        return "; ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _visual(p: Phenotype) -> str:
    return (p.visual or p.name).strip().rstrip(".")


def template_description(profile: FacialProfile, stage: int, every_phenotype: bool = False) -> str:
    """One sentence describing a face with the disease at `stage`, from the KG's curated visual wording
    (every_phenotype: all of the profile's phenotypes, not those the stage shows)."""
    if profile.healthy:
        return f"A photograph of {HEALTHY_TEXT}."
    level = stage_levels(profile.disease_id)[_check_stage(stage)]
    shown = _by_frequency(profile.phenotypes) if every_phenotype else stage_phenotypes(profile, stage)
    head = f"A face with {profile.name}, {level.name} stage ({level.clause})"
    if not shown:
        return head + "."
    return f"{head}: {_join([_visual(p) for p in shown])}."


def negative_prompt(profile: FacialProfile) -> str:
    """Negative prompt: image defects, plus what the KG says this disease does not show."""
    if profile.healthy:
        return f"{HEALTHY_NEGATIVE}, {QUALITY_NEGATIVE}"
    absent = [n.name.lower() for n in profile.negative_phenotypes][:4]
    return ", ".join(absent + [QUALITY_NEGATIVE])


def _stage_text(profile: FacialProfile, stage: int, descriptions, every_phenotype: bool = False) -> str:
    """The LLM description of `stage` when `descriptions` (describe_profiles' result or descriptions.json) holds
    one for this disease, else the template's. every_phenotype always takes the template: a face known to show
    exactly these phenotypes must name each of them, which a stage description (a few of them) does not."""
    if descriptions and not every_phenotype:
        entry = descriptions.get(profile.disease_id)
        if entry is not None:
            stages = entry["stages"] if isinstance(entry, dict) else [s.model_dump() for s in entry.stages]
            for s in stages:
                if int(s["stage"]) == stage:
                    return s["description"]
    return template_description(profile, stage, every_phenotype)


def training_prompt(profile: FacialProfile, stage: int | None, conditioning: str = "kg", descriptions=None,
                    every_phenotype: bool = False) -> str:
    """The text prompt the generator trains and samples with.

    conditioning="kg": a neutral prompt without disease words (the KG encoder carries the disease).
    conditioning="text": the disease, its stage and its visible phenotypes in words (the text-only baseline);
    every_phenotype: name all of the profile's phenotypes, not the stage's most frequent few (a face known to show
    exactly these, e.g. a phenotype-atlas face); `descriptions` are then ignored. stage None: unknown (a real photo
    without a grade): the disease without a stage, and without phenotypes unless every_phenotype (which ones show
    depends on the stage).
    """
    if conditioning == "kg":
        return NEUTRAL_PROMPT
    if conditioning != "text":
        raise ValueError(f"conditioning must be 'kg' or 'text', got {conditioning!r}")
    if profile.healthy:
        return f"{NEUTRAL_PROMPT}, {HEALTHY_TEXT}"
    if stage is None:  # a face known to show exactly its phenotypes still names them, without a stage clause
        shown = _by_frequency(profile.phenotypes) if every_phenotype else []
        return f"{NEUTRAL_PROMPT}. A face with {profile.name}" + (f": {_join([_visual(p) for p in shown])}."
                                                                    if shown else ".")
    stage = _check_stage(stage)
    return f"{NEUTRAL_PROMPT}. {_stage_text(profile, stage, descriptions, every_phenotype)}"


def caption(profile: FacialProfile, stage: int | None = None,
            phenotypes_present: dict[str, float] | None = None, threshold: float = 0.5) -> str:
    """Evaluator caption of an image labelled with a disease, a stage and (optionally) per-phenotype scores.

    With `phenotypes_present` the caption names the phenotypes scored >= threshold (in the profile's order); without
    it, those the template shows at that stage.
    """
    if profile.healthy:
        return f"a photo of {HEALTHY_TEXT}"
    head = "a photo of a face with "
    if stage is not None:
        head += f"{profile.name}, {stage_levels(profile.disease_id)[_check_stage(stage)].name} stage"
    else:
        head += profile.name
    if phenotypes_present is not None:
        shown = [p for p in profile.phenotypes if phenotypes_present.get(p.hpo_id, 0.0) >= threshold]
    elif stage is not None:
        shown = stage_phenotypes(profile, stage)
    else:
        shown = _by_frequency(profile.phenotypes)[:3]
    return f"{head}, showing {_join([_visual(p) for p in shown])}" if shown else head


def phenotype_caption(phenotypes: list[Phenotype]) -> str:
    """Evaluator caption of a face labelled with phenotypes only (the phantom's phenotype atlas: no disease)."""
    return f"a photo of a face showing {_join([_visual(p) for p in phenotypes])}" if phenotypes else \
        f"a photo of {HEALTHY_TEXT}"


def zero_shot_prompts(profile: FacialProfile) -> list[str]:
    """Prompts a CLIP-style zero-shot classifier averages for this class (a prompt ensemble)."""
    if profile.healthy:
        return healthy_prompts()
    name = profile.name
    prompts = [f"a photo of a face with {name}", f"a close-up photograph of a person with {name}",
               f"a face showing the signs of {name}"]
    top = _by_frequency(profile.phenotypes)[:3]
    if top:
        prompts.append(f"a photo of a face with {_join([_visual(p) for p in top])}")
    return prompts


def phenotype_prompts(phenotype: Phenotype) -> list[str]:
    """Prompts a zero-shot phenotype head averages (evaluator.phenotype_heads=zero_shot), read against
    `healthy_prompts`; the first is the atlas caption of a face showing this phenotype alone."""
    v = _visual(phenotype)
    return [phenotype_caption([phenotype]), f"a close-up photograph of a person with {v}", f"a face with {v}"]


def healthy_prompts() -> list[str]:
    return [f"a photo of {HEALTHY_TEXT}", "a close-up photograph of a healthy person's face",
            "a face with clear, healthy skin and typical features"]
