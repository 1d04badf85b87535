"""Disease lookup by id (ORPHA:870, OMIM:190685, MONDO:0008608, an alias) or by name, with suggestions."""
from __future__ import annotations

import re

from rapidfuzz import fuzz, process

from .errors import UnknownDiseaseError
from .graph import KnowledgeGraph

HEALTHY = "healthy"
_ID = re.compile(r"^[A-Za-z_]+:\S+$")


def _normalise_id(text: str) -> str:
    prefix, _, local = text.partition(":")
    prefix = prefix.upper().replace("ORPHANET", "ORPHA")
    if prefix == "MONDO_GROUPED":  # PrimeKG's grouped ids keep their mixed case (MONDO_grouped:13924_12592)
        prefix = "MONDO_grouped"
    if prefix == "MONDO" and local.isdigit():
        local = local.zfill(7)
    return f"{prefix}:{local}"


def suggestions(kg: KnowledgeGraph, query: str, limit: int = 5) -> list[str]:
    names = kg.diseases["name"].tolist()
    hits = process.extract(query, names, scorer=fuzz.WRatio, limit=limit)
    return [f"{kg.diseases['id'].iloc[i]} {name}" for name, _, i in hits]


def resolve_disease(kg: KnowledgeGraph, query: str) -> str:
    """Return the graph's disease id for an id, alias or name. Several diseases with the same name: the one with
    the most frequency-annotated present edges wins (ORPHA entries usually carry frequencies, OMIM ones often do
    not; a sign reported absent, 0/m or NOT, says nothing of what the disease shows)."""
    text = str(query).strip()
    if text.lower() == HEALTHY:
        return HEALTHY
    if text in kg.alias_to_id:  # an id or alias exactly as the graph spells it, prefixed or not (an RDF node 'D1')
        return kg.alias_to_id[text]
    if _ID.match(text):
        normalised = _normalise_id(text)
        if normalised in kg.alias_to_id:
            return kg.alias_to_id[normalised]
    matches = kg.diseases.loc[kg.diseases["name"].str.lower() == text.lower(), "id"].tolist()
    if matches:
        if len(matches) == 1:
            return matches[0]
        counts = {m: int((e["frequency"].notna() & ~e["negated"].astype(bool)).sum())
                  for m in matches for e in [kg.edges_of(m)]}
        return max(matches, key=lambda m: (counts[m], m.startswith("ORPHA")))
    close = "; ".join(suggestions(kg, text))
    raise UnknownDiseaseError(f"unknown disease '{text}' in the {kg.source} knowledge graph; closest: {close}")
