"""The encoder stage (`encoder=`): a facial profile's subgraph + stage (+ age group) -> K conditioning tokens.

`text` embeds node texts with all-MiniLM-L6-v2 (offline, cached), `graph` turns profiles into torch_geometric
graphs, `gnn` holds `KGEncoder` (RGCN / GATv2 / HGT, attention pooling, stage and age embeddings, learned null
tokens for classifier-free guidance). See docs/encoder.md.

    builder = ProfileGraphBuilder(cache=cache)              # or encoder.graph_builder(cache)
    graph = builder.batch(profiles, intensities=None)       # or per-image {hpo_id: intensity} dicts
    tokens = encoder(graph, stage, age)                     # [B, K, out_dim]
"""
from .gnn import CONVS, KGEncoder, fourier_features
from .graph import (GENERIC_DISEASE_TEXT, HEALTHY_TEXT, NODE_TYPES, RELATIONS, WEIGHT_KINDS, ProfileGraphBuilder,
                    TextFeatureStore, parse_phenotype_spec, phenotype_profile, profile_intensities)
from .text import TextModelError, default_text_model_path, embed_texts, load_text_model, resolve_text_model_path

__all__ = [
    "CONVS", "KGEncoder", "fourier_features", "GENERIC_DISEASE_TEXT", "HEALTHY_TEXT", "NODE_TYPES", "RELATIONS",
    "WEIGHT_KINDS", "ProfileGraphBuilder", "TextFeatureStore", "parse_phenotype_spec", "phenotype_profile",
    "profile_intensities",
    "TextModelError", "default_text_model_path", "embed_texts", "load_text_model", "resolve_text_model_path",
]
