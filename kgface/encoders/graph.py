"""Facial profiles -> torch_geometric graphs the encoder reads.

One graph per profile, homogeneous storage with typed nodes and relations:

    nodes      disease (one, index 0) | phenotype (each visible phenotype) | ancestor | region_root
    relations  has_phenotype (disease -> phenotype)   phenotype_of (phenotype -> disease)
               is_a (child -> parent, along each phenotype's path to its region root)   has_subclass (its reverse)

Per node: `x` (MiniLM embedding of the node text), `node_type`, `node_id` / `node_text` (lists), and for phenotype nodes a `weight` in [0, 1] with its
`weight_kind`: the KG frequency (`frequency`), a stand-in for a frequency the KG lacks (`frequency_unknown`,
weight = unknown_frequency), or an explicit per-image / user intensity (`intensity`); plus `min_stage`.
Per edge: `edge_type` and `edge_weight` (the phenotype's weight on disease<->phenotype edges, 1 on is_a edges).

Node texts: phenotype = "name: first sentence of its HPO definition"; ancestor and region root = name; disease =
GENERIC_DISEASE_TEXT (default `disease_text="generic"`, so the tokens of any disease come from its phenotypes and an
unseen disease or a custom phenotype set is in distribution) or "name: definition" (`disease_text="name"`; the
definition is the first of kgface.kg.DISEASE_TEXT_KEYS the profile's text holds); the healthy profile = one disease node
reading HEALTHY_TEXT and nothing else.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import torch
from torch_geometric.data import Batch, Data

from ..cache import Cache
from ..errors import UserError
from ..kg import FacialProfile, Phenotype, ProfileBuilder, disease_definition
from .text import embed_texts, resolve_text_model_path

NODE_TYPES = ("disease", "phenotype", "ancestor", "region_root")
RELATIONS = ("has_phenotype", "phenotype_of", "is_a", "has_subclass")
WEIGHT_KINDS = ("none", "frequency", "frequency_unknown", "intensity")
DISEASE, PHENOTYPE, ANCESTOR, ROOT = range(4)
HAS_PHENOTYPE, PHENOTYPE_OF, IS_A, HAS_SUBCLASS = range(4)
W_NONE, W_FREQUENCY, W_UNKNOWN, W_INTENSITY = range(4)
MAX_MIN_STAGE = 3
HEALTHY_TEXT = "healthy: a face without any disease sign"
GENERIC_DISEASE_TEXT = "a face of a person with a medical condition"
DISEASE_TEXTS = ("generic", "name")


def short_definition(text: str, max_chars: int = 160) -> str:
    """The first sentence of a definition, at most max_chars characters."""
    text = " ".join(str(text or "").split())
    end = text.find(". ")
    first = text if end < 0 else text[:end + 1]
    return first if len(first) <= max_chars else first[:max_chars].rsplit(" ", 1)[0] + "..."


def node_text(name: str, definition: str = "", max_chars: int = 160) -> str:
    short = short_definition(definition, max_chars)
    return f"{name}: {short}" if short else name


class TextFeatureStore:
    """Node text -> embedding row, kept in memory; texts not seen yet are embedded together in one `embed_texts`
    call (disk-cached). Call `add(texts)` once with every text of the training profiles, and later lookups cost a
    dictionary access each."""

    def __init__(self, text_model: str | os.PathLike | None = None, cache: Cache | None = None, model=None):
        self.model = model if model is not None else resolve_text_model_path(text_model)
        self.cache = cache
        self.rows: dict[str, int] = {}
        self.table = torch.zeros(0, 0)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def add(self, texts: Iterable[str]) -> None:
        missing = sorted({t for t in texts if t not in self.rows})  # sorted: the same set gives the same cache key
        if not missing:
            return
        emb = embed_texts(missing, self.model, self.cache)
        start = len(self.rows)
        self.rows.update({t: start + i for i, t in enumerate(missing)})
        self.table = emb if self.table.numel() == 0 else torch.cat([self.table, emb])

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        self.add(texts)
        return self.table[torch.tensor([self.rows[t] for t in texts], dtype=torch.long)]


def check_graph_settings(disease_text, unknown_frequency) -> None:
    """encoder.disease_text and encoder.unknown_frequency (the weight of a phenotype without a KG frequency, which
    KG frequencies share: a share in [0, 1], not a percentage; nan made every token NaN)."""
    from ..config import as_number

    if disease_text not in DISEASE_TEXTS:
        raise UserError(f"encoder.disease_text must be one of {', '.join(DISEASE_TEXTS)}, not '{disease_text}'")
    share = as_number(unknown_frequency, "encoder.unknown_frequency", "a share in [0, 1], e.g. 0.5")
    if not 0.0 <= share <= 1.0:
        raise UserError(f"encoder.unknown_frequency={unknown_frequency}: a share in [0, 1] (like the KG's "
                        "frequencies), e.g. 0.5")


class ProfileGraphBuilder:
    """Builds encoder graphs from profiles: `graph(profile, intensities)` -> Data, `batch(profiles, ...)` -> Batch.

    intensities (per profile, optional): {hpo_id: intensity in [0, 1]} = the phenotypes this face shows. When given,
    the graph keeps exactly those phenotypes (the profile's others are absent from this face) and weighs them by
    intensity instead of frequency; an id the profile lacks is an error (build a profile for a custom phenotype set
    with `phenotype_profile`).
    """

    def __init__(self, features: TextFeatureStore | None = None, *, text_model: str | os.PathLike | None = None,
                 cache: Cache | None = None, disease_text: str = "generic", unknown_frequency: float = 0.5,
                 definition_chars: int = 160):
        check_graph_settings(disease_text, unknown_frequency)
        self.features = features or TextFeatureStore(text_model, cache)
        self.disease_text = disease_text
        self.unknown_frequency = float(unknown_frequency)
        self.definition_chars = definition_chars

    @classmethod
    def from_config(cls, cfg: Mapping, cache: Cache | None = None) -> "ProfileGraphBuilder":
        """From the `encoder` config group (or a KGEncoder's `.config`)."""
        return cls(text_model=cfg.get("text_model"), cache=cache, disease_text=cfg.get("disease_text", "generic"),
                   unknown_frequency=cfg.get("unknown_frequency", 0.5))

    # ---- texts -------------------------------------------------------------------------------------------------
    def disease_node_text(self, profile: FacialProfile) -> str:
        if profile.healthy:
            return HEALTHY_TEXT
        if self.disease_text == "generic":
            return GENERIC_DISEASE_TEXT
        definition = disease_definition(profile)  # disease_text="name": the node reads the name and definition
        return node_text(profile.name, definition, self.definition_chars)

    def _term_text(self, kind: int, name: str, definition: str = "") -> str:
        return node_text(name, definition, self.definition_chars) if kind == PHENOTYPE else name

    # ---- graphs ------------------------------------------------------------------------------------------------
    def _structure(self, profile: FacialProfile, intensities: Mapping[str, float] | None):
        texts, types, weights, kinds, stages = [self.disease_node_text(profile)], [DISEASE], [0.0], [W_NONE], [0]
        ids = [profile.disease_id]
        src, dst, etype, eweight = [], [], [], []
        if profile.healthy:
            return texts, ids, types, weights, kinds, stages, src, dst, etype, eweight
        phenotypes: list[Phenotype] = list(profile.phenotypes)
        if intensities is not None:
            known = {p.hpo_id for p in phenotypes}
            extra = sorted(set(intensities) - known)
            if extra:
                raise UserError(f"intensities name {', '.join(extra)}, which the profile of {profile.disease_id} "
                                "lacks; build a profile for a custom phenotype set with phenotype_profile()")
            bad = sorted(h for h, v in intensities.items() if not math.isfinite(float(v)))
            if bad:
                raise UserError(f"intensities of {', '.join(bad)} are not finite numbers; give each in [0, 1]")
            # an intensity of 0 shows nothing: no node (it became a phenotype node of weight 0, i.e. "present")
            phenotypes = [p for p in phenotypes if p.hpo_id in intensities and float(intensities[p.hpo_id]) > 0]
        index: dict[str, int] = {}
        for p in phenotypes:
            if p.hpo_id in index:
                continue
            if intensities is not None:
                w, kind = min(max(float(intensities[p.hpo_id]), 0.0), 1.0), W_INTENSITY
            elif p.frequency is None or not math.isfinite(float(p.frequency)):  # NaN passed the clamp below
                w, kind = self.unknown_frequency, W_UNKNOWN
            else:
                w, kind = min(max(float(p.frequency), 0.0), 1.0), W_FREQUENCY
            index[p.hpo_id] = len(texts)
            ids.append(p.hpo_id)
            texts.append(self._term_text(PHENOTYPE, p.name, p.definition))
            types.append(PHENOTYPE)
            weights.append(w)
            kinds.append(kind)
            stages.append(min(max(int(p.min_stage or 0), 0), MAX_MIN_STAGE))
            src += [0, index[p.hpo_id]]
            dst += [index[p.hpo_id], 0]
            etype += [HAS_PHENOTYPE, PHENOTYPE_OF]
            eweight += [w, w]
        roots = {p.path[-1] for p in phenotypes if len(p.path) > 1}
        seen_edges: set[tuple[int, int]] = set()
        for p in phenotypes:
            path = p.path if p.path and p.path[0] == p.hpo_id else [p.hpo_id, *p.path]
            names = dict(zip(p.path, p.path_names))
            for hpo_id in path[1:]:
                if hpo_id not in index:
                    kind = ROOT if hpo_id in roots else ANCESTOR
                    index[hpo_id] = len(texts)
                    ids.append(hpo_id)
                    texts.append(self._term_text(kind, names.get(hpo_id, hpo_id)))
                    types.append(kind)
                    weights.append(0.0)
                    kinds.append(W_NONE)
                    stages.append(0)
            for child, parent in zip(path, path[1:]):
                c, q = index[child], index[parent]
                if (c, q) in seen_edges or c == q:
                    continue
                seen_edges.add((c, q))
                src += [c, q]
                dst += [q, c]
                etype += [IS_A, HAS_SUBCLASS]
                eweight += [1.0, 1.0]
        return texts, ids, types, weights, kinds, stages, src, dst, etype, eweight

    @staticmethod
    def _data(structure, x: torch.Tensor, disease_id: str) -> Data:
        texts, ids, types, weights, kinds, stages, src, dst, etype, eweight = structure
        return Data(
            x=x,
            node_type=torch.tensor(types, dtype=torch.long),
            weight=torch.tensor(weights, dtype=torch.float32),
            weight_kind=torch.tensor(kinds, dtype=torch.long),
            min_stage=torch.tensor(stages, dtype=torch.long),
            edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1),
            edge_type=torch.tensor(etype, dtype=torch.long),
            edge_weight=torch.tensor(eweight, dtype=torch.float32),
            num_nodes=len(texts),
            node_text=texts,
            node_id=ids,
            disease_id=disease_id,
        )

    def graph(self, profile: FacialProfile, intensities: Mapping[str, float] | None = None) -> Data:
        structure = self._structure(profile, intensities)
        return self._data(structure, self.features.lookup(structure[0]), profile.disease_id)

    def batch(self, profiles: Sequence[FacialProfile],
              intensities: Sequence[Mapping[str, float] | None] | None = None) -> Batch:
        """One Batch of many profiles (intensities: one dict or None per profile)."""
        if intensities is not None and len(intensities) != len(profiles):
            raise ValueError(f"{len(profiles)} profiles but {len(intensities)} intensity dicts")
        structures = [self._structure(p, None if intensities is None else intensities[i])
                      for i, p in enumerate(profiles)]
        texts = [t for s in structures for t in s[0]]
        x = self.features.lookup(texts)  # one embedding call for every text not seen yet
        out, start = [], 0
        for p, s in zip(profiles, structures):
            out.append(self._data(s, x[start:start + len(s[0])], p.disease_id))
            start += len(s[0])
        return Batch.from_data_list(out)

    def warm(self, profiles: Iterable[FacialProfile]) -> None:
        """Embed every node text of these profiles at once (one cache entry), e.g. all training profiles."""
        self.features.add(t for p in profiles for t in self._structure(p, None)[0])


def parse_phenotype_spec(items: Iterable[str] | Mapping[str, float]) -> dict[str, float]:
    """["HP:0000316=0.8", "HP:0000508"] -> {"HP:0000316": 0.8, "HP:0000508": 1.0}; intensities must lie in [0, 1]."""
    if isinstance(items, Mapping):
        items = [f"{k}={v}" for k, v in items.items()]
    out: dict[str, float] = {}
    for item in items:
        hpo_id, _, value = str(item).partition("=")
        try:
            intensity = float(value) if value.strip() else 1.0
        except ValueError:
            raise UserError(f"phenotype '{item}': the intensity after '=' must be a number in [0, 1]") from None
        if not 0.0 <= intensity <= 1.0:
            raise UserError(f"phenotype '{item}': intensity {intensity} is outside [0, 1]")
        key = hpo_id.strip().upper()  # hp:0000316 is HP:0000316 (it failed as "not a term")
        if key in out and out[key] != intensity:  # the last one was kept in silence (phenotype_profile refuses an
            # alt id and its live id given so)
            raise UserError(f"phenotype {key} given twice with different intensities ({out[key]:g} and "
                            f"{intensity:g}); give it once")
        out[key] = intensity
    return out


def profile_intensities(profile: FacialProfile) -> dict[str, float]:
    """{live HPO id: intensity} of a phenotype_profile: what its graph is encoded with."""
    return {p.hpo_id: float(p.frequency) for p in profile.phenotypes}


def phenotype_profile(builder: ProfileBuilder, intensities: Mapping[str, float], name: str = "custom phenotype set",
                      disease_id: str = "custom") -> FacialProfile:
    """A profile for a custom set of visible phenotypes (frequency = the given intensity), for composing a face the
    KG names no disease for. Encode it as any profile (the trained frequency route; kgface.generate does); with
    `intensities=profile_intensities(profile)` the weights read as intensities, for an encoder trained on such graphs
    (no kgface training path builds them). Alt and obsolete ids resolve to the live term (HP:0000312 -> Malar
    flattening HP:0000272); the caller's mapping is left as given."""
    kg = builder.kg
    resolved: dict[str, float] = {}
    for given, intensity in intensities.items():
        hpo_id = kg.canonical_term(given)
        if hpo_id in resolved and resolved[hpo_id] != float(intensity):
            raise UserError(f"phenotypes {given} and another id name the same term {hpo_id} with different "
                            "intensities; give it once")
        resolved[hpo_id] = float(intensity)
    phenotypes = []
    for hpo_id, intensity in resolved.items():
        term = kg.terms.get(hpo_id)
        if term is None:
            raise UserError(f"phenotype {hpo_id} is not a term of the {kg.source} graph")
        entry = builder.match(hpo_id)
        if entry is None:
            raise UserError(f"phenotype {hpo_id} ({kg.term_name(hpo_id)}) is not visible in a face photograph "
                            "(not in kg_data/visible_phenotypes.csv)")
        path = builder.path(hpo_id, entry.region)
        phenotypes.append(Phenotype(
            hpo_id=hpo_id, name=kg.term_name(hpo_id), region=entry.region, visual=entry.visual,
            frequency=intensity, definition=term.definition, matched_via=entry.hpo_id, path=list(path),
            path_names=[kg.term_name(p) for p in path], provenance="custom"))
    # most intense first, ties by id: which phenotypes a full token set keeps must not depend on the typing order
    phenotypes.sort(key=lambda p: (-float(p.frequency), p.hpo_id))
    return FacialProfile(disease_id=disease_id, name=name, kg=kg.source, phenotypes=phenotypes, query=disease_id)
