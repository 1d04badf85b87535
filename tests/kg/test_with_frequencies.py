"""profile.source=learned|blend: frequencies learned from images replace or blend with the KG's."""
from __future__ import annotations

import json

import pytest

from kgface.kg.profiles import FacialProfile, Phenotype, with_frequencies


def _profile():
    return FacialProfile("D:1", "disease 1", "hpo", [
        Phenotype(hpo_id="HP:0000001", name="a", region="eyes", visual="a", frequency=0.8, frequency_raw="4/5"),
        Phenotype(hpo_id="HP:0000002", name="b", region="eyes", visual="b", frequency=None),
        Phenotype(hpo_id="HP:0000003", name="c", region="eyes", visual="c", frequency=0.3)])


def test_learned_replaces_and_blend_mixes_and_missing_values_keep_the_kg():
    learned = {"D:1": {"HP:0000001": 0.2, "HP:0000002": 0.6}}
    p = _profile()
    got = with_frequencies([p], learned, "learned")[0]
    # re-sorted by the new frequencies: a profile lists its most frequent phenotype first
    assert [(x.hpo_id, x.frequency) for x in got.phenotypes] == [("HP:0000002", 0.6), ("HP:0000003", 0.3),
                                                                 ("HP:0000001", 0.2)]
    assert got.phenotypes[2].frequency_raw.startswith("learned 0.200 (kg 4/5)")
    mixed = {x.hpo_id: x for x in with_frequencies([p], learned, "blend", weight=0.25)[0].phenotypes}
    assert mixed["HP:0000001"].frequency == pytest.approx(0.25 * 0.2 + 0.75 * 0.8)
    assert mixed["HP:0000002"].frequency == pytest.approx(0.6)  # unknown in the KG: the learned value
    assert p.phenotypes[0].frequency == 0.8  # the input is not modified
    assert with_frequencies([p], learned, "kg")[0] is p


def test_profile_source_reads_learned_profiles_json_and_names_bad_input(tmp_path, caplog):
    from kgface.config import compose
    from kgface.errors import UserError
    from kgface.runtime import profile_source

    path = tmp_path / "learned_profiles.json"
    def learned(heads, learned_from="the test split of other/manifest.csv"):
        path.write_text(json.dumps({"schema": "kgface.learned_profiles/1", "phenotype_heads": heads,
                                    "learned_from": learned_from, "diseases": {
            "D:1": {"name": "d", "phenotypes": [{"hpo_id": "HP:0000003", "learned_frequency": 0.9}]}}}))

    learned("atlas")  # heads fitted on a phenotype atlas, on another set: no warning
    # a held-out disease keeps the KG's frequencies (its learned ones come from the faces its target is read on)
    with pytest.raises(UserError, match=r"holds only held-out diseases \(D:1\), whose frequencies stay the KG's"):
        profile_source(compose("train", ["profile.source=learned", f"profile.learned={path}", "data.heldout=[D:1]"]),
                       [_profile()])
    from kgface.run_checks import preflight

    with pytest.raises(UserError, match=r"holds only held-out diseases"):  # in preflight, before the run folder
        preflight(compose("train", ["profile.source=learned", f"profile.learned={path}", "data.heldout=[D:1]"]))
    # the main path: a held-out disease beside a seen one keeps the KG's frequencies, the seen one takes the file's
    two = json.loads(path.read_text())
    two["diseases"]["D:2"] = {"name": "e", "phenotypes": [{"hpo_id": "HP:0000003", "learned_frequency": 0.9}]}
    path.write_text(json.dumps(two))
    other = FacialProfile("D:2", "disease 2", "hpo", [Phenotype(hpo_id="HP:0000003", name="c", region="eyes",
                                                                visual="c", frequency=0.3)])
    got = profile_source(compose("train", ["profile.source=learned", f"profile.learned={path}",
                                           "data.heldout=[D:1]"]), [_profile(), other])
    assert {x.hpo_id: x.frequency for x in got[0].phenotypes}["HP:0000003"] == 0.3  # held out: the KG's
    assert got[1].phenotypes[0].frequency == 0.9  # seen: the learned one
    assert "the held-out diseases' learned frequencies (D:1) are left out" in caplog.text
    learned("atlas")
    caplog.clear()
    cfg = compose("train", ["profile.source=learned", f"profile.learned={path}"])
    assert profile_source(cfg, [_profile()])[0].phenotypes[0].hpo_id == "HP:0000003"  # 0.9: now the most frequent
    assert profile_source(cfg, [_profile()])[0].phenotypes[0].frequency == 0.9
    assert "can echo the KG" not in caplog.text
    # said, with the set it was learned from: if that is this run's data, a test statistic conditions the generator
    assert "was learned from the test split of other/manifest.csv: if this run's data has the same test faces" \
        in caplog.text
    # learned by heads that also saw diseased faces, or by heads a file does not name: used, with a warning
    for heads, words in (("all", "evaluator.phenotype_heads=all"), (None, "written before 2026-12-05"),
                         ("zero_shot", "evaluator.phenotype_heads=zero_shot")):
        caplog.clear()
        learned(heads)
        assert profile_source(cfg, [_profile()])[0].phenotypes[0].frequency == 0.9
        assert words in caplog.text and "can echo the KG" in caplog.text
    for overrides, words in ((["profile.source=learned"], "profile.learned=PATH"),
                             (["profile.source=learned", f"profile.learned={tmp_path / 'nope.json'}"], "not found"),
                             # the run's evaluation folder rather than its learned_profiles.json: no traceback
                             (["profile.source=learned", f"profile.learned={tmp_path}"],
                              r"cannot read it \(IsADirectoryError\); give the learned_profiles.json file itself"),
                             (["profile.source=sometimes"], "profile.source=sometimes"),
                             # a learned file under the default source=kg was silently unread
                             ([f"profile.learned={path}"], r"is read only with profile.source=learned\|blend")):
        with pytest.raises(UserError, match=words):
            profile_source(compose("train", overrides), [_profile()])
    for blend in ("50", "-0.1", "half"):  # 50 meant as 50% pushed every blended frequency to 0 or 1
        with pytest.raises(UserError, match=f"^profile.blend={blend}"):
            profile_source(compose("train", ["profile.source=blend", f"profile.learned={path}",
                                             f"profile.blend={blend}"]), [_profile()])
    # kgface.train checks all of it in preflight, before the run folder is reset
    from kgface.run_checks import preflight

    with pytest.raises(UserError, match="not found"):
        preflight(compose("train", ["profile.source=learned", f"profile.learned={tmp_path / 'nope.json'}"]))
    path.write_text(json.dumps({"diseases": {"OTHER:9": {"phenotypes": []}}}))
    with pytest.raises(UserError, match="none of its diseases"):
        profile_source(cfg, [_profile()])


def test_nan_learned_frequency_is_an_error_naming_disease_and_phenotype():
    from kgface.kg import KGError

    for source in ("learned", "blend"):
        with pytest.raises(KGError, match=r"learned frequency of HP:0000003 \(c\) for D:1 is NaN") as info:
            with_frequencies([_profile()], {"D:1": {"HP:0000003": float("nan")}}, source)
        assert "\n" not in str(info.value)
