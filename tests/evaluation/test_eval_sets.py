"""kgface.evaluation.sets, parts with known answers on constructed tables (no images)."""
import pandas as pd
import pytest

from kgface.evaluation.sets import real_profile_match
from kgface.kg.profiles import FacialProfile, Phenotype


def _profile():
    # template: stage 2 shows A (0.9) and B (0.3); stage 3 adds the rare C (0.1)
    return FacialProfile("D:1", "a disease", "test", phenotypes=[
        Phenotype("A", "a", "face", "", frequency=0.9), Phenotype("B", "b", "face", "", frequency=0.3),
        Phenotype("C", "c", "face", "", frequency=0.1)])


def test_real_profile_match_reads_labelled_graded_stage_2_3_faces_against_own_and_template_sets():
    rows = [  # disease, stage, source, stage_known, phenotypes, detected
        ("D:1", 3, "phantom", "True", {"A": 1.0, "B": 0.6, "Z": 1.0}, {"A"}),  # own {A,B} (Z: no head): 2/3
        ("D:1", 2, "phantom", "True", {"C": 1.0}, {"C"}),  # own 1; template {A,B}: 0
        ("D:1", 1, "phantom", "True", {"A": 1.0}, set()),  # stage 1: not a headline row
        ("healthy", 0, "phantom", "True", {}, {"B"}),  # healthy expects nothing: not read
        ("D:1", 3, "photo", "True", {}, {"A"}),  # a diseased photo's {} is "not labelled"
        ("D:1", 2, "photo", "False", {"A": 1.0}, set()),  # ungraded: its stage is a placeholder
        ("D:2", 3, "phantom", "True", {"A": 1.0}, {"A"}),  # no profile: own set only
    ]
    test = pd.DataFrame(rows, columns=["disease", "stage", "source", "stage_known", "phenotypes", "detected"])
    table = test[["disease", "stage", "phenotypes", "detected"]].copy()
    out = real_profile_match(table, test, {"D:1": _profile()}, ["A", "B", "C"])
    assert out["real_profile_match_n"] == 3
    assert out["real_profile_match_f1"] == pytest.approx((2 / 3 + 1.0 + 1.0) / 3)
    # the rows with a profile: row 1 against {A,B,C}: 2 x 1 / (1 + 3); row 2 against {A,B}: 0
    assert out["real_profile_match_f1_template"] == pytest.approx(0.25) and out["real_profile_match_template_n"] == 2
    # without profiles only the own-set reference; without a readable row nothing
    assert "real_profile_match_f1_template" not in real_profile_match(table, test, {}, ["A", "B", "C"])
    assert real_profile_match(table.iloc[2:4], test.iloc[2:4], {"D:1": _profile()}, ["A", "B", "C"]) == {}
