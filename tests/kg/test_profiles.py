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


def test_the_faces_width_the_noses_length_and_the_bridges_narrowness_are_visible(hpo_kg, catalog):
    # Broad face, Long nose and Narrow nasal bridge (Elements of Morphology; the phantom draws all three) were
    # missing from the catalogue, nor under an entry with descendants: the diseases annotated with them lost them
    for disease, term in (("ORPHA:1051", "HP:0000283"), ("ORPHA:52", "HP:0003189"), ("ORPHA:2710", "HP:0000446")):
        shown = {x.hpo_id: x for x in build_profile(hpo_kg, disease, catalog).phenotypes}
        assert term in shown and shown[term].visual and shown[term].region in ("face", "nose"), (disease, term)


def test_a_child_of_an_entry_without_descendants_is_not_visible_under_a_farther_one(hpo_kg, catalog):
    # blepharochalasis (lax eyelid skin) sits under palpebral edema (include_descendants=no), itself under periorbital
    # edema (yes): it read as periorbital edema's "puffy swelling" because the search climbed past the nearer entry
    from kgface.kg import ProfileBuilder

    assert not catalog.entries["HP:0100540"].include_descendants and catalog.entries["HP:0100539"].include_descendants
    builder = ProfileBuilder(hpo_kg, catalog)
    assert builder.match("HP:0010749") is None
    assert builder.match("HP:0100540").hpo_id == "HP:0100540"  # the entry itself stays visible


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


def test_pooled_counts_only_pool_case_counts():
    from kgface.kg.profiles import pooled_counts

    assert pooled_counts("1/3", "1/1;1/1") == (pytest.approx(0.6), "1/3;1/1;1/1")
    assert pooled_counts("1/3", "HP:0040281") is None and pooled_counts("1/3", "40%") is None
    assert pooled_counts("1/0", "1/3") is None


def test_a_terms_rows_are_read_together_zero_counts_pool_and_order_does_not_matter(hpo_kg, catalog):
    from types import SimpleNamespace

    from kgface.kg.frequency import parse_frequency
    from kgface.kg.profiles import _frequency_of

    def rows(*raws):
        return [SimpleNamespace(frequency=parse_frequency(r), frequency_raw=r) for r in raws]

    # 0 of 19 patients are 19 cases: pooled with 3/3 (they were dropped as "absent": 1.0)
    assert _frequency_of(rows("3/3"), rows("0/19"))[:2] == (pytest.approx(3 / 22), "3/3;0/19")
    assert _frequency_of(rows("3/3"), rows(""))[:2] == (1.0, "3/3")  # a NOT row without a count is no case count
    # counts beside a frequency term: the highest known, whichever row comes first (it was 0.5 one way, 1 the other)
    for order in (("1/1", "1/3", "HP:0040283"), ("HP:0040283", "1/3", "1/1")):
        assert _frequency_of(rows(*order), [])[:2] == (1.0, "1/1")
    assert _frequency_of(rows("HP:0040281"), rows("0/19"))[:2] == (pytest.approx(0.895), "HP:0040281")
    assert _frequency_of(rows(""), [])[:2] == (None, "")
    # a report without a frequency beside counted ones: the counts still pool (the blank row gave 1.0, 2/2's share;
    # OMIM:115197's HP:0001639 in the shipped release)
    assert _frequency_of(rows("68/117", "2/2", ""), [])[:2] == (pytest.approx(70 / 119), "68/117;2/2")
    assert _frequency_of(rows("", "1/1", "3/13"), rows("0/5"))[:2] == (pytest.approx(4 / 19), "1/1;3/13;0/5")
    assert _frequency_of(rows(""), rows("0/19", "0/5"))[:2] == (None, "")  # reported present, its frequency unknown
    # the shipped release: osteogenesis imperfecta XI, blue sclerae in 3/3 and in 0/19 patients of another report
    p = build_profile(hpo_kg, "OMIM:610968", catalog)
    sclerae = next(ph for ph in p.phenotypes if ph.hpo_id == "HP:0000592")
    assert sclerae.frequency == pytest.approx(3 / 22) and sclerae.frequency_raw == "3/3;0/19"
    assert "HP:0000592" not in {n.hpo_id for n in p.negative_phenotypes} and len(sclerae.references) == 2


def test_repeated_annotations_pool_counts_curated_rows_win_and_absences_are_not_hidden(hpo_kg, catalog):
    import pandas as pd

    from kgface.kg import KnowledgeGraph

    # OMIM:618975 reports downslanted fissures in 1/3, 1/1 and 1/1 cases: pooled 3/5, not the highest 1/1
    p = build_profile(hpo_kg, "OMIM:618975", catalog)
    down = {x.hpo_id: x for x in p.phenotypes}["HP:0000494"]
    assert down.frequency == pytest.approx(0.6) and sorted(down.frequency_raw.split(";")) == ["1/1", "1/1", "1/3"]
    # OMIM:305620's prominent supraorbital ridges (HP:0000336): PMID:16835913's 9/9 MALE row twice, but for its
    # biocuration, is one report: 9/9 + 10/11 + 11/11 = 30/31, not 39/40; OMIM:611182's micrognathia counts
    # PMID:28619360's 1/1 once: its row without an onset repeats the one with it (1/1 + 1/1 + 0/1 + 0/1 = 2/4)
    hearing = {x.hpo_id: x for x in build_profile(hpo_kg, "OMIM:305620", catalog).phenotypes}.get("HP:0000336")
    assert hearing is not None and hearing.frequency == pytest.approx(30 / 31)
    assert sorted(hearing.frequency_raw.split(";")) == ["10/11", "11/11", "9/9"]
    micro = {x.hpo_id: x for x in build_profile(hpo_kg, "OMIM:611182", catalog).phenotypes}["HP:0000347"]
    assert micro.frequency == pytest.approx(0.5) and micro.frequency_raw.count("1/1") == 2
    # OMIM:163950's webbed neck: its first row gives no onset, a later one congenital (HP:0003577): that one, not ""
    rows = hpo_kg.edges[(hpo_kg.edges["disease_id"] == "OMIM:163950") & (hpo_kg.edges["hpo_id"] == "HP:0000465")]
    assert rows["onset"].iloc[0] == "" and "HP:0003577" in set(rows["onset"])
    neck = {x.hpo_id: x for x in build_profile(hpo_kg, "OMIM:163950", catalog).phenotypes}["HP:0000465"]
    assert neck.onset == "HP:0003577"

    def row(hpo_id, frequency, raw, provenance, min_stage=0, negated=False, reference="PMID:2;PMID:1"):
        return {"disease_id": "D:1", "hpo_id": hpo_id, "negated": negated, "frequency": frequency,
                "frequency_raw": raw, "onset": "", "min_stage": min_stage, "evidence": "", "reference": reference,
                "provenance": provenance}

    edges = pd.DataFrame([row("HP:0000494", 0.9, "HP:0040281", "hpoa"),
                          row("HP:0000494", 0.4, "0.4", "kg_data", min_stage=2, reference="PMID:3"),
                          row("HP:0000218", 0.0, "0/4", "hpoa", negated=True),  # high palate, known absent
                          row("HP:0000218", 0.0, "", "hpoa", negated=True),
                          row("HP:0001249", 0.5, "1/2", "hpoa")])  # intellectual disability: hidden
    kg = KnowledgeGraph(source="test", terms=hpo_kg.terms, edges=edges,
                        diseases=pd.DataFrame({"id": ["D:1"], "name": ["a disease"], "aliases": [""]}))
    p = build_profile(kg, "D:1", catalog)
    (ph,) = p.phenotypes
    assert (ph.frequency, ph.min_stage, ph.provenance) == (0.4, 2, "kg_data")  # the curated row, as in PrimeKG
    assert ph.references == ["PMID:1", "PMID:2", "PMID:3"]  # sorted, as RDF reads them back
    assert p.hidden_phenotypes == 1  # the absent high palate is not a hidden phenotype


def test_disease_ids_without_a_prefix_are_found_by_id():
    # an RDF node or supplement id such as 'D1' was only looked up as a name: two diseases sharing a label merged
    import pandas as pd

    from kgface.kg import KnowledgeGraph
    from kgface.kg.lookup import resolve_disease

    kg = KnowledgeGraph(source="test", terms={}, edges=pd.DataFrame(columns=["disease_id", "hpo_id", "negated",
                                                                              "frequency", "frequency_raw", "onset",
                                                                              "evidence", "reference", "provenance"]),
                        diseases=pd.DataFrame({"id": ["D1", "D2"], "name": ["same", "same"], "aliases": ["", ""]}))
    assert resolve_disease(kg, "D2") == "D2" and resolve_disease(kg, "D1") == "D1"
    # by name, the one with more frequency-annotated signs it shows wins; signs reported absent do not count
    edges = pd.DataFrame([{"disease_id": d, "hpo_id": h, "negated": neg, "frequency": f, "frequency_raw": "",
                           "onset": "", "evidence": "", "reference": "", "provenance": "hpoa"}
                          for d, h, neg, f in (("D1", "HP:0000494", False, 0.5), ("D2", "HP:0000494", True, 0.0),
                                               ("D2", "HP:0000218", True, 0.0))])
    kg = KnowledgeGraph(source="test", terms={}, edges=edges, diseases=kg.diseases)
    assert resolve_disease(kg, "same") == "D1"


def test_catalogue_ids_that_match_no_live_term_are_refused_with_file_and_row(hpo_kg, catalog, tmp_path):
    # edges carry live ids: an alt id, an obsolete id or a typo in the catalogue would hide its phenotypes in silence
    import shutil

    from kgface.kg import VisibleCatalog
    from kgface.kg.errors import KGFormatError
    from kgface.resources import kg_data_dir

    ProfileBuilder(hpo_kg, catalog)  # the shipped catalogue: every id live
    for bad, words in (("HP:0000312", r"alternative or obsolete id of HP:0000272"), ("HP:9999999", "not a live term")):
        folder = tmp_path / bad.replace(":", "_")
        shutil.copytree(kg_data_dir(), folder)
        path = folder / "visible_phenotypes.csv"
        lines = path.read_text(encoding="utf-8").splitlines()
        lines.append(f"{bad},extra,face,a mark,no,test")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(KGFormatError, match=rf"visible_phenotypes.csv:{len(lines)}: {bad} .*{words}"):
            ProfileBuilder(hpo_kg, VisibleCatalog.load(folder))
    latin1 = tmp_path / "latin1"
    shutil.copytree(kg_data_dir(), latin1)
    (latin1 / "regions.csv").write_bytes((latin1 / "regions.csv").read_bytes() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(KGFormatError, match=r"regions.csv: not UTF-8 text"):
        VisibleCatalog.load(latin1)
