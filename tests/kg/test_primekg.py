"""kg=primekg on small files in PrimeKG's real format, and every bad input the issue names."""
import pytest

from kgface.cache import Cache
from kgface.kg import KGFormatError, ProfileBuilder, load_kg, resolve_disease
from kgface.resources import kg_data_dir

from .primekg_fixture import KG_HEADER, kg_rows, write_features, write_kg_csv


@pytest.fixture(scope="module")
def primekg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("primekg")
    return load_kg("primekg", path=write_kg_csv(tmp / "kg.csv"), features=write_features(tmp / "f.csv"),
                   kg_data_dir=kg_data_dir())


def test_reads_one_direction_and_formats_ids(primekg):
    pk = primekg.edges[primekg.edges["provenance"] == "primekg"]
    assert len(pk) == 7  # 7 disease-phenotype edges, each stored twice in the file
    assert set(pk["hpo_id"]) == {"HP:0000582", "HP:0000286", "HP:0000316", "HP:0011097", "HP:0000508", "HP:0001061"}
    assert "MONDO:0008608" in set(pk["disease_id"])
    negative = pk[pk["negated"]]
    assert list(zip(negative["disease_id"], negative["hpo_id"])) == [("MONDO:0008608", "HP:0000508")]


def test_mondo_grouped_ids_resolve_through_aliases(primekg):
    grouped = "MONDO_grouped:13924_12592"
    assert resolve_disease(primekg, grouped) == grouped
    assert resolve_disease(primekg, "MONDO:0012592") == grouped
    assert resolve_disease(primekg, "mondo:13924") == grouped


def test_frequencies_attached_from_hpo_by_name(primekg):
    e = primekg.edges.set_index(["disease_id", "hpo_id"])
    assert e.loc[("MONDO:0008608", "HP:0000582"), "frequency"] == pytest.approx(0.895)  # from ORPHA:870
    assert primekg.stats["diseases_matched_to_hpo_by_name"] >= 3
    assert primekg.stats["edges_with_hpo_frequency"] >= 4


def test_profiles_and_features_text(primekg, catalog):
    p = ProfileBuilder(primekg, catalog).build("MONDO:0008608")
    assert [x.hpo_id for x in p.phenotypes][:2] == ["HP:0000286", "HP:0000582"]
    assert [n.hpo_id for n in p.negative_phenotypes] == ["HP:0000508"]
    assert "trisomy 21" in p.text["mondo_definition"]
    acne = ProfileBuilder(primekg, catalog).build("MONDO:0011438")
    assert {"HP:0025249", "HP:0001061"} <= {x.hpo_id for x in acne.phenotypes}  # curated edges join PrimeKG's


def test_cache_keyed_by_size_and_mtime(tmp_path):
    path = write_kg_csv(tmp_path / "kg.csv")
    cache = Cache(tmp_path / "cache")
    a = load_kg("primekg", path=path, cache=cache)
    b = load_kg("primekg", path=path, cache=cache)
    assert b.edges.equals(a.edges)
    rows = kg_rows()[:-4]  # drop the phenotype_phenotype and gene edges -> a different file
    write_kg_csv(path, rows)
    c = load_kg("primekg", path=path, cache=cache)
    assert len(c.edges) == len(a.edges)
    live = [p for p in (tmp_path / "cache" / "kg-primekg").iterdir() if not p.name.startswith(".")]
    assert len(live) == 2


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


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("", encoding="utf-8"), "empty file"),
    (lambda p: write_kg_csv(p, [], header=["node_index", "node_id", "node_type", "node_name", "node_source"]),
     "this is PrimeKG's nodes.csv"),
    (lambda p: write_kg_csv(p, [r[:6] for r in kg_rows()], header=KG_HEADER[:6]), "missing columns"),
    (lambda p: write_kg_csv(p, []), "header only"),
    (_truncated, "unreadable after data row"),
    (_non_utf8, "unreadable after data row"),
    (_float_ids, r"kg\.csv:2: phenotype id '582\.0' is not a bare HPO integer"),
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
    with pytest.raises(Exception, match="kg.path"):
        load_kg("primekg")
