"""kg=primekg on small files in PrimeKG's real format, and every bad input the issue names."""
import pytest

from kgface.cache import Cache
from kgface.kg import KGFormatError, ProfileBuilder, load_kg, resolve_disease
from kgface.resources import kg_data_dir

from .primekg_fixture import DOWN, KG_HEADER, kg_rows, write_features, write_kg_csv


@pytest.fixture(scope="module")
def primekg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("primekg")
    return load_kg("primekg", path=write_kg_csv(tmp / "kg.csv"), features=write_features(tmp / "f.csv"),
                   kg_data_dir=kg_data_dir())


def test_reads_one_direction_and_formats_ids(primekg):
    pk = primekg.edges[primekg.edges["provenance"] == "primekg"]
    assert primekg.stats["kg_csv_disease_phenotype_rows"] == 7  # 7 disease-phenotype edges, each stored twice
    assert len(pk) == 6  # acne -> HP:0001061 is also a curated edge, which is kept instead
    assert set(pk["hpo_id"]) == {"HP:0000582", "HP:0000286", "HP:0000316", "HP:0011097", "HP:0000508"}
    assert "MONDO:0008608" in set(pk["disease_id"])
    negative = pk[pk["negated"]]
    assert list(zip(negative["disease_id"], negative["hpo_id"])) == [("MONDO:0008608", "HP:0000508")]


def test_mondo_grouped_ids_resolve_through_aliases(primekg):
    grouped = "MONDO_grouped:13924_12592"
    assert resolve_disease(primekg, grouped) == grouped
    assert resolve_disease(primekg, "MONDO:0012592") == grouped
    assert resolve_disease(primekg, "mondo:13924") == grouped
    assert resolve_disease(primekg, "mondo_grouped:13924_12592") == grouped  # its own id in any case


def test_frequencies_attached_from_hpo_by_name(primekg):
    e = primekg.edges.set_index(["disease_id", "hpo_id"])
    assert e.loc[("MONDO:0008608", "HP:0000582"), "frequency"] == pytest.approx(0.895)  # from ORPHA:870
    # every fixture disease's name is an HPO name (Down, Noonan, DEE96, acne from the supplement) and each positive
    # edge has a frequency there; the negated edge is not counted
    assert primekg.stats["diseases_matched_to_hpo_by_name"] == 4
    assert primekg.stats["edges_with_hpo_frequency"] == 6 and primekg.stats["edges_absent_in_hpo"] == 0
    assert e.loc[("MONDO:0023659", "HP:0011097"), "frequency"] == pytest.approx(0.5)  # OMIM:619340's 1/2


def test_profiles_and_features_text(primekg, catalog):
    p = ProfileBuilder(primekg, catalog).build("MONDO:0008608")
    assert [x.hpo_id for x in p.phenotypes][:2] == ["HP:0000286", "HP:0000582"]
    assert [n.hpo_id for n in p.negative_phenotypes] == ["HP:0000508"]
    assert "trisomy 21" in p.text["mondo_definition"]
    acne = ProfileBuilder(primekg, catalog).build("MONDO:0011438")
    assert {"HP:0025249", "HP:0001061"} <= {x.hpo_id for x in acne.phenotypes}  # curated edges join PrimeKG's


def _live(cache_dir):
    return sorted(p.name for p in (cache_dir / "kg-primekg").iterdir() if not p.name.startswith("."))


def test_cache_keyed_by_content_or_for_large_files_by_path_size_and_mtime(tmp_path, monkeypatch):
    import os
    import shutil

    import kgface.kg as kg

    path = write_kg_csv(tmp_path / "kg.csv")
    cache = Cache(tmp_path / "cache")
    a = load_kg("primekg", path=path, cache=cache)
    b = load_kg("primekg", path=path, cache=cache)
    assert b.edges.equals(a.edges)
    # the same bytes at another path with another mtime (a second checkout): the same entry
    (tmp_path / "other").mkdir()
    copy = shutil.copy(path, tmp_path / "other" / "kg.csv")
    os.utime(copy, ns=(1, 1))
    load_kg("primekg", path=copy, cache=cache)
    assert len(_live(tmp_path / "cache")) == 1
    # over the size limit only path, size and mtime: the copy is another file
    monkeypatch.setattr(kg, "HASH_LIMIT", 0)
    load_kg("primekg", path=path, cache=cache)
    load_kg("primekg", path=copy, cache=cache)
    assert len(_live(tmp_path / "cache")) == 3
    monkeypatch.setattr(kg, "HASH_LIMIT", 64 << 20)
    rows = kg_rows()[:-4]  # drop the phenotype_phenotype and gene edges -> a different file
    write_kg_csv(path, rows)
    c = load_kg("primekg", path=path, cache=cache)
    assert len(c.edges) == len(a.edges)
    assert len(_live(tmp_path / "cache")) == 4  # new bytes: a new entry


def test_a_folder_for_kg_path_is_the_loaders_one_line_error(tmp_path):
    from kgface.kg import KGFormatError

    with pytest.raises(KGFormatError, match=r"cannot read PrimeKG file \(.*\); check kg\.path$") as info:
        load_kg("primekg", path=tmp_path, cache=Cache(tmp_path / "cache"))
    assert "\n" not in str(info.value)


def _truncated(path):
    text = write_kg_csv(path).read_text(encoding="utf-8")
    path.write_text(text[: len(text) - 40], encoding="utf-8")


def _non_utf8(path):
    write_kg_csv(path)
    with path.open("ab") as f:
        f.write(b"disease_phenotype_positive,phenotype present,1,8608,disease,Caf\xe9,MONDO,2,582,effect/phenotype,"
                b"Up,HPO\n")


def _float_ids(path):
    rows = kg_rows()
    rows[0][8] = "582.0"
    write_kg_csv(path, rows)


def _float_disease_ids(path):
    rows = kg_rows()
    rows[0][3] = rows[0][3] + ".0"  # re-saved through pandas: it became a disease no MONDO id finds
    write_kg_csv(path, rows)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("", encoding="utf-8"), "empty file"),
    (lambda p: write_kg_csv(p, [], header=["node_index", "node_id", "node_type", "node_name", "node_source"]),
     "this is PrimeKG's nodes.csv"),
    (lambda p: write_kg_csv(p, [r[:6] for r in kg_rows()], header=KG_HEADER[:6]), "missing columns"),
    (lambda p: write_kg_csv(p, []), "header only"),
    (_truncated, "unreadable after data row"),
    (_non_utf8, "unreadable after data row"),
    (_float_ids, r"kg\.csv:2: phenotype id '582\.0' is not a bare HPO integer"),
    (_float_disease_ids, r"kg\.csv:2: disease id '\d+\.0' is not a bare MONDO integer"),
    (lambda p: write_kg_csv(p, [r for r in kg_rows() if r[0] == "disease_protein"]), "no disease-phenotype rows"),
])
def test_bad_kg_csv(tmp_path, make, message):
    path = tmp_path / "kg.csv"
    make(path)
    cache_root = tmp_path / "cache"
    with pytest.raises(KGFormatError, match=message) as info:
        load_kg("primekg", path=path, cache=Cache(cache_root))
    assert "kg.csv" in str(info.value) and "\n" not in str(info.value)
    leftovers = list((cache_root / "kg-primekg").iterdir()) if (cache_root / "kg-primekg").exists() else []
    assert leftovers == []  # nothing half-written


def test_missing_path_is_a_clear_error():
    from kgface.kg import KGError

    with pytest.raises(KGError, match=r"kg=primekg needs a file: set kg\.path="):
        load_kg("primekg")


def _edge_rows(relation, x, y):
    """One disease-phenotype edge in both directions, as kg.csv stores it."""
    display = "phenotype present" if relation.endswith("positive") else "phenotype absent"
    return [[relation, display, str(a[0]), a[1], a[2], a[3], a[4], str(b[0]), b[1], b[2], b[3], b[4]]
            for a, b in ((x, y), (y, x))]


def test_frequency_raw_keeps_hpo_text_and_reference_names_the_source(primekg, catalog):
    e = primekg.edges.set_index(["disease_id", "hpo_id"])
    up = e.loc[("MONDO:0008608", "HP:0000582")]
    # ORPHA:870 says Very frequent (0.895), OMIM:190685 440/524 (0.84): the highest is kept, with its own text
    assert up["frequency"] == pytest.approx(0.895) and up["frequency_raw"] == "HP:0040281"
    assert up["reference"] == "PrimeKG;ORPHA:870"
    p = ProfileBuilder(primekg, catalog).build("MONDO:0008608")
    ph = {x.hpo_id: x for x in p.phenotypes}["HP:0000582"]
    assert ph.frequency_raw == "HP:0040281"
    assert ph.references == ["ORPHA:870", "PrimeKG"]  # sorted, as RDF reads them back


def test_curated_row_wins_over_primekg_copy(primekg):
    acne = primekg.edges[(primekg.edges["disease_id"] == "MONDO:0011438") & (primekg.edges["hpo_id"] == "HP:0001061")]
    assert len(acne) == 1 and acne["provenance"].iloc[0] == "kg_data" and "Zaenglein" in acne["reference"].iloc[0]


def test_alt_ids_resolve_before_placeholders_and_zero_frequency_is_absent(tmp_path, catalog):
    hyper = (104, "7777", "disease", "Hyperthyroidism, nonautoimmune", "MONDO")  # OMIM:609152 by name
    oi11 = (105, "7778", "disease", "Osteogenesis imperfecta, type XI", "MONDO")  # OMIM:610968 by name
    pos = "disease_phenotype_positive"
    rows = (kg_rows()
            + _edge_rows(pos, DOWN, (206, "312", "effect/phenotype", "Malar flattening", "HPO"))
            + _edge_rows(pos, DOWN, (207, "9999999", "effect/phenotype", "Made up", "HPO"))
            # retired in the 2025 release with only `consider:` hints: never visible, and counted
            + _edge_rows(pos, DOWN, (211, "7691", "effect/phenotype", "Short curly eyelashes", "HPO"))
            + _edge_rows(pos, hyper, (208, "520", "effect/phenotype", "Proptosis", "HPO"))
            + _edge_rows(pos, hyper, (209, "752", "effect/phenotype", "Dysmetria", "HPO"))
            + _edge_rows(pos, oi11, (210, "592", "effect/phenotype", "Blue sclerae", "HPO")))
    kg = load_kg("primekg", path=write_kg_csv(tmp_path / "kg.csv", rows), kg_data_dir=kg_data_dir())
    down = set(kg.edges_of("MONDO:0008608")["hpo_id"])
    assert "HP:0000272" in down and "HP:0000312" not in down and "HP:0000312" not in kg.terms  # HP:0000312 = alt id
    assert kg.stats["phenotypes_missing_from_hpo_release"] == 1 and kg.terms["HP:9999999"].name == "Made up"
    assert kg.stats["phenotypes_obsolete_without_replacement"] == 1
    e = kg.edges_of("MONDO:0007777").set_index("hpo_id")
    # HPO: proptosis 0/1 in OMIM:609152 -> absent, not present at frequency 0; dysmetria 1/1 stays present
    assert e.loc["HP:0000520", "negated"] and e.loc["HP:0000520", "frequency_raw"] == "0/1"
    assert not e.loc["HP:0000752", "negated"] and e.loc["HP:0000752", "frequency"] == 1.0
    assert kg.stats["edges_absent_in_hpo"] == 1
    # blue sclerae in OMIM:610968: 0/19 and 3/3 are 3 of 22 patients, as kg=hpo reads them (it was the 3/3 row's 1.0)
    blue = kg.edges_of("MONDO:0007778").set_index("hpo_id").loc["HP:0000592"]
    assert not blue["negated"] and blue["frequency"] == pytest.approx(3 / 22) and blue["frequency_raw"] == "3/3;0/19"
    p = ProfileBuilder(kg, catalog).build("MONDO:0007777", require_visible=False)
    assert "HP:0000520" in {n.hpo_id for n in p.negative_phenotypes}
    assert "HP:0000520" not in {x.hpo_id for x in p.phenotypes}
