"""Template descriptions, training prompts, captions and zero-shot prompts for known profiles."""
import pytest

from kgface.kg.profiles import NegativePhenotype, Phenotype
from kgface.prompts.wording import HEALTHY_TEXT, QUALITY_NEGATIVE
from kgface.prompts import (NEUTRAL_PROMPT, caption, healthy_prompts, negative_prompt, stage_levels, stage_scale,
                            template_description, template_descriptions, training_prompt, zero_shot_prompts)


def test_stage_scale_default_and_acne():
    assert stage_scale("ORPHA:870") == ["earliest", "mild", "moderate", "severe"]
    assert stage_scale("MONDO:0011438") == ["mild", "moderate", "severe", "very severe"]
    # ACNE04 / Hayashi lesion counts, contiguous and open-ended at the top
    assert [lvl.lesions for lvl in stage_levels("MONDO:0011438")] == [(0, 5), (6, 20), (21, 50), (51, None)]


def test_template_down_syndrome_grows_with_stage(down):
    assert [template_description(down, s) for s in range(4)] == [
        "A face with Down syndrome, earliest stage (no visible signs yet).",
        "A face with Down syndrome, mild stage (mild, subtle signs): upward-slanting eyes and a flat nasal bridge.",
        "A face with Down syndrome, moderate stage (clearly visible signs): upward-slanting eyes, a flat nasal "
        "bridge and skin folds at the inner eye corners.",
        "A face with Down syndrome, severe stage (pronounced, fully developed signs): upward-slanting eyes, a flat "
        "nasal bridge, skin folds at the inner eye corners and upturned nostrils.",
    ]


def test_templates_rank_by_frequency_whatever_the_profile_order(down):
    """The KG lists phenotypes in its own order (kg/profiles.py puts unknown frequencies last; the template ranks
    them as 0.8): the template ranks by frequency, ties by HPO id, and names at most STAGE_LIMITS of them."""
    import dataclasses

    from kgface.prompts.wording import STAGE_LIMITS, stage_phenotypes

    reversed_down = dataclasses.replace(down, phenotypes=down.phenotypes[::-1])
    assert [template_description(reversed_down, s) for s in range(4)] == [
        template_description(down, s) for s in range(4)]
    assert [p.hpo_id for p in stage_phenotypes(reversed_down, 3)] == [
        "HP:0000582", "HP:0005280", "HP:0000286", "HP:0000463"]  # 0.84, None (0.8), 0.3, 0.1
    many = dataclasses.replace(down, phenotypes=[
        Phenotype(f"HP:00000{i:02d}", f"Sign {i}", "skin", f"sign {i}", 1.0) for i in range(18, 10, -1)])
    assert [p.hpo_id for p in stage_phenotypes(many, 1)] == ["HP:0000011", "HP:0000012", "HP:0000013"]
    assert [len(stage_phenotypes(many, s)) for s in range(1, 4)] == list(STAGE_LIMITS[1:])
    assert [p.hpo_id for p in stage_phenotypes(many, 3)] == [f"HP:00000{i}" for i in range(11, 18)]
    # the fallback ("at least one sign from stage 1 on") keeps the KG's min_stage floor, as the phantom does
    late = dataclasses.replace(down, phenotypes=[Phenotype("HP:0200039", "Pustule", "skin", "pustules", 0.1,
                                                           min_stage=2)])
    assert [[p.hpo_id for p in stage_phenotypes(late, s)] for s in (1, 2, 3)] == [[], ["HP:0200039"], ["HP:0200039"]]


def test_template_acne_follows_min_stage(acne):
    d = template_descriptions(acne)
    assert d.source == "template" and d.backend == "none" and d.fallback_reason is None
    assert [s.phenotypes for s in d.stages] == [
        ["HP:0001061", "HP:0025249"],  # lesions are there from grade 0 (<= 5 lesions)
        ["HP:0001061", "HP:0025249", "HP:0200034"],
        ["HP:0001061", "HP:0025249", "HP:0200034", "HP:0200039"],  # pustules: min_stage 2
        ["HP:0001061", "HP:0025249", "HP:0200034", "HP:0200039"],
    ]
    assert d.stages[0].description.startswith("A face with acne vulgaris, mild stage (at most 5 acne lesions): ")
    assert "more than 50 acne lesions" in d.stages[3].description


def test_training_prompt_kg_has_no_disease_words(down, acne, healthy):
    for profile in (down, acne, healthy):
        for stage in range(4):
            prompt = training_prompt(profile, stage, conditioning="kg")
            assert prompt == NEUTRAL_PROMPT
            words = [profile.name.lower()] + [p.visual.split()[-1] for p in profile.phenotypes]
            assert not any(w and w in prompt.lower() for w in words)


def test_training_prompt_text_names_disease_and_phenotypes(down, healthy):
    prompt = training_prompt(down, 2, conditioning="text")
    assert "Down syndrome" in prompt and "upward-slanting eyes" in prompt and "moderate" in prompt
    # the text baseline's prompt is the kg prompt plus the disease's words, nothing else (a fair baseline)
    assert prompt == f"{NEUTRAL_PROMPT}. {template_description(down, 2)}"
    assert training_prompt(healthy, 0, conditioning="text") == f"{NEUTRAL_PROMPT}, {HEALTHY_TEXT}"
    with pytest.raises(ValueError, match="conditioning"):
        training_prompt(down, 1, conditioning="image")
    with pytest.raises(ValueError, match="stage"):
        training_prompt(down, 4, conditioning="text")


def test_training_prompt_prefers_llm_descriptions(down):
    d = template_descriptions(down)
    d.stages[1].description = "A face with almond-shaped eyes tilted upwards."
    assert training_prompt(down, 1, "text", {down.disease_id: d}).endswith("almond-shaped eyes tilted upwards.")
    # the same from descriptions.json's parsed form, and the template for a disease it lacks
    as_json = {down.disease_id: d.model_dump()}
    assert training_prompt(down, 1, "text", as_json).endswith("tilted upwards.")
    assert training_prompt(down, 2, "text", {"ORPHA:1": d}) == training_prompt(down, 2, "text")


def test_caption_from_image_labels(down, healthy):
    assert caption(down, 1) == ("a photo of a face with Down syndrome, mild stage, showing upward-slanting eyes "
                                "and a flat nasal bridge")
    # labels of one image: only phenotypes scored >= 0.5, in profile order
    cap = caption(down, 3, {"HP:0000463": 0.9, "HP:0000582": 0.2, "HP:0000286": 0.5})
    assert cap == ("a photo of a face with Down syndrome, severe stage, showing skin folds at the inner eye corners "
                   "and upturned nostrils")
    assert caption(down, None, {}) == "a photo of a face with Down syndrome"
    assert caption(healthy, 2) == "a photo of a healthy face with no visible signs of disease"


def test_zero_shot_and_negative_prompts(down, healthy):
    prompts = zero_shot_prompts(down)
    assert len(prompts) == 4 and all("Down syndrome" in p for p in prompts[:3])
    # the three most frequent phenotypes (the 0.1 "upturned nostrils" is not a class prompt)
    assert prompts[3] == ("a photo of a face with upward-slanting eyes, a flat nasal bridge and skin folds at the "
                          "inner eye corners")
    assert zero_shot_prompts(healthy) == healthy_prompts()
    assert not any("syndrome" in p for p in healthy_prompts())
    assert negative_prompt(down) == f"hypertelorism, {QUALITY_NEGATIVE}"
    assert "rash" in negative_prompt(healthy)
    # at most four absent phenotypes: the quality terms come last and must survive CLIP's 77-token truncation
    import dataclasses

    absent = [NegativePhenotype(f"HP:000000{i}", f"Absent {i}", "skin") for i in range(1, 7)]
    assert negative_prompt(dataclasses.replace(down, negative_phenotypes=absent)) == (
        f"absent 1, absent 2, absent 3, absent 4, {QUALITY_NEGATIVE}")


def test_every_phenotype_names_the_whole_profile(down):
    # a face known to show exactly these phenotypes (a phenotype-atlas face) is described by all of them, not the
    # stage's most frequent few
    short = training_prompt(down, 1, conditioning="text")
    full = training_prompt(down, 1, conditioning="text", every_phenotype=True)
    assert len(down.phenotypes) > 3
    missing = [p.visual for p in down.phenotypes if p.visual not in short]
    assert missing and all(p.visual in full for p in down.phenotypes)


def test_every_phenotype_ignores_llm_descriptions(down):
    # a stage description names a few phenotypes; a face known to show exactly these must name each of them
    d = template_descriptions(down)
    d.stages[1].description = "A face with almond-shaped eyes tilted upwards."
    for descs in ({down.disease_id: d}, {down.disease_id: d.model_dump()}):
        full = training_prompt(down, 1, "text", descs, every_phenotype=True)
        assert full == training_prompt(down, 1, "text", every_phenotype=True)
        assert "almond" not in full and all(p.visual in full for p in down.phenotypes)
        assert training_prompt(down, 1, "text", descs).endswith("tilted upwards.")  # without it: the description


def test_phenotype_prompts_open_with_the_atlas_caption(down):
    from kgface.prompts import phenotype_caption, phenotype_prompts

    for ph in down.phenotypes:
        prompts = phenotype_prompts(ph)
        assert prompts[0] == phenotype_caption([ph]) and len(set(prompts)) == 3
        assert all((ph.visual or ph.name).rstrip(".") in p for p in prompts)


def test_stage_of_a_severity_follows_the_phantoms_bins():
    # stage s owns severities [s - 0.5, s + 0.5): halves go up, not to the even stage as round() sends them
    from kgface.prompts.wording import stage_of

    assert [stage_of(s) for s in (0, 0.49, 0.5, 1.5, 2.5, 2.51, 3.0)] == [0, 0, 1, 2, 3, 3, 3]
    assert stage_of(-0.2) == 0 and stage_of(3.4) == 3  # clipped to the scale
