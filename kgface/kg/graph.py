"""The knowledge graph kgface works on, whatever file it came from.

Three tables and an ontology:
- `diseases`: id (ORPHA:870, OMIM:190685, MONDO:0008608, ...), name, aliases (other ids that resolve to it, `|`-joined);
- `edges`: disease->phenotype annotations: disease_id, hpo_id (alt and obsolete ids resolved to the live term),
  negated (a `NOT` row or a frequency of 0: known to be absent), frequency
  (float in [0,1], NaN = unknown), frequency_raw, onset (HPO onset term or ''), min_stage (the disease stage from
  which the sign shows, 0 unless a curated edge says otherwise), evidence, reference, provenance
  (`hpoa`, `primekg`, `kg_data`, `rdf`);
- `disease_onsets`: disease_id, onset (the disease's clinical-course rows, aspect C, that are Onset HP:0003674 or
  below it; Progressive, Death in infancy and other course terms are not onsets);
- `terms`: HPO terms keyed by id (names, definitions, synonyms and is_a parents).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .obo import Term, term_aliases

EDGE_COLUMNS = ["disease_id", "hpo_id", "negated", "frequency", "frequency_raw", "onset", "min_stage", "evidence", "reference",
                "provenance"]
DISEASE_COLUMNS = ["id", "name", "aliases"]
MAX_STAGE = 3  # disease stages run 0-3 (acne grades 0-3; the encoder's MAX_MIN_STAGE, the prompts' stage ladder)


@dataclass
class KnowledgeGraph:
    source: str
    terms: dict[str, Term]
    diseases: pd.DataFrame
    edges: pd.DataFrame
    disease_onsets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["disease_id", "onset"]))
    disease_text: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if "min_stage" not in self.edges.columns:
            self.edges["min_stage"] = 0
        self.edges = self.edges[EDGE_COLUMNS].reset_index(drop=True)  # one column order, whatever the source
        self._alias_to_id: dict[str, str] | None = None
        self._edges_by_disease: dict[str, pd.DataFrame] | None = None
        self._term_alias: dict[str, str] | None = None
        self._names: dict[str, str] | None = None
        self._onsets: dict[str, list[str]] | None = None
        self._records: dict[str, list] | None = None

    # --- lookups -------------------------------------------------------------------------------------------------
    @property
    def alias_to_id(self) -> dict[str, str]:
        if self._alias_to_id is None:
            table: dict[str, str] = {}
            for did, aliases in zip(self.diseases["id"], self.diseases["aliases"]):
                table[did] = did
                for alias in filter(None, str(aliases or "").split("|")):
                    table.setdefault(alias, did)
            self._alias_to_id = table
        return self._alias_to_id

    def disease_name(self, disease_id: str) -> str:
        if self._names is None:
            self._names = dict(zip(self.diseases["id"], self.diseases["name"].astype(str)))
        return self._names.get(disease_id, disease_id)

    def edges_of(self, disease_id: str) -> pd.DataFrame:
        if self._edges_by_disease is None:
            self._edges_by_disease = {k: v for k, v in self.edges.groupby("disease_id", sort=False)}
        return self._edges_by_disease.get(disease_id, self.edges.iloc[0:0])

    def edge_records(self, disease_id: str) -> list:
        """The disease's edges as plain named tuples (fast to iterate; built once for the whole graph)."""
        if self._records is None:
            from collections import namedtuple
            Edge = namedtuple("Edge", EDGE_COLUMNS)
            cols = [self.edges[c].tolist() for c in EDGE_COLUMNS]
            self._records = {}
            for values in zip(*cols):
                self._records.setdefault(values[0], []).append(Edge(*values))
        return self._records.get(disease_id, [])

    def onsets_of(self, disease_id: str) -> list[str]:
        if self._onsets is None:
            self._onsets = {}
            for did, onset in zip(self.disease_onsets["disease_id"], self.disease_onsets["onset"]):
                self._onsets.setdefault(did, set()).add(onset)
        return sorted(self._onsets.get(disease_id, ()))

    @property
    def term_alias(self) -> dict[str, str]:
        """alt id or obsolete id (with replaced_by) -> the live term id, computed once."""
        if self._term_alias is None:
            self._term_alias = term_aliases(self.terms)
        return self._term_alias

    def canonical_term(self, hpo_id: str) -> str:
        """Map alt ids and obsolete ids (with replaced_by) to the live term id; unknown ids are returned as given."""
        return self.term_alias.get(hpo_id, hpo_id)

    def term_name(self, hpo_id: str) -> str:
        term = self.terms.get(hpo_id)
        return term.name if term else hpo_id

    # --- persistence (the parsed-graph cache) ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(self.diseases[DISEASE_COLUMNS], preserve_index=False),
                       folder / "diseases.parquet")
        pq.write_table(pa.Table.from_pandas(self.edges[EDGE_COLUMNS], preserve_index=False), folder / "edges.parquet")
        pq.write_table(pa.Table.from_pandas(self.disease_onsets[["disease_id", "onset"]], preserve_index=False),
                       folder / "disease_onsets.parquet")
        terms = list(self.terms.values())
        pq.write_table(pa.table({
            "id": [t.id for t in terms], "name": [t.name for t in terms],
            "definition": [t.definition for t in terms], "synonyms": [t.synonyms for t in terms],
            "parents": [t.parents for t in terms], "alt_ids": [t.alt_ids for t in terms],
            "obsolete": [t.obsolete for t in terms], "replaced_by": [t.replaced_by for t in terms],
        }), folder / "terms.parquet")
        (folder / "graph.json").write_text(json.dumps({"source": self.source, "stats": self.stats,
                                                       "disease_text": self.disease_text}), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "KnowledgeGraph":
        folder = Path(folder)
        meta = json.loads((folder / "graph.json").read_text(encoding="utf-8"))
        t = pq.read_table(folder / "terms.parquet").to_pydict()
        terms = {
            tid: Term(id=tid, name=name, definition=d, synonyms=list(s), parents=list(p), alt_ids=list(a),
                      obsolete=bool(o), replaced_by=r)
            for tid, name, d, s, p, a, o, r in zip(t["id"], t["name"], t["definition"], t["synonyms"], t["parents"],
                                                  t["alt_ids"], t["obsolete"], t["replaced_by"])
        }
        return cls(
            source=meta["source"], terms=terms,
            diseases=pq.read_table(folder / "diseases.parquet").to_pandas(),
            edges=pq.read_table(folder / "edges.parquet").to_pandas(),
            disease_onsets=pq.read_table(folder / "disease_onsets.parquet").to_pandas(),
            disease_text=meta.get("disease_text", {}), stats=meta.get("stats", {}),
        )
