"""Facial profiles: what the knowledge graph says a face with a disease shows.

A profile lists the disease's visible phenotypes (frequency in [0,1] or None when unknown, onset, the ontology path
up to the visible-region root, curated visual wording), its negative (known absent) visible phenotypes, the disease's
onset terms, and text. The *healthy* profile is a real condition with no phenotypes. JSON schema: docs/knowledge.md.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from .errors import KGError, NoVisiblePhenotypeError
from .graph import KnowledgeGraph
from .lookup import HEALTHY, resolve_disease
from .ontology import ancestors, path_to
from .visible import VisibleCatalog

SCHEMA = "kgface.profile/1"


@dataclass
class Phenotype:
    hpo_id: str
    name: str
    region: str
    visual: str
    frequency: float | None = None  # in [0,1]; None = the KG gives none
    frequency_raw: str = ""
    onset: str = ""
    onset_name: str = ""
    min_stage: int = 0
    definition: str = ""
    matched_via: str = ""  # the catalogue entry this term falls under (itself, or a listed ancestor)
    path: list[str] = field(default_factory=list)
    path_names: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    provenance: str = ""


@dataclass
class NegativePhenotype:
    hpo_id: str
    name: str
    region: str
    references: list[str] = field(default_factory=list)


@dataclass
class FacialProfile:
    disease_id: str
    name: str
    kg: str
    phenotypes: list[Phenotype] = field(default_factory=list)
    negative_phenotypes: list[NegativePhenotype] = field(default_factory=list)
    onsets: list[dict] = field(default_factory=list)
    text: dict = field(default_factory=dict)
    hidden_phenotypes: int = 0  # annotated phenotypes a photograph cannot show
    query: str = ""
    schema: str = SCHEMA

    @property
    def healthy(self) -> bool:
        return self.disease_id == HEALTHY

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FacialProfile":
        data = dict(data)
        data["phenotypes"] = [Phenotype(**p) for p in data.get("phenotypes", [])]
        data["negative_phenotypes"] = [NegativePhenotype(**p) for p in data.get("negative_phenotypes", [])]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# a disease's definition: the first of these profile.text keys that holds text (HPO profiles have the curated
# `definition` or none; PrimeKG/RDF profiles carry disease_features.csv's columns): definitions before descriptions
DISEASE_TEXT_KEYS = ("definition", "mondo_definition", "orphanet_definition", "umls_description",
                     "orphanet_clinical_description", "mayo_symptoms")


def disease_definition(profile: "FacialProfile") -> str:
    """The profile's definition text ('' when it has none): what the encoder's disease node and the LLM request read."""
    text = profile.text or {}
    return next((str(text[k]) for k in DISEASE_TEXT_KEYS if str(text.get(k) or "").strip()), "")


def healthy_profile(kg_name: str = "") -> FacialProfile:
    return FacialProfile(disease_id=HEALTHY, name="healthy", kg=kg_name, query=HEALTHY,
                         text={"definition": "No condition: a face without disease signs."})


def _freq(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _by_frequency(p: Phenotype) -> tuple:
    """The order of a profile's phenotypes: most frequent first, unknown frequencies last, then by id."""
    return -(p.frequency if p.frequency is not None else -1), p.hpo_id


HPO_ROOT = "HP:0000001"  # All: present in every HPO release
CURATED = "kg_data"  # the provenance of kgface's curated rows (kg_data/supplement_edges.csv)
_COUNT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def pooled_counts(*raws: str) -> tuple[float, str] | None:
    """(pooled frequency, 'n1/m1;n2/m2') when every raw frequency (';'-joined ones included) is a case count
    n/m with m > 0; None otherwise (a frequency term or a percentage cannot be pooled with counts)."""
    parts = [p for raw in raws for p in str(raw).split(";")]
    counts = [_COUNT.match(p) for p in parts]
    if not parts or not all(counts) or any(int(c.group(2)) == 0 for c in counts):
        return None
    n, m = sum(int(c.group(1)) for c in counts), sum(int(c.group(2)) for c in counts)
    return min(1.0, n / m), ";".join(p.strip() for p in parts)


def _references(rows) -> list[str]:
    """The rows' sources, sorted (as the RDF reader gives them back; one row's come in file order)."""
    return sorted({r for row in rows for r in str(row.reference or "").split(";") if r})


def _frequency_of(present: list, absent: list) -> tuple[float | None, str, list]:
    """(frequency, frequency_raw, the absent rows counted) of one term from its rows reported present and those
    reported absent: case counts are pooled when every present row that gives a frequency is one, and then a
    source's 0/m counts too (0 of 19 patients is 19 cases: 0/19 and 3/3 -> 3/22, not 1; a row without a frequency
    adds no cases and stops no pooling: 68/117, 2/2 and a blank -> 70/119, not 1); otherwise the highest known
    frequency, in any order."""
    zeros = [r for r in absent if (m := _COUNT.match(str(r.frequency_raw or ""))) and int(m.group(1)) == 0]
    given = [r for r in present if str(r.frequency_raw or "").strip()]
    pooled = pooled_counts(*(str(r.frequency_raw or "") for r in given + zeros))
    if pooled is not None and given and len(given) + len(zeros) > 1:  # zeros alone never outvote a report
        return pooled[0], pooled[1], zeros
    known = [r for r in present if _freq(r.frequency) is not None]
    if not known:
        return None, str(present[0].frequency_raw or ""), []
    top = max(known, key=lambda r: _freq(r.frequency))  # the first of equal ones
    return _freq(top.frequency), str(top.frequency_raw or ""), []


class ProfileBuilder:
    """Builds profiles for one graph and catalogue, remembering per-term work (visibility, ontology path), so that
    profiling every disease of a 17k-disease graph costs little more than reading its edges."""

    def __init__(self, kg: KnowledgeGraph, catalog: VisibleCatalog):
        self.kg, self.catalog = kg, catalog
        if HPO_ROOT in kg.terms:  # a graph without the ontology (an RDF file read alone) has nothing to check with
            catalog.check_terms(kg.terms, kg.term_alias, kg.source)
        self.region_roots = catalog.region_roots()
        self.all_roots = set(self.region_roots.values())
        self._match: dict[str, object] = {}
        self._path: dict[str, list[str]] = {}

    def match(self, hpo_id: str):
        if hpo_id not in self._match:
            self._match[hpo_id] = self.catalog.match(hpo_id, ancestors(self.kg.terms, hpo_id))
        return self._match[hpo_id]

    def path(self, hpo_id: str, region: str) -> list[str]:
        if hpo_id not in self._path:
            # climb to the entry's own region root where the ontology allows, else to the nearest region root
            self._path[hpo_id] = path_to(self.kg.terms, hpo_id, {self.region_roots[region]}, self.all_roots)
        return self._path[hpo_id]

    def build(self, query: str, require_visible: bool = True) -> FacialProfile:
        kg = self.kg
        disease_id = resolve_disease(kg, query)
        if disease_id == HEALTHY:
            return healthy_profile(kg.source)
        positives: dict[str, Phenotype] = {}
        negatives: dict[str, NegativePhenotype] = {}
        hidden: set[str] = set()
        by_term: dict[str, list] = {}  # every row of a term first: what one row means depends on the others
        for row in kg.edge_records(disease_id):
            by_term.setdefault(row.hpo_id, []).append(row)
        for hpo_id, rows in by_term.items():
            entry = self.match(hpo_id)
            present = [r for r in rows if not r.negated]
            if entry is None:
                if present:  # hidden: annotated present, not visible; a known absence is neither
                    hidden.add(hpo_id)
                continue
            if not present:
                negatives[hpo_id] = NegativePhenotype(hpo_id, kg.term_name(hpo_id), entry.region,
                                                      references=_references(rows))
                continue
            # a sign one source reports present (3/10) is not known to be absent (0/5 elsewhere); kgface's curated
            # rows (cited, with min_stage) win over other sources, as in PrimeKG
            chosen = [r for r in present if str(r.provenance) == CURATED] or present
            frequency, raw, counted = _frequency_of(chosen, [] if chosen is not present else
                                                    [r for r in rows if r.negated])
            base = chosen[0]
            # a curated row's own onset, else the first row's that gives one (a blank first row hid a later one)
            onset = str(base.onset or next((r.onset for r in (*chosen, *present) if r.onset), "") or "")
            path = self.path(hpo_id, entry.region)
            term = kg.terms.get(hpo_id)
            positives[hpo_id] = Phenotype(
                hpo_id=hpo_id, name=kg.term_name(hpo_id), region=entry.region, visual=entry.visual,
                frequency=frequency, frequency_raw=raw, onset=onset, onset_name=kg.term_name(onset) if onset else "",
                min_stage=int(base.min_stage or 0), definition=term.definition if term else "",
                matched_via=entry.hpo_id, path=list(path), path_names=[kg.term_name(p) for p in path],
                references=_references(present + counted), provenance=str(base.provenance),
            )
        name = kg.disease_name(disease_id)
        if require_visible and not positives:
            raise NoVisiblePhenotypeError(
                f"disease {disease_id} ({name}) has no phenotype a face photograph can show in the {kg.source} "
                f"graph ({len(hidden)} hidden ones); choose another disease or extend kg_data/visible_phenotypes.csv")
        phenotypes = sorted(positives.values(), key=_by_frequency)
        return FacialProfile(
            disease_id=disease_id, name=name, kg=kg.source, phenotypes=phenotypes,
            negative_phenotypes=sorted(negatives.values(), key=lambda p: p.hpo_id),
            onsets=[{"hpo_id": o, "name": kg.term_name(o)} for o in kg.onsets_of(disease_id)],
            text=dict(kg.disease_text.get(disease_id, {})), hidden_phenotypes=len(hidden), query=str(query),
        )

    def build_all(self) -> list[FacialProfile]:
        """Profiles of every disease with at least one visible phenotype."""
        out = []
        for did in self.kg.edges["disease_id"].unique():
            profile = self.build(did, require_visible=False)
            if profile.phenotypes:
                out.append(profile)
        return out


def build_profile(kg: KnowledgeGraph, query: str, catalog: VisibleCatalog, require_visible: bool = True
                  ) -> FacialProfile:
    """The facial profile of a disease given by id, alias or name (or `healthy`)."""
    return ProfileBuilder(kg, catalog).build(query, require_visible)


PROFILE_SOURCES = ("kg", "learned", "blend")


def with_frequencies(profiles: list[FacialProfile], learned: dict[str, dict[str, float]], source: str = "kg",
                     weight: float = 0.5) -> list[FacialProfile]:
    """Copies of `profiles` whose phenotype frequencies come from `learned` ({disease: {hpo_id: frequency}}, e.g.
    estimated from images by the evaluator): `learned` replaces the KG's value where it has one, `blend` mixes
    weight * learned + (1 - weight) * KG (an unknown KG value takes the learned one). Phenotypes and diseases the
    learned table lacks keep the KG value; `frequency_raw` records where each number came from. The phenotypes are
    re-sorted by the new frequencies (a profile lists the most frequent first; the phenotype tokens' ties and the
    tables rely on it). A NaN learned value is a KGError naming the disease and phenotype."""
    import copy

    if source not in PROFILE_SOURCES:
        raise ValueError(f"profile.source={source!r}: use one of {', '.join(PROFILE_SOURCES)}")
    if source == "kg":
        return list(profiles)
    out = []
    for prof in profiles:
        table = learned.get(prof.disease_id, {})
        p2 = copy.deepcopy(prof)
        for ph in p2.phenotypes:
            f = table.get(ph.hpo_id)
            if f is None:
                continue
            if math.isnan(float(f)):  # min/max below would turn it into 0 without a word
                raise KGError(f"learned frequency of {ph.hpo_id} ({ph.name}) for {prof.disease_id} is NaN; "
                              "re-run the estimate or drop that entry from profile.learned")
            kg = ph.frequency
            new = float(f) if source == "learned" or kg is None else weight * float(f) + (1 - weight) * kg
            ph.frequency = min(1.0, max(0.0, new))  # the value used is the value recorded
            ph.frequency_raw = f"{source} {ph.frequency:.3f} (kg {ph.frequency_raw or kg})"
        p2.phenotypes.sort(key=_by_frequency)
        out.append(p2)
    return out
