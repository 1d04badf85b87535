"""RDF for facial profiles: Turtle export with stable IRIs, an identical round trip back to profiles, SPARQL, and
`kg=rdf` (a user's own graph in the same vocabulary).

Vocabulary (prefix `kgf:` = https://w3id.org/kgface/vocab#): a `kgf:Disease` (rdfs:label, kgf:curie, kgf:onset,
dcterms:description text) has `kgf:PhenotypeAnnotation`s (kgf:disease, kgf:phenotype, kgf:negated, kgf:frequency,
kgf:region, kgf:visual, kgf:path as an rdf:List, dcterms:source ...). Phenotypes are OBO HP classes with
rdfs:subClassOf edges up to their region roots (the facial subgraph). Parsing reads local files only: the parser is
given an open file and a fixed format, and rdflib does not follow owl:imports, so no remote IRI is ever fetched.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
from rdflib import RDF, RDFS, XSD, BNode, Graph, Literal, Namespace, URIRef
from rdflib.collection import Collection
from rdflib.namespace import DCTERMS

from .errors import KGFormatError
from .graph import MAX_STAGE, KnowledgeGraph
from .obo import Term, term_aliases
from .ontology import ONSET, ancestors, onset_terms
from .profiles import FacialProfile, NegativePhenotype, Phenotype

KGF = Namespace("https://w3id.org/kgface/vocab#")
OBO = Namespace("http://purl.obolibrary.org/obo/")
IAO_DEFINITION = OBO["IAO_0000115"]
BASE = "https://w3id.org/kgface/"
PREFIX_IRIS = {  # CURIE prefix -> IRI prefix (identifiers.org-style stable namespaces)
    "HP": "http://purl.obolibrary.org/obo/HP_",
    "MONDO": "http://purl.obolibrary.org/obo/MONDO_",
    "ORPHA": "http://www.orpha.net/ORDO/Orphanet_",
    "OMIM": "https://omim.org/entry/",
    "DECIPHER": "https://www.deciphergenomics.org/syndrome/",
    "MONDO_grouped": BASE + "mondo-group/",
}
HPO_CURIE = re.compile(r"^HP:\d{7}$")
OBO, OBO_HTTPS = "http://purl.obolibrary.org/obo/", "https://purl.obolibrary.org/obo/"  # the PURLs answer on both
FORMATS = {".ttl": "turtle", ".nt": "nt", ".n3": "n3", ".rdf": "xml", ".owl": "xml", ".xml": "xml"}
PHENOTYPE_FIELDS = ["frequency_raw", "onset_name", "definition"]


def iri(curie: str) -> URIRef:
    prefix, _, local = curie.partition(":")
    if prefix in PREFIX_IRIS:
        return URIRef(PREFIX_IRIS[prefix] + quote(local, safe=""))
    return URIRef(BASE + "id/" + quote(curie, safe=""))


def curie(ref: URIRef) -> str:
    text = str(ref)
    if text.startswith(OBO_HTTPS):  # the same terms as over http
        text = OBO + text[len(OBO_HTTPS):]
    for prefix, base in sorted(PREFIX_IRIS.items(), key=lambda kv: -len(kv[1])):
        if text.startswith(base):
            return f"{prefix}:{unquote(text[len(base):])}"
    if text.startswith(BASE + "id/"):
        return unquote(text[len(BASE) + 3:])
    return text


def _annotation_iri(disease_id: str, hpo_id: str, negated: bool) -> URIRef:
    return URIRef(f"{BASE}annotation/{quote(disease_id, safe=':')}/{quote(hpo_id, safe=':')}{'/not' if negated else ''}")


def _add_annotation(g: Graph, disease: URIRef, disease_id: str, hpo_id: str, negated: bool) -> URIRef:
    """The annotation node linking a disease to a phenotype (or, negated, to its absence), with the triples both
    kinds carry."""
    a = _annotation_iri(disease_id, hpo_id, negated)
    g.add((a, RDF.type, KGF.PhenotypeAnnotation))
    g.add((a, KGF.disease, disease))
    g.add((a, KGF.phenotype, iri(hpo_id)))
    g.add((a, KGF.negated, Literal(negated)))
    return a


def new_graph() -> Graph:
    g = Graph()
    g.bind("kgf", KGF)
    g.bind("obo", OBO)
    g.bind("dcterms", DCTERMS)
    return g


def add_profile(g: Graph, profile: FacialProfile, terms: dict[str, Term] | None = None) -> URIRef:
    d = iri(profile.disease_id) if not profile.healthy else URIRef(BASE + "healthy")
    g.add((d, RDF.type, KGF.Disease))
    g.add((d, RDFS.label, Literal(profile.name)))
    g.add((d, KGF.curie, Literal(profile.disease_id)))
    g.add((d, KGF.kg, Literal(profile.kg)))
    g.add((d, KGF.query, Literal(profile.query)))
    g.add((d, KGF.hiddenPhenotypes, Literal(profile.hidden_phenotypes)))
    if profile.text:
        g.add((d, DCTERMS.description, Literal(json.dumps(profile.text, sort_keys=True))))
    for onset in profile.onsets:
        g.add((d, KGF.onset, iri(onset["hpo_id"])))
        g.add((iri(onset["hpo_id"]), RDFS.label, Literal(onset["name"])))
    for p in profile.phenotypes:
        a = _add_annotation(g, d, profile.disease_id, p.hpo_id, False)
        if p.frequency is not None:
            # xsd:decimal has no exponent: 1e-05 (a learned frequency) is written 0.00001
            g.add((a, KGF.frequency, Literal(format(Decimal(repr(float(p.frequency))), "f"), datatype=XSD.decimal)))
        for name in PHENOTYPE_FIELDS:
            if getattr(p, name):
                g.add((a, KGF[name], Literal(getattr(p, name))))
        if p.onset:
            g.add((a, KGF.onset, iri(p.onset)))
        g.add((a, KGF.minStage, Literal(int(p.min_stage))))
        g.add((a, KGF.region, Literal(p.region)))
        g.add((a, KGF.visual, Literal(p.visual)))
        g.add((a, KGF.matchedVia, iri(p.matched_via)))
        g.add((a, KGF.provenance, Literal(p.provenance)))
        for ref in p.references:
            g.add((a, DCTERMS.source, Literal(ref)))
        head = BNode()
        Collection(g, head, [iri(x) for x in p.path])
        g.add((a, KGF.path, head))
        for child, parent, name in zip(p.path, p.path[1:] + [None], p.path_names):
            g.add((iri(child), RDF.type, KGF.Phenotype))
            g.add((iri(child), RDFS.label, Literal(name)))
            if parent is not None:
                g.add((iri(child), RDFS.subClassOf, iri(parent)))
        if terms:  # every is_a edge above the phenotype, not one path: a query climbing from another parent finds it
            for child in [p.hpo_id, *ancestors(terms, p.hpo_id)]:
                term = terms.get(child)
                for parent in term.parents if term else ():
                    g.add((iri(child), RDFS.subClassOf, iri(parent)))
                    if parent in terms:
                        g.add((iri(parent), RDFS.label, Literal(terms[parent].name)))
    for n in profile.negative_phenotypes:
        a = _add_annotation(g, d, profile.disease_id, n.hpo_id, True)
        g.add((a, KGF.region, Literal(n.region)))
        g.add((iri(n.hpo_id), RDFS.label, Literal(n.name)))
        for ref in n.references:
            g.add((a, DCTERMS.source, Literal(ref)))
    return d


def profiles_to_graph(profiles: list[FacialProfile], terms: dict[str, Term] | None = None) -> Graph:
    """The profiles as RDF; with the ontology's `terms`, every is_a edge above each phenotype (else the paths')."""
    g = new_graph()
    for p in profiles:
        add_profile(g, p, terms)
    return g


def read_graph(path: str | Path) -> Graph:
    """Parse a local RDF file (format from the suffix). Never dereferences remote IRIs."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise KGFormatError(f"{path}: unknown RDF suffix; use one of {', '.join(FORMATS)}")
    g = new_graph()
    try:
        with path.open("rb") as handle:
            g.parse(source=handle, format=fmt, publicID=BASE)
    except OSError as exc:
        raise KGFormatError(f"{path}: cannot read ({exc.strerror}); check kg.path") from exc
    except Exception as exc:  # rdflib raises many parser-specific types
        raise KGFormatError(f"{path}: not valid {fmt} ({str(exc).splitlines()[0][:200]}); fix the file") from None
    return g


def _one(g: Graph, s, p, default=None):
    return next(iter(g.objects(s, p)), default)


# Literals are read by their lexical form: bool(Literal("false")) is True and float("often") is a bare traceback.
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _boolean(node, where: str, prop: str = "kgf:negated") -> bool:
    """An xsd:boolean or plain literal true/false/1/0 (absent = false)."""
    if node is None:
        return False
    text = str(node).strip().lower() if isinstance(node, Literal) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise KGFormatError(f"{where}: {prop} '{node}' is not a boolean; write true or false")


def _number(node, where: str, prop: str, low: float, high: float, whole: bool = False) -> float:
    """A numeric literal in [low, high] (a whole number when `whole`), else a one-line KGFormatError."""
    text = str(node).strip() if isinstance(node, Literal) else None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not (low <= value <= high) or (whole and not value.is_integer()):  # NaN fails the range test
        kind = "a whole number" if whole else "a number"
        span = f"from {low:g} to {high:g}" if high != float("inf") else f"of at least {low:g}"
        raise KGFormatError(f"{where}: {prop} '{node}' is not {kind} {span}; fix the literal")
    return value


def _frequency(g: Graph, a, where: str) -> float | None:
    freq = _one(g, a, KGF.frequency)
    return None if freq is None else _number(freq, where, "kgf:frequency", 0.0, 1.0)


def _min_stage(g: Graph, a, where: str) -> int:
    stage = _one(g, a, KGF.minStage)
    return 0 if stage is None else int(_number(stage, where, "kgf:minStage", 0, MAX_STAGE, whole=True))


def graph_to_profiles(g: Graph, source: str | Path = "the graph") -> list[FacialProfile]:
    """Read profiles back from a graph written by `profiles_to_graph` (inverse up to list order, which is
    restored by the same sort the builder uses). `source` names the file in error messages."""
    out = []
    for d in sorted(g.subjects(RDF.type, KGF.Disease), key=str):
        disease_id = str(_one(g, d, KGF.curie, curie(d)))
        desc = _one(g, d, DCTERMS.description)
        hidden = _one(g, d, KGF.hiddenPhenotypes)
        profile = FacialProfile(
            disease_id=disease_id, name=str(_one(g, d, RDFS.label, disease_id)), kg=str(_one(g, d, KGF.kg, "rdf")),
            text=_description(desc) if desc is not None else {},
            hidden_phenotypes=0 if hidden is None else int(_number(hidden, f"{source}: disease {d}",
                                                                   "kgf:hiddenPhenotypes", 0, float("inf"), True)),
            query=str(_one(g, d, KGF.query, disease_id)),
            onsets=sorted(({"hpo_id": curie(o), "name": str(_one(g, o, RDFS.label, curie(o)))}
                           for o in g.objects(d, KGF.onset)), key=lambda o: o["hpo_id"]))
        for a in g.subjects(KGF.disease, d):
            hpo = _one(g, a, KGF.phenotype)
            refs = sorted(str(r) for r in g.objects(a, DCTERMS.source))
            name = str(_one(g, hpo, RDFS.label, curie(hpo)))
            where = f"{source}: annotation {a}"
            frequency = _frequency(g, a, where)
            if _boolean(_one(g, a, KGF.negated), where) or frequency == 0:  # 0 = absent, as load_rdf_graph reads it
                profile.negative_phenotypes.append(NegativePhenotype(curie(hpo), name, str(_one(g, a, KGF.region, "")),
                                                                     refs))
                continue
            head = _one(g, a, KGF.path)
            path = [curie(x) for x in Collection(g, head)] if head is not None else [curie(hpo)]
            onset = _one(g, a, KGF.onset)
            profile.phenotypes.append(Phenotype(
                hpo_id=curie(hpo), name=name, region=str(_one(g, a, KGF.region, "")),
                visual=str(_one(g, a, KGF.visual, "")), frequency=frequency,
                onset=curie(onset) if onset is not None else "", min_stage=_min_stage(g, a, where),
                matched_via=curie(_one(g, a, KGF.matchedVia, hpo)), path=path,
                path_names=[str(_one(g, iri(x), RDFS.label, x)) for x in path], references=refs,
                provenance=str(_one(g, a, KGF.provenance, "rdf")),
                **{f: str(_one(g, a, KGF[f], "")) for f in PHENOTYPE_FIELDS}))
        profile.phenotypes.sort(key=lambda p: (-(p.frequency if p.frequency is not None else -1), p.hpo_id))
        profile.negative_phenotypes.sort(key=lambda p: p.hpo_id)
        out.append(profile)
    return out


def diseases_with_phenotype(g: Graph, hpo_id: str, include_descendants: bool = True) -> list[tuple[str, str]]:
    """SPARQL: (disease curie, label) of diseases annotated (not negated) with a phenotype or, by default, any of
    its descendants in the graph. E.g. HP:0000582 = diseases with upslanted palpebral fissures. A disease without
    kgf:curie or rdfs:label is named as load_rdf_graph names it (its IRI's curie; the curie as its label): the
    query required both and dropped such diseases."""
    climb = "?p rdfs:subClassOf* ?target ." if include_descendants else "FILTER(?p = ?target)"
    # absent: kgf:negated true in any spelling ("true", 1), or a frequency of 0, as load_rdf_graph reads them;
    # kgf:negated may be left out
    query = f"""
        PREFIX kgf: <{KGF}>
        PREFIX rdfs: <{RDFS}>
        PREFIX xsd: <{XSD}>
        SELECT DISTINCT ?d WHERE {{
            ?a kgf:disease ?d ; kgf:phenotype ?p .
            FILTER NOT EXISTS {{ ?a kgf:negated ?n . FILTER(lcase(str(?n)) IN ("true", "1")) }}
            FILTER NOT EXISTS {{ ?a kgf:frequency ?f . FILTER(xsd:double(str(?f)) = 0) }}
            {climb}
        }}"""
    found = set()
    target = str(iri(hpo_id))  # a graph may write an OBO address over https, which kg=rdf reads as the same term
    for t in [target] + ([OBO_HTTPS + target[len(OBO):]] if target.startswith(OBO) else []):
        for (d,) in g.query(query, initBindings={"target": URIRef(t)}):
            did = str(_one(g, d, KGF.curie, curie(d)))
            found.add((did, str(_one(g, d, RDFS.label, did))))
    return sorted(found)


def load_rdf_graph(path: str | Path, hpo=None) -> KnowledgeGraph:
    """`kg=rdf`: a user's graph in kgface's vocabulary -> KnowledgeGraph (HPO supplies the rest of the ontology;
    `hpo` is a KnowledgeGraph or a callable returning one)."""
    g = read_graph(path)
    rows, diseases = [], {}
    nodes = dict.fromkeys(g.subjects(RDF.type, KGF.Disease))  # ... and a disease an annotation names, typed or not
    # an annotation without `a kgf:PhenotypeAnnotation` is still one (graph_to_profiles reads it): it was dropped
    annotations = dict.fromkeys(g.subjects(RDF.type, KGF.PhenotypeAnnotation))
    annotations.update(dict.fromkeys(g.subjects(KGF.disease, None)))
    for a in annotations:
        d, hpo_ref = _one(g, a, KGF.disease), _one(g, a, KGF.phenotype)
        if d is None or hpo_ref is None:
            raise KGFormatError(f"{path}: annotation {a} lacks kgf:disease or kgf:phenotype; add both")
        where = f"{path}: annotation {a}"
        nodes[d] = None
        did = str(_one(g, d, KGF.curie, curie(d)))
        diseases[did] = str(_one(g, d, RDFS.label, did))
        freq, onset = _frequency(g, a, where), _one(g, a, KGF.onset)
        if not HPO_CURIE.match(curie(hpo_ref)):  # it was counted as a hidden phenotype without a word
            raise KGFormatError(f"{where}: kgf:phenotype {hpo_ref} is not an HPO term; write it as "
                                "http://purl.obolibrary.org/obo/HP_0000000 (obo:HP_0000000)")
        rows.append({"disease_id": did, "hpo_id": curie(hpo_ref),
                     # a frequency of 0 means absent, as a NOT row does in phenotype.hpoa
                     "negated": _boolean(_one(g, a, KGF.negated), where) or freq == 0,
                     "frequency": freq if freq is not None else float("nan"),
                     "frequency_raw": str(_one(g, a, KGF.frequency_raw, "")),
                     "onset": curie(onset) if onset is not None else "", "min_stage": _min_stage(g, a, where),
                     "evidence": "", "reference": ";".join(sorted(str(r) for r in g.objects(a, DCTERMS.source))),
                     "provenance": str(_one(g, a, KGF.provenance, "rdf"))})
    if not rows:
        raise KGFormatError(f"{path}: no kgf:PhenotypeAnnotation found; export profiles with "
                            "`python -m kgface.profiles` to see the expected vocabulary")
    if callable(hpo):
        hpo = hpo()
    terms = dict(hpo.terms) if hpo is not None else {}
    alias = term_aliases(terms)  # alt and obsolete ids -> the live term, before any placeholder term is made
    for r in rows:
        r["hpo_id"], r["onset"] = alias.get(r["hpo_id"], r["hpo_id"]), alias.get(r["onset"], r["onset"])
    for s, label in g.subject_objects(RDFS.label):
        c = curie(s)
        if c.startswith("HP:") and c not in terms and c not in alias:
            terms[c] = Term(id=c, name=str(label),
                            parents=[alias.get(curie(o), curie(o)) for o in g.objects(s, RDFS.subClassOf)])
    # its onsets too: a disease without `a kgf:Disease` kept its annotations but lost its onsets, in silence
    onsets = [(did, alias.get(curie(o), curie(o))) for d in nodes
              for did in [str(_one(g, d, KGF.curie, curie(d)))] for o in g.objects(d, KGF.onset)]
    if hpo is not None and ONSET in hpo.terms:  # with an ontology to tell: only onsets, not Progressive etc.
        keep = onset_terms(terms)
        onsets = [(did, o) for did, o in onsets if o in keep]
    text = {str(_one(g, d, KGF.curie, curie(d))): _description(t) for d, t in g.subject_objects(DCTERMS.description)}
    return KnowledgeGraph(
        source="rdf", terms=terms,
        diseases=pd.DataFrame({"id": list(diseases), "name": list(diseases.values()), "aliases": ""}),
        edges=pd.DataFrame(rows), disease_onsets=pd.DataFrame(onsets, columns=["disease_id", "onset"]),
        disease_text=text, stats={"annotations": len(rows), "diseases": len(diseases)})


def _description(value) -> dict[str, str]:
    """A disease's dcterms:description: kgface writes its text fields as a JSON object; any other graph's plain
    text (the usual RDF) is its definition, not a JSON error naming no file."""
    try:
        parsed = json.loads(str(value))
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"definition": str(value)}


def write_turtle(g: Graph, path: str | Path) -> None:
    """The graph as Turtle at `path`, whole or not at all (a temporary name beside it, then a rename)."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(g.serialize(format="turtle"), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
