import json

import pytest

from kgface.kg import (FacialProfile, NoVisiblePhenotypeError, ProfileBuilder, UnknownDiseaseError, build_profile,
                       healthy_profile)


def test_down_syndrome_profile(hpo_kg, catalog):
    p = build_profile(hpo_kg, "ORPHA:870", catalog)
    by_id = {x.hpo_id: x for x in p.phenotypes}
    up = by_id["HP:0000582"]
    assert up.frequency == pytest.approx(0.895) and up.region == "eyes" and up.visual
    assert up.path[0] == "HP:0000582" and up.path[-1] in set(catalog.region_roots().values())
    assert len(up.path_names) == len(up.path)
    assert "HP:0000218" not in by_id  # High palate: annotated, but no photograph shows it
    assert p.hidden_phenotypes > 0
    freqs = [x.frequency for x in p.phenotypes]
    assert freqs == sorted(freqs, reverse=True)


def test_visible_terms_outside_the_face_subtree_are_kept(hpo_kg, catalog):
    noonan = {x.hpo_id for x in build_profile(hpo_kg, "ORPHA:648", catalog).phenotypes}
    assert "HP:0000316" in noonan  # hypertelorism sits outside HP:0000271 but a photo shows it
    graves = {x.hpo_id for x in build_profile(hpo_kg, "ORPHA:525731", catalog).phenotypes}
    assert "HP:0000520" in graves  # proptosis


def test_lookup_by_name_prefers_frequency_annotated_entry(hpo_kg, catalog):
    assert build_profile(hpo_kg, "down syndrome", catalog).disease_id == "ORPHA:870"
    assert build_profile(hpo_kg, "orphanet:870", catalog).disease_id == "ORPHA:870"


def test_unknown_disease_lists_closest_names(hpo_kg, catalog):
    with pytest.raises(UnknownDiseaseError, match="closest: .*Down syndrome") as info:
        build_profile(hpo_kg, "Downs syndrom", catalog)
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownDiseaseError, match="ORPHA:99999999"):
        build_profile(hpo_kg, "ORPHA:99999999", catalog)


def test_disease_without_visible_phenotypes(hpo_kg, catalog):
    with pytest.raises(NoVisiblePhenotypeError, match="OMIM:614102 .*no phenotype a face photograph can show"):
        build_profile(hpo_kg, "OMIM:614102", catalog)  # immunoglobulin kappa light chain deficiency


def test_healthy_profile_and_json_roundtrip(hpo_kg, catalog):
    h = build_profile(hpo_kg, "healthy", catalog)
    assert h.healthy and h.phenotypes == [] and h.disease_id == healthy_profile().disease_id
    p = build_profile(hpo_kg, "MONDO:0011438", catalog)
    again = FacialProfile.from_dict(json.loads(p.to_json()))
    assert again == p and again.phenotypes[0].references


def test_negative_and_min_stage(hpo_kg, catalog):
    acne = {x.hpo_id: x for x in build_profile(hpo_kg, "MONDO:0011438", catalog).phenotypes}
    assert acne["HP:0025249"].min_stage == 0 and acne["HP:0200039"].min_stage == 2
    negatives = [(d, h) for d, h, n in zip(hpo_kg.edges["disease_id"], hpo_kg.edges["hpo_id"], hpo_kg.edges["negated"])
                 if n and catalog.match(h, [])]
    assert negatives, "HPO has NOT rows on listed visible terms"
    did, hid = negatives[0]
    prof = ProfileBuilder(hpo_kg, catalog).build(did, require_visible=False)
    assert hid in {n.hpo_id for n in prof.negative_phenotypes}
    assert hid not in {x.hpo_id for x in prof.phenotypes}


def test_panel_profiles_have_visible_phenotypes(hpo_kg, catalog):
    from kgface.config import compose
    from kgface.runtime import load_profiles

    profiles = load_profiles(compose("profiles"), knowledge=(hpo_kg, catalog))
    assert profiles[-1].healthy and len(profiles) == 14
    assert all(len(p.phenotypes) >= 3 for p in profiles[:-1])
