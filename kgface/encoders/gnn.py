"""KGEncoder: profile graph + stage (+ age group) -> K tokens of the UNet's cross-attention width.

    node state h0 = Linear(text embedding) + type embedding + [phenotype: weight-kind embedding + MLP(Fourier(weight))
                    + min-stage embedding] + stage embedding (per graph), LayerNorm
    L x  h = LayerNorm(h + Dropout(GELU(conv(h))))        conv = RGCNConv | GATv2Conv | HGTConv
    tokens = K learned queries attending over the graph's node states (key padding mask per graph)
             + stage embedding + age embedding, then a feed-forward block, LayerNorm, [centering per token
             position with running statistics, `center_tokens`], Linear(hidden -> out_dim)
      or, with tokens="phenotypes": one stage token + one token per phenotype node (its state after message
             passing + stage + age), highest weight first, K-1 slots, empty slots filled by one learned constant;
             then the same feed-forward block, LayerNorm and Linear (no centering: a slot has no fixed meaning)

Pooled tokens summarise the whole graph, so a generator trained on a few diseases learns one face per summary and
draws an unseen combination as the nearest seen one. Phenotype tokens make a profile's conditioning the set of its
phenotypes: cross-attention reads them as a set, so an unseen disease is a new set of known tokens.

Frequencies and intensities enter every conv as a node attribute of the phenotype node (each phenotype appears
once per profile graph, so the (disease, phenotype) edge property is a node property there); GATv2 also reads them
as edge attributes ([weight, one-hot relation]). RGCNConv has no edge weights and HGTConv no edge attributes.

`null(B)` returns the learned unconditional tokens for classifier-free guidance dropout. They are a parameter, not
the encoding of any graph: the healthy profile (one disease node reading "healthy") is encoded like any disease.
Saved as `config.json` + `model.safetensors` in a folder (`save_pretrained` / `from_pretrained`).
"""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, HGTConv, RGCNConv
from torch_geometric.utils import to_dense_batch

from ..errors import UserError
from .graph import MAX_MIN_STAGE, NODE_TYPES, RELATIONS, WEIGHT_KINDS, ProfileGraphBuilder

CONVS = ("rgcn", "gatv2", "hgt")
TOKEN_MODES = ("pooled", "phenotypes")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT = "kgface.encoder/1"
# HGT's node types: ancestors and region roots share one ("term"; their difference stays in the type embedding),
# because HGTConv's per-(head, edge type) loops cost time per listed type when pyg-lib is absent
HGT_NODE_TYPES = ("disease", "phenotype", "term")
HGT_NODE_OF = (0, 1, 2, 2)  # NODE_TYPES index -> HGT_NODE_TYPES index
_HPO = ("phenotype", "term")
# HGT's typed edges (source type, relation, destination type): every combination a profile graph can hold
HGT_EDGE_TYPES = ([("disease", "has_phenotype", "phenotype"), ("phenotype", "phenotype_of", "disease")]
                  + [(c, "is_a", p) for c in _HPO for p in _HPO] + [(p, "has_subclass", c) for c in _HPO for p in _HPO])


def fourier_features(x: Tensor, n: int) -> Tensor:
    """x in about [0, 1], shape [N] -> [N, 1 + 2n]: x, sin(2^k pi x), cos(2^k pi x) for k < n."""
    freqs = (2.0 ** torch.arange(n, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[:, None] * freqs
    return torch.cat([x[:, None], angles.sin(), angles.cos()], dim=-1)


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.SiLU(), nn.Linear(hidden, out))


def with_unknown_stage(h: Tensor, stage: Tensor, unknown_stage: Tensor) -> Tensor:
    """Rows of the stage embedding `h` whose stage is NaN (a photo without a grade) replaced by `unknown_stage`
    (the KG encoder and the class tokens alike)."""
    unknown = torch.isnan(stage)
    if not bool(unknown.any()):
        return h
    return torch.where(unknown.unsqueeze(-1), unknown_stage.to(h.dtype).expand_as(h), h)


def default_unknown_stage(state_dict: dict, prefix: str, unknown_stage: Tensor) -> None:
    """A state dict saved before `unknown_stage` existed loads with it at zero, as it would have started."""
    state_dict.setdefault(prefix + "unknown_stage", torch.zeros_like(unknown_stage))


class KGEncoder(nn.Module):
    """Configurable graph encoder. forward(graph Batch, stage [B], age [B] | None) -> tokens [B, K, out_dim].

    conv: rgcn | gatv2 | hgt. out_dim: the UNet's cross-attention width. stage: continuous severity in
    [0, stage_max]. age_groups: number of age groups (0 = no age input); age -1 = unknown. text_model,
    disease_text, unknown_frequency: the graph settings (kept in the config so a saved encoder rebuilds its
    inputs: `graph_builder()`). tokens: pooled (K attention-pooled tokens) | phenotypes (a stage token and K-1
    phenotype slots; a profile with more phenotypes keeps its K-1 highest-weight ones).
    """

    def __init__(self, conv: str = "rgcn", out_dim: int = 768, hidden: int = 256, layers: int = 2,
                 num_tokens: int = 8, heads: int = 4, in_dim: int = 384, dropout: float = 0.0,
                 num_bases: int | None = None, age_groups: int = 0, stage_max: float = 3.0, fourier: int = 6,
                 text_model: str | None = None, disease_text: str = "generic", unknown_frequency: float = 0.5,
                 center_tokens: bool = False, tokens: str = "pooled"):
        super().__init__()
        if conv not in CONVS:
            raise UserError(f"encoder.conv must be one of {', '.join(CONVS)}, not '{conv}'")
        if tokens not in TOKEN_MODES:
            raise UserError(f"encoder.tokens must be one of {', '.join(TOKEN_MODES)}, not '{tokens}'")
        if tokens == "phenotypes" and num_tokens < 2:
            raise UserError(f"encoder.tokens=phenotypes needs model.num_tokens >= 2 (a stage token and phenotype "
                            f"slots), not {num_tokens}")
        if num_bases is not None and conv != "rgcn":  # read by RGCNConv alone: elsewhere it was dropped in silence
            raise UserError(f"encoder.num_bases={num_bases} applies to encoder.conv=rgcn only (basis decomposition); "
                            f"leave it null with conv={conv}")
        center_tokens = bool(center_tokens) and tokens == "pooled"  # phenotype slots have no fixed meaning
        if hidden % heads:
            raise UserError(f"encoder.hidden ({hidden}) must be divisible by encoder.heads ({heads})")
        if out_dim is None or int(out_dim) <= 0:
            raise UserError("encoder.out_dim must be the UNet's cross-attention width (a positive integer)")
        self.config = dict(conv=conv, out_dim=int(out_dim), hidden=hidden, layers=layers, num_tokens=num_tokens,
                           heads=heads, in_dim=in_dim, dropout=dropout, num_bases=num_bases, age_groups=age_groups,
                           stage_max=stage_max, fourier=fourier, text_model=text_model, disease_text=disease_text,
                           unknown_frequency=unknown_frequency, center_tokens=center_tokens, tokens=tokens)
        self.conv_type, self.num_tokens, self.out_dim, self.token_mode = conv, num_tokens, int(out_dim), tokens
        self.stage_max, self.fourier, self.age_groups = float(stage_max), fourier, age_groups
        ff = 1 + 2 * fourier

        # node inputs
        self.text_proj = nn.Linear(in_dim, hidden)
        self.type_emb = nn.Embedding(len(NODE_TYPES), hidden)
        self.weight_kind_emb = nn.Embedding(len(WEIGHT_KINDS), hidden)
        self.weight_mlp = _mlp(ff, hidden, hidden)
        self.min_stage_emb = nn.Embedding(MAX_MIN_STAGE + 1, hidden)
        self.stage_mlp = _mlp(ff, hidden, hidden)
        # a NaN stage (a real photo without a grade) reads this instead of a made-up stage; zeros: no random draw,
        # so adding it changed no initialisation, and it stays zero unless such photos are trained on
        self.unknown_stage = nn.Parameter(torch.zeros(hidden))
        self.stage_to_node = nn.Linear(hidden, hidden)
        self.stage_to_token = nn.Linear(hidden, hidden)
        self.age_emb = nn.Embedding(age_groups + 1, hidden) if age_groups > 0 else None  # row 0 = unknown
        self.in_norm = nn.LayerNorm(hidden)

        # message passing
        self.convs = nn.ModuleList()
        for _ in range(layers):
            if conv == "rgcn":
                self.convs.append(RGCNConv(hidden, hidden, num_relations=len(RELATIONS), num_bases=num_bases))
            elif conv == "gatv2":
                self.convs.append(GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=1 + len(RELATIONS),
                                            add_self_loops=True, fill_value="mean"))
            else:
                self.convs.append(HGTConv(hidden, hidden, metadata=(list(HGT_NODE_TYPES), HGT_EDGE_TYPES), heads=heads))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

        if tokens == "pooled":  # attention pooling -> K tokens
            self.queries = nn.Parameter(torch.randn(num_tokens, hidden) * 0.02)
            self.pool = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            self.pool_norm = nn.LayerNorm(hidden)
        else:  # a stage token and K-1 phenotype slots; an empty slot is one learned constant
            self.stage_slot = nn.Parameter(torch.randn(hidden) * 0.02)
            self.empty_slot = nn.Parameter(torch.randn(hidden) * 0.02)
        self.token_ff = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                      nn.Linear(2 * hidden, hidden))
        self.out_norm = nn.LayerNorm(hidden)
        # Profiles share most of their graph (ontology ancestors, region roots, similar MiniLM phrases), so raw tokens
        # of different diseases start at cosine ~0.9 and the UNet learns to ignore their small differences (the
        # trained default reached 0.97-0.99 and drew one face for every disease). Centering and scaling each token
        # position by running statistics over the training profiles keeps what tells diseases apart.
        self.token_center = nn.BatchNorm1d(num_tokens * hidden) if center_tokens else None
        self.out_proj = nn.Linear(hidden, self.out_dim)
        self.null_tokens = nn.Parameter(torch.randn(num_tokens, self.out_dim) * 0.02)

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def setting_names(cls) -> set[str]:
        """The constructor's arguments: every key an `encoder` config group may hold."""
        return set(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount])

    @classmethod
    def check_settings(cls, cfg: Mapping) -> None:
        """Refuse an unknown key of the `encoder` config group (kgface.train's preflight calls it too)."""
        keys = cls.setting_names()
        unknown = sorted(k for k in cfg if k not in keys)
        if unknown:  # a typo (+encoder.hiden=512) trained with the default, where from_pretrained refuses it
            raise UserError(f"encoder.{unknown[0]} is not a setting of the KG encoder; use one of "
                            f"{', '.join(sorted(keys - {'in_dim'}))}")

    @classmethod
    def from_config(cls, cfg: Mapping, out_dim: int | None = None) -> "KGEncoder":
        """From the `encoder` config group (plain keys); out_dim (the UNet's width) overrides `cfg.out_dim`."""
        cls.check_settings(cfg)
        kwargs = dict(cfg)
        if out_dim is not None:
            kwargs["out_dim"] = out_dim
        if kwargs.get("out_dim") is None:
            raise UserError("encoder.out_dim is not set: pass the UNet's cross-attention width")
        return cls(**kwargs)

    def graph_builder(self, cache=None, features=None) -> ProfileGraphBuilder:
        """The graph builder matching this encoder's text model and graph settings."""
        c = self.config
        return ProfileGraphBuilder(features, text_model=c["text_model"], cache=cache, disease_text=c["disease_text"],
                                   unknown_frequency=c["unknown_frequency"])

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors into `folder`, both at once (kgface.cache.atomic_folder): a crash
        never leaves new weights beside an old config (or half a file); an existing folder is replaced."""
        from safetensors.torch import save_file

        from ..cache import atomic_folder

        with atomic_folder(folder) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            (tmp / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **self.config}, indent=2) + "\n",
                                           encoding="utf-8")
        return Path(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "KGEncoder":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise UserError(f"{folder}: not a saved encoder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.pop("format", None) != FORMAT:
            raise UserError(f"{folder / CONFIG_FILE}: unknown encoder format (expected {FORMAT})")
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        stray = sorted(set(config) - known)
        if stray:
            raise UserError(f"{folder / CONFIG_FILE}: unknown key {stray[0]!r} (saved by another kgface version?)")
        model = cls(**config)
        state = load_file(str(folder / WEIGHTS_FILE), device=str(device))
        default_unknown_stage(state, "", model.unknown_stage)  # saved before it existed: zero, not "missing"
        ours = model.state_dict()
        missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        resized = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
        if resized:
            k = resized[0]
            raise UserError(f"{folder / WEIGHTS_FILE}: {k} has shape {tuple(state[k].shape)} but its {CONFIG_FILE} "
                            f"builds {tuple(ours[k].shape)} ({len(resized)} such tensors)")
        if missing or unexpected:
            first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise UserError(f"{folder / WEIGHTS_FILE}: does not fit its {CONFIG_FILE} ({first}; "
                            f"{len(missing)} missing, {len(unexpected)} unexpected)")
        model.load_state_dict(state)
        # eval: the token centering reads its saved running statistics (in train mode a batch's own statistics would
        # make one graph's tokens depend on its batch-mates); call .train() to fine-tune
        return model.to(device).eval()

    # ---- encoding ----------------------------------------------------------------------------------------------
    def null(self, batch_size: int) -> Tensor:
        """The unconditional tokens [B, K, out_dim] for classifier-free guidance (not the healthy profile)."""
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)

    def with_null(self, tokens: Tensor, drop: Tensor) -> Tensor:
        """tokens with the rows where `drop` (bool [B]) is true replaced by the null tokens (CFG dropout)."""
        return torch.where(drop.view(-1, 1, 1).to(tokens.device), self.null(tokens.shape[0]).to(tokens.dtype), tokens)

    def _stage_embedding(self, stage: Tensor | float | None, batch_size: int, device) -> Tensor:
        if stage is None:
            stage = torch.zeros(batch_size, device=device)
        stage = torch.as_tensor(stage, dtype=torch.float32, device=device).reshape(-1)
        if stage.numel() == 1 and batch_size > 1:
            stage = stage.expand(batch_size)
        if stage.numel() != batch_size:
            raise ValueError(f"stage has {stage.numel()} values for {batch_size} graphs")
        h = self.stage_mlp(fourier_features(torch.nan_to_num(stage, nan=0.0) / self.stage_max, self.fourier))
        return with_unknown_stage(h, stage, self.unknown_stage)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        default_unknown_stage(state_dict, prefix, self.unknown_stage)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _age_embedding(self, age: Tensor | None, batch_size: int, device) -> Tensor | None:
        if self.age_emb is None:
            if age is not None and bool((torch.as_tensor(age) >= 0).any()):
                raise UserError("an age group was given but the encoder has age_groups=0; set encoder.age_groups")
            return None
        if age is None:
            age = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        age = torch.as_tensor(age, dtype=torch.long, device=device).reshape(-1)
        if bool((age >= self.age_groups).any()) or bool((age < -1).any()):
            raise ValueError(f"age groups must lie in [0, {self.age_groups}) or be -1 (unknown)")
        return self.age_emb(age + 1)

    def _hetero(self, node_type: Tensor, edge_index: Tensor, edge_type: Tensor):
        """The index plan that turns the homogeneous batch into HGT's typed dictionaries (computed once per call)."""
        hgt_type = torch.tensor(HGT_NODE_OF, device=node_type.device)[node_type]
        local = torch.empty(node_type.numel(), dtype=torch.long, device=node_type.device)
        node_idx = {}
        for t, name in enumerate(HGT_NODE_TYPES):
            idx = (hgt_type == t).nonzero().view(-1)
            local[idx] = torch.arange(idx.numel(), device=node_type.device)
            node_idx[name] = idx
        src_t, dst_t = hgt_type[edge_index[0]], hgt_type[edge_index[1]]
        edge_dict = {}
        for s, rel, d in HGT_EDGE_TYPES:
            mask = ((edge_type == RELATIONS.index(rel)) & (src_t == HGT_NODE_TYPES.index(s))
                    & (dst_t == HGT_NODE_TYPES.index(d)))
            if bool(mask.any()):  # only the edge types present
                edge_dict[(s, rel, d)] = local[edge_index[:, mask]]
        return node_idx, edge_dict

    def encode_nodes(self, graph, stage_h: Tensor, batch: Tensor) -> Tensor:
        """Node states [N, hidden] after message passing (stage_h: [B, hidden]; batch: node -> graph)."""
        x, node_type = graph.x, graph.node_type
        is_pheno = (graph.weight_kind > 0).to(x.dtype).unsqueeze(-1)
        h = (self.text_proj(x) + self.type_emb(node_type) + self.weight_kind_emb(graph.weight_kind)
             + is_pheno * (self.weight_mlp(fourier_features(graph.weight, self.fourier))
                           + self.min_stage_emb(graph.min_stage))
             + self.stage_to_node(stage_h)[batch])
        h = self.in_norm(h)
        edge_index, edge_type = graph.edge_index, graph.edge_type
        if self.conv_type == "gatv2":
            edge_attr = torch.cat([graph.edge_weight.unsqueeze(-1).to(h.dtype),
                                   F.one_hot(edge_type, len(RELATIONS)).to(h.dtype)], dim=-1)
        elif self.conv_type == "hgt":
            node_idx, edge_dict = self._hetero(node_type, edge_index, edge_type)
        for conv, norm in zip(self.convs, self.norms):
            if self.conv_type == "rgcn":
                out = conv(h, edge_index, edge_type)
            elif self.conv_type == "gatv2":
                out = conv(h, edge_index, edge_attr=edge_attr)
            elif not edge_dict:  # graphs without edges (only healthy profiles): no message to pass, but HGTConv's own
                # output for nodes without messages (its out_lin of GELU(0), mixed with the input by its skip), as
                # a healthy node reads beside a disease's graph in a mixed batch: zeros made its tokens depend on
                # whether a batch held only healthy profiles
                out = self._hgt_without_messages(conv, h, node_idx)
            else:
                out_dict = conv({k: h[i] for k, i in node_idx.items()}, edge_dict)
                out = torch.zeros_like(h)
                for k, i in node_idx.items():
                    if out_dict.get(k) is not None:
                        out = out.index_copy(0, i, out_dict[k])
            h = norm(h + self.dropout(F.gelu(out)))
        return h

    @staticmethod
    def _hgt_without_messages(conv, h: Tensor, node_idx: dict) -> Tensor:
        """What HGTConv returns for nodes that receive no message (torch_geometric's hgt_conv: out_lin(GELU(0)),
        then alpha * that + (1 - alpha) * x for node types some edge type points to; the others get nothing)."""
        types = [k for k in node_idx if k in conv.dst_node_types]
        a_dict = conv.out_lin({k: F.gelu(h.new_zeros(len(node_idx[k]), conv.out_channels)) for k in types})
        out = torch.zeros_like(h)
        for k in types:
            x, a = h[node_idx[k]], a_dict[k]
            if a.size(-1) == x.size(-1):
                alpha = conv.skip[k].sigmoid()
                a = alpha * a + (1 - alpha) * x
            out = out.index_copy(0, node_idx[k], a)
        return out

    def forward(self, graph, stage: Tensor | float | None = None, age: Tensor | None = None) -> Tensor:
        """graph: a torch_geometric Batch from ProfileGraphBuilder.batch (or one Data); stage: [B] floats in
        [0, stage_max], NaN = unknown (None = 0); age: [B] age-group indices, -1 = unknown (None = all unknown)."""
        batch = getattr(graph, "batch", None)
        if batch is None:  # one Data
            batch = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.x.device)
        batch_size = int(graph.num_graphs) if hasattr(graph, "num_graphs") else 1
        stage_h = self._stage_embedding(stage, batch_size, graph.x.device)
        h = self.encode_nodes(graph, stage_h, batch)

        context = self.stage_to_token(stage_h).unsqueeze(1)
        age_h = self._age_embedding(age, batch_size, graph.x.device)
        if age_h is not None:
            context = context + age_h.unsqueeze(1)
        if self.token_mode == "pooled":
            order = torch.argsort(batch, stable=True)  # to_dense_batch needs graphs contiguous
            dense, mask = to_dense_batch(h[order], batch[order], batch_size=batch_size)
            queries = self.queries.unsqueeze(0).expand(batch_size, -1, -1)
            pooled, _ = self.pool(queries, dense, dense, key_padding_mask=~mask, need_weights=False)
            tokens = self.pool_norm(queries + pooled) + context
        else:
            tokens = self._phenotype_tokens(graph, h, batch, batch_size, context)
        tokens = tokens + self.token_ff(tokens)
        tokens = self.out_norm(tokens)
        if self.token_center is not None:
            b = tokens.shape[0]
            flat = tokens.reshape(b, -1)
            bn = self.token_center
            # one graph cannot give batch statistics: use the running ones (as in eval mode)
            use_batch = self.training and b > 1
            flat = F.batch_norm(flat, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch, bn.momentum,
                                bn.eps)
            tokens = flat.reshape(b, self.num_tokens, -1)
        return self.out_proj(tokens)

    def _phenotype_tokens(self, graph, h: Tensor, batch: Tensor, batch_size: int, context: Tensor) -> Tensor:
        """[B, K, hidden]: the stage token, then each graph's phenotype node states (highest weight first, ties in
        node order), then empty slots. Stage and age enter every filled slot, never an empty one."""
        slots = self.num_tokens - 1
        is_pheno = graph.weight_kind > 0
        idx = is_pheno.nonzero().view(-1)
        idx = idx[torch.argsort(-graph.weight[idx], stable=True)]
        idx = idx[torch.argsort(batch[idx], stable=True)]  # graphs contiguous, weight order kept inside each
        dense, mask = to_dense_batch(h[idx], batch[idx], batch_size=batch_size, max_num_nodes=slots)
        if dense.shape[1] < slots:  # to_dense_batch stops at the largest graph
            pad = slots - dense.shape[1]
            dense = F.pad(dense, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        filled = dense + context
        phen = torch.where(mask.unsqueeze(-1), filled, self.empty_slot.to(h.dtype).expand_as(filled))
        stage_tok = self.stage_slot.to(h.dtype).view(1, 1, -1) + context
        return torch.cat([stage_tok, phen], dim=1)

    def phenotype_overflow(self, graph) -> int:
        """How many phenotype nodes of the batch get no slot (tokens=phenotypes; 0 for pooled tokens)."""
        if self.token_mode != "phenotypes":
            return 0
        batch = getattr(graph, "batch", None)
        if batch is None:
            batch = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.weight_kind.device)
        counts = torch.bincount(batch[graph.weight_kind > 0], minlength=1)
        return int((counts - (self.num_tokens - 1)).clamp(min=0).sum())
