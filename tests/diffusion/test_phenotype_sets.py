"""Observed phenotype sets: training faces conditioned on what they show, requests drawing their sets from the KG."""
import dataclasses
import json

import pytest

from kgface.diffusion.phenotype_sets import drawn_profile, observed_profiles, with_phenotypes
from kgface.errors import UserError
from kgface.kg.profiles import FacialProfile, Phenotype, healthy_profile


def _profile(freqs, min_stages=None, disease_id="ORPHA:1"):
    min_stages = min_stages or [0] * len(freqs)
    return FacialProfile(disease_id=disease_id, name="a disease", kg="test", phenotypes=[
        Phenotype(hpo_id=f"HP:{i:07d}", name=f"sign {i}", region="face", visual=f"sign {i}", frequency=f,
                  min_stage=m) for i, (f, m) in enumerate(zip(freqs, min_stages))])


def test_a_profile_cut_to_a_set_keeps_the_disease_and_sets_frequency_one():
    prof = _profile([0.2, 0.9, None])
    cut = with_phenotypes(prof, ["HP:0000002", "HP:0000000"])
    assert [p.hpo_id for p in cut.phenotypes] == ["HP:0000000", "HP:0000002"]  # the profile's own order
    assert all(p.frequency == 1.0 for p in cut.phenotypes)
    assert (cut.disease_id, cut.name) == (prof.disease_id, prof.name)
    assert [p.frequency for p in prof.phenotypes] == [0.2, 0.9, None]  # the original is untouched


def test_draws_follow_the_kg_frequencies_and_one_seed_is_one_individual():
    prof = _profile([0.1, 0.5, 0.9, 1.0, None], min_stages=[0, 0, 0, 2, 0])
    n = 4000
    counts = {p.hpo_id: 0 for p in prof.phenotypes}
    for seed in range(n):
        for p in drawn_profile(prof, seed, 3.0).phenotypes:
            counts[p.hpo_id] += 1
    rates = [counts[p.hpo_id] / n for p in prof.phenotypes]
    assert rates == pytest.approx([0.1, 0.5, 0.9, 1.0, 0.5], abs=0.03)  # unknown frequency drawn at 0.5
    for seed in range(50):
        full = {p.hpo_id for p in drawn_profile(prof, seed, 3.0).phenotypes}
        early = {p.hpo_id for p in drawn_profile(prof, seed, 1.2).phenotypes}
        assert early == full - {"HP:0000003"}  # the same individual; the min_stage-2 sign waits for stage 2
        assert drawn_profile(prof, seed, 0.0).phenotypes == []  # stage 0 shows no signs
        assert drawn_profile(prof, seed, 3.0) == drawn_profile(prof, seed, 3.0)
    sets = {tuple(p.hpo_id for p in drawn_profile(prof, s, 3.0).phenotypes) for s in range(50)}
    assert len(sets) > 5  # seeds are different individuals
    acne = _profile([1.0, 1.0], min_stages=[0, 1], disease_id="MONDO:0011438")  # acne vulgaris: grade 0 is mild acne
    assert [p.hpo_id for p in drawn_profile(acne, 0, 0.0).phenotypes] == ["HP:0000000"]
    assert drawn_profile(_profile([1.0]), 0, 0.4).phenotypes == []  # stage 0 of a disease without stage-0 signs
    custom = _profile([0.3, 0.0])  # a user's phenotype set: the numbers are intensities, not frequencies
    custom.phenotypes = [dataclasses.replace(p, provenance="custom") for p in custom.phenotypes]
    assert drawn_profile(custom, 0, 0.0) is custom
    healthy = healthy_profile("test")
    assert drawn_profile(healthy, 3, 2.0) is healthy


def test_a_generator_draws_unknown_frequencies_as_its_run_did():
    # the phantom drew phenotypes of unknown KG frequency with data.unknown_frequency; the requests' draws read the
    # same number (it was 0.5 whatever the run's setting)
    from types import SimpleNamespace

    from kgface.diffusion.generator import Generator, Request

    prof = _profile([None, None, None])
    reqs = [Request(prof, 3.0, seed) for seed in range(20)]
    drawn = {}
    for unknown in (0.0, 1.0):
        gen = Generator.__new__(Generator)
        gen.conditioner = SimpleNamespace(phenotype_draws=True, unknown_frequency=unknown)
        drawn[unknown] = [len(p.phenotypes) for p in gen.request_profiles(reqs)]
    assert drawn == {0.0: [0] * 20, 1.0: [3] * 20}


def test_a_loaded_run_reads_its_unknown_frequency_from_its_config(evaluated_run, tmp_path):
    """The number above reaches a loaded run's conditioner from its config.yaml (not the conditioner's 0.5)."""
    import shutil

    from omegaconf import OmegaConf

    from kgface.diffusion.run_loading import load_run

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.unknown_frequency == 0.5
    cfg.data.unknown_frequency = 0.25
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert load_run(run)[1].unknown_frequency == 0.25


def _rows(disease, sets):
    return [{"path": f"images/{k}.png", "disease": disease, "phenotypes": json.dumps({h: 0.5 for h in s})}
            for k, s in enumerate(sets)]


def test_observed_profiles_are_one_per_distinct_set_and_errors_name_the_image():
    prof, healthy = _profile([0.5, 0.5, 0.5]), healthy_profile("test")
    rows = _rows("ORPHA:1", [["HP:0000000"], ["HP:0000001", "HP:0000000"], ["HP:0000000"], []]) + \
        [{"path": "images/h.png", "disease": "healthy", "phenotypes": "{}"}]
    index, sets = observed_profiles("m.csv", rows, [prof, healthy])
    assert index == [0, 1, 0, 2, 3]
    assert [[p.hpo_id for p in s.phenotypes] for s in sets] == [["HP:0000000"], ["HP:0000000", "HP:0000001"], [], []]
    assert sets[3] is healthy and sets[2].disease_id == "ORPHA:1"  # a stage-0 face: the disease, no signs
    with pytest.raises(UserError, match=r"images/0.png shows \['HP:0000009'\]"):
        observed_profiles("m.csv", _rows("ORPHA:1", [["HP:0000009"]]), [prof])
    with pytest.raises(UserError, match="images/x.png: its phenotypes column is not a JSON object"):
        observed_profiles("m.csv", [{"path": "images/x.png", "disease": "ORPHA:1", "phenotypes": "HP:1"}], [prof])
    index, sets = observed_profiles("m.csv", [{"path": "a.png", "disease": "ORPHA:1",
                                                "phenotypes": json.dumps({"HP:0000000": 0.5, "HP:0000001": 0.0})}],
                                    [prof])
    assert [p.hpo_id for p in sets[0].phenotypes] == ["HP:0000000"]  # intensity 0 is not shown
    with pytest.raises(UserError, match="no training image has phenotype labels"):  # never a silently empty set
        observed_profiles("m.csv", _rows("ORPHA:1", [[], []]), [prof])
