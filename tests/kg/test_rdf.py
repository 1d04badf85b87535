import http.server
import threading
from pathlib import Path

import pytest

from kgface.kg import KGFormatError, ProfileBuilder, load_kg
from kgface.kg.rdf import (diseases_with_phenotype, graph_to_profiles, profiles_to_graph, read_graph, write_turtle)

PANEL = ["ORPHA:870", "ORPHA:648", "ORPHA:525731", "MONDO:0011438", "healthy"]


@pytest.fixture(scope="module")
def profiles(hpo_kg, catalog):
    b = ProfileBuilder(hpo_kg, catalog)
    return [b.build(q) for q in PANEL]


def test_turtle_roundtrip_is_identical(profiles, tmp_path):
    path = tmp_path / "profiles.ttl"
    write_turtle(profiles_to_graph(profiles), path)
    g = read_graph(path)
    nodes = {str(n) for n in g.all_nodes()}
    assert {"http://purl.obolibrary.org/obo/HP_0000582", "http://www.orpha.net/ORDO/Orphanet_870",
            "http://purl.obolibrary.org/obo/MONDO_0011438"} <= nodes  # stable IRIs in the standard namespaces
    back = {p.disease_id: p for p in graph_to_profiles(g)}
    assert set(back) == {p.disease_id for p in profiles}
    for p in profiles:
        assert back[p.disease_id].to_dict() == p.to_dict()


def test_sparql_upslanted_palpebral_fissures(profiles):
    g = profiles_to_graph(profiles)
    assert [d for d, _ in diseases_with_phenotype(g, "HP:0000582", include_descendants=False)] == ["ORPHA:870"]
    # Abnormal eyelid morphology: every disease annotated with any eyelid term below it
    broad = {d for d, _ in diseases_with_phenotype(g, "HP:0000492")}
    assert {"ORPHA:870", "ORPHA:525731"} <= broad


def test_kg_rdf_loads_a_users_graph(profiles, tmp_path, catalog):
    path = tmp_path / "mine.ttl"
    write_turtle(profiles_to_graph(profiles), path)
    kg = load_kg("rdf", path=path)
    p = ProfileBuilder(kg, catalog).build("ORPHA:870")
    original = profiles[0]
    assert [x.hpo_id for x in p.phenotypes] == [x.hpo_id for x in original.phenotypes]
    assert [x.frequency for x in p.phenotypes] == [x.frequency for x in original.phenotypes]


def test_parsing_never_fetches_remote_iris(tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/turtle")
            self.end_headers()
            self.wfile.write(b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/onto.ttl"
    path = tmp_path / "imports.ttl"
    path.write_text(f"@prefix owl: <http://www.w3.org/2002/07/owl#> .\n<{url}#me> owl:imports <{url}> .\n"
                    f"<{url}#x> <{url}#p> <{url}#y> .\n", encoding="utf-8")
    try:
        g = read_graph(path)
        assert len(g) == 2
        with pytest.raises(KGFormatError, match="no kgf:PhenotypeAnnotation"):
            load_kg("rdf", path=path)
    finally:
        server.shutdown()
    assert hits == []


def test_malformed_turtle(tmp_path):
    path = tmp_path / "bad.ttl"
    path.write_text("<a> <b> .\n", encoding="utf-8")
    with pytest.raises(KGFormatError, match=r"bad\.ttl: not valid turtle"):
        read_graph(path)
    with pytest.raises(KGFormatError, match="unknown RDF suffix"):
        read_graph(tmp_path / "graph.jsonld")


TTL = """@prefix kgf: <https://w3id.org/kgface/vocab#> .
@prefix obo: <http://purl.obolibrary.org/obo/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
<http://www.orpha.net/ORDO/Orphanet_1> a kgf:Disease ; rdfs:label "Test disease" ; kgf:curie "ORPHA:1" ;
    kgf:onset obo:HP_0003593, obo:HP_0003676 .
<https://w3id.org/kgface/annotation/ORPHA:1/a> a kgf:PhenotypeAnnotation ;
    kgf:disease <http://www.orpha.net/ORDO/Orphanet_1> ; kgf:phenotype obo:HP_0000312 ; {extra} .
"""


def _ttl(tmp_path, extra):
    path = tmp_path / "mine.ttl"
    path.write_text(TTL.replace("{extra}", extra), encoding="utf-8")
    return path


@pytest.mark.parametrize("literal, negated", [('"false"', False), ('"true"', True), ('"0"', False),
                                               ('"1"^^xsd:boolean', True), ("false", False), ("true", True)])
def test_negated_literals_are_parsed_not_truth_tested(tmp_path, literal, negated):
    kg = load_kg("rdf", path=_ttl(tmp_path, f"kgf:negated {literal}"))
    assert kg.edges["negated"].tolist() == [negated]  # bool(Literal("false")) is True: it was read as negated


def test_rdf_alt_ids_and_onsets_resolve(tmp_path, catalog):
    kg = load_kg("rdf", path=_ttl(tmp_path, 'kgf:negated false ; kgf:frequency 0.5 ; kgf:minStage 2'))
    assert kg.edges["hpo_id"].tolist() == ["HP:0000272"] and "HP:0000312" not in kg.terms  # alt id of Malar flattening
    p = ProfileBuilder(kg, catalog).build("ORPHA:1")
    assert [(x.hpo_id, x.frequency, x.min_stage) for x in p.phenotypes] == [("HP:0000272", 0.5, 2)]
    assert [o["hpo_id"] for o in p.onsets] == ["HP:0003593"]  # Progressive (HP:0003676) is no onset


def test_a_plain_text_description_is_the_diseases_definition(tmp_path, catalog):
    """Another graph's dcterms:description is prose, not kgface's JSON object: read as the definition."""
    path = _ttl(tmp_path, "kgf:frequency 0.5")
    text = path.read_text().replace('kgf:curie "ORPHA:1" ;', 'kgf:curie "ORPHA:1" ; '
                                    '<http://purl.org/dc/terms/description> "A rare syndrome." ;')
    path.write_text(text)
    assert load_kg("rdf", path=path).disease_text == {"ORPHA:1": {"definition": "A rare syndrome."}}
    (profile,) = [p for p in graph_to_profiles(read_graph(path)) if p.disease_id == "ORPHA:1"]
    assert profile.text == {"definition": "A rare syndrome."}


def test_write_turtle_leaves_no_partial_file(profiles, tmp_path, monkeypatch):
    path = tmp_path / "profiles.ttl"
    write_turtle(profiles_to_graph(profiles), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles.ttl"]  # no temporary left beside it
    before = path.read_bytes()

    def half_then_fail(self, text, *args, **kwargs):  # a full disk: half the text reaches the file, then an error
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[:len(text) // 2])
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", half_then_fail)
        with pytest.raises(OSError, match="No space"):
            write_turtle(profiles_to_graph(profiles[:1]), path)
    assert path.read_bytes() == before  # the earlier file whole, not half of the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles.ttl"]


def test_rdf_frequency_0_is_absent(tmp_path):
    path = _ttl(tmp_path, 'kgf:frequency "0"^^xsd:decimal')
    kg = load_kg("rdf", path=path)
    assert kg.edges["negated"].tolist() == [True]
    # profiles read straight from the graph agree: absent, not a present sign at frequency 0
    (profile,) = [p for p in graph_to_profiles(read_graph(path)) if p.disease_id == "ORPHA:1"]
    assert profile.phenotypes == [] and len(profile.negative_phenotypes) == 1


@pytest.mark.parametrize("extra, message", [
    ('kgf:minStage "two"', r"kgf:minStage 'two' is not a whole number from 0 to 3"),
    ('kgf:minStage "1.5"^^xsd:decimal', r"kgf:minStage '1\.5' is not a whole number"),
    ("kgf:minStage 4", r"kgf:minStage '4' is not a whole number from 0 to 3"),
    ('kgf:frequency "often"', r"kgf:frequency 'often' is not a number from 0 to 1"),
    ('kgf:frequency "1.5"^^xsd:decimal', r"kgf:frequency '1\.5' is not a number from 0 to 1"),
    ('kgf:frequency "NaN"^^xsd:double', r"kgf:frequency '(NaN|nan)' is not a number"),
    ('kgf:negated "no"', r"kgf:negated 'no' is not a boolean"),
])
def test_bad_rdf_literals_name_file_and_annotation(tmp_path, extra, message):
    with pytest.raises(KGFormatError, match=r"mine\.ttl: annotation https://w3id\.org/kgface/annotation/ORPHA:1/a: "
                                            + message) as info:
        load_kg("rdf", path=_ttl(tmp_path, extra))
    assert "\n" not in str(info.value)


def test_sparql_climbs_every_parent_and_reads_absences_as_the_loader_does(hpo_kg, catalog):
    from rdflib import BNode, Literal
    from rdflib.namespace import RDF, RDFS, XSD

    from kgface.kg.rdf import KGF, iri, new_graph

    # Preauricular skin tag (HP:0000384) is_a both an ear term and Skin tags (HP:0010609); a profile's one path climbs
    # through the ear, so only the ontology's every is_a edge lets a query from Skin tags find the disease
    did = next(d for d in hpo_kg.edges.loc[hpo_kg.edges["hpo_id"] == "HP:0000384", "disease_id"]
               if any(x.hpo_id == "HP:0000384" for x in ProfileBuilder(hpo_kg, catalog).build(d).phenotypes))
    p = ProfileBuilder(hpo_kg, catalog).build(did)
    assert "HP:0010609" not in {x for ph in p.phenotypes for x in ph.path}
    assert did in {d for d, _ in diseases_with_phenotype(profiles_to_graph([p], hpo_kg.terms), "HP:0010609")}
    # a user's graph: kgf:negated as a plain "false", left out, or "1"; a frequency of 0 (absent, as the loader reads)
    g = new_graph()
    for k, (negated, frequency) in enumerate([(Literal("false"), None), (None, None), (Literal("1"), None),
                                              (Literal(False), Literal("0.0", datatype=XSD.decimal))]):
        d = iri(f"D:{k}")
        g.add((d, KGF.curie, Literal(f"D:{k}")))
        g.add((d, RDFS.label, Literal(f"disease {k}")))
        a = BNode()
        g.add((a, RDF.type, KGF.PhenotypeAnnotation))
        g.add((a, KGF.disease, d))
        g.add((a, KGF.phenotype, iri("HP:0000582")))
        if negated is not None:
            g.add((a, KGF.negated, negated))
        if frequency is not None:
            g.add((a, KGF.frequency, frequency))
    assert [d for d, _ in diseases_with_phenotype(g, "HP:0000582")] == ["D:0", "D:1"]
    # a disease without kgf:curie or rdfs:label is named as load_rdf_graph names it (it was dropped)
    bare = iri("D:9")
    a = BNode()
    g.add((a, RDF.type, KGF.PhenotypeAnnotation))
    g.add((a, KGF.disease, bare))
    g.add((a, KGF.phenotype, iri("HP:0000582")))
    assert diseases_with_phenotype(g, "HP:0000582") == [("D:0", "disease 0"), ("D:1", "disease 1"), ("D:9", "D:9")]


def test_a_whole_graph_panel_leaves_out_diseases_with_nothing_visible(profiles, tmp_path, catalog, caplog):
    """kg=rdf's default panel is every disease of the graph: one disease whose only phenotype is known absent
    stopped the run (NoVisiblePhenotypeError); it is left out with a warning, and still fails when asked for."""
    from omegaconf import OmegaConf

    from kgface.kg import NoVisiblePhenotypeError
    from kgface.runtime import load_profiles

    write_turtle(profiles_to_graph(profiles[:1]), tmp_path / "down.ttl")
    path = _ttl(tmp_path, "kgf:negated true")
    path.write_text(path.read_text() + "\n" + (tmp_path / "down.ttl").read_text(), encoding="utf-8")
    kg = load_kg("rdf", path=path)
    assert set(kg.diseases["id"]) == {"ORPHA:1", "ORPHA:870"}
    cfg = OmegaConf.create({"kg": {"source": "rdf", "path": str(path), "panel": None}})
    with caplog.at_level("WARNING"):
        got = load_profiles(cfg, knowledge=(kg, catalog), include_healthy=False)
    assert [p.disease_id for p in got] == ["ORPHA:870"]
    assert "1 of the graph's 2 diseases have no visible phenotype and are left out (e.g. ORPHA:1)" in caplog.text
    with pytest.raises(NoVisiblePhenotypeError):
        load_profiles(cfg, diseases=["ORPHA:1"], knowledge=(kg, catalog))
    # a graph none of whose diseases shows anything: one line (profiles.json was written empty, exit 0)
    from kgface.errors import UserError

    alone = load_kg("rdf", path=_ttl(tmp_path, "kgf:negated true"))
    with pytest.raises(UserError, match=r"kg.panel=null: none of the graph's 1 diseases has a visible phenotype "
                                        r"\(e.g. ORPHA:1\)"):
        load_profiles(cfg, knowledge=(alone, catalog))


def test_phenotypes_are_hpo_terms_over_http_or_https_and_others_are_named(tmp_path):
    """An https OBO address is the same term (it was counted hidden); any other address is refused with its
    annotation named (it was a hidden phenotype, then an error that named neither file nor annotation)."""
    path = _ttl(tmp_path, "kgf:frequency 0.5")
    path.write_text(path.read_text().replace("obo:HP_0000312", "<https://purl.obolibrary.org/obo/HP_0000312>"))
    assert load_kg("rdf", path=path).edges["hpo_id"].tolist() == ["HP:0000272"]  # its alt id resolved, as over http
    # ... and the SPARQL helper finds it under either address
    assert [d for d, _ in diseases_with_phenotype(read_graph(path), "HP:0000312", include_descendants=False)] == \
        ["ORPHA:1"]
    path.write_text(path.read_text().replace("https://purl.obolibrary.org/obo/HP_", "https://identifiers.org/hp:"))
    with pytest.raises(KGFormatError, match=r"mine.ttl: annotation .*ORPHA:1/a: kgf:phenotype "
                                            r"https://identifiers.org/hp:0000312 is not an HPO term"):
        load_kg("rdf", path=path)


def test_an_untyped_annotation_is_read_by_the_loader_as_graph_to_profiles_reads_it(tmp_path):
    """Without `a kgf:PhenotypeAnnotation` the loader dropped the row while graph_to_profiles kept it."""
    path = _ttl(tmp_path, "kgf:frequency 0.5")
    node = "<https://w3id.org/kgface/annotation/ORPHA:1/a>"
    path.write_text(path.read_text().replace(f"{node} a kgf:PhenotypeAnnotation ;", node))
    assert "PhenotypeAnnotation" not in path.read_text()
    assert load_kg("rdf", path=path).edges["hpo_id"].tolist() == ["HP:0000272"]
    (profile,) = [p for p in graph_to_profiles(read_graph(path)) if p.disease_id == "ORPHA:1"]
    assert [p.hpo_id for p in profile.phenotypes] == ["HP:0000312"]  # as written (the loader resolves alt ids)


def test_an_untyped_disease_keeps_its_onsets(tmp_path, catalog):
    """A disease node without `a kgf:Disease` kept its annotations but lost its onsets, in silence."""
    path = _ttl(tmp_path, "kgf:frequency 0.5")
    path.write_text(path.read_text().replace("<http://www.orpha.net/ORDO/Orphanet_1> a kgf:Disease ;",
                                             "<http://www.orpha.net/ORDO/Orphanet_1>"))
    assert "kgf:Disease" not in path.read_text()
    p = ProfileBuilder(load_kg("rdf", path=path), catalog).build("ORPHA:1")
    assert [x.hpo_id for x in p.phenotypes] == ["HP:0000272"] and [o["hpo_id"] for o in p.onsets] == ["HP:0003593"]
