"""How a (disease, severity, age) request becomes what the UNet reads, for the conditioning modes.

- `kg` (default): a neutral text prompt (no disease words) + K tokens from the KG encoder over the disease's
  profile graph. An unseen disease works: its tokens come from its phenotypes.
- `text`: the prompt names the disease and its visible phenotypes at the stage (kgface.prompts); no KG tokens.
- `kg_text`: both, as IP-Adapter pairs a prompt with its extra tokens: the `text` prompt through the UNet's own
  cross-attention and the KG tokens through the decoupled adapter (does the KG add anything to a prompt that already
  names the phenotypes?).
- `class`: the neutral prompt + a learned token set per training disease (+ a stage embedding): the seeds'
  class-conditional baseline, which by construction cannot draw a disease it never saw.
- `kg_shuffled` (`CONTROL`, a `baselines` entry, not a mode): `kg` trained and drawn on profiles whose
  disease-phenotype edges are shuffled between diseases (`shuffled_edges`).
The *null* condition (classifier-free guidance) is the encoder's learned null tokens and the empty prompt; it is not
the healthy profile, which is a real condition with its own tokens.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random

import torch
from torch import nn

from ..encoders.gnn import default_unknown_stage, with_unknown_stage
from ..errors import UserError
from ..kg import FacialProfile
from ..prompts import training_prompt
from ..prompts.wording import NEUTRAL_PROMPT

MODES = ("kg", "text", "class", "kg_text")
KG_MODES = ("kg", "kg_text")      # the KG encoder makes the tokens
TEXT_MODES = ("text", "kg_text")  # the prompt names the disease and its phenotypes
CONTROL = "kg_shuffled"  # a baselines entry: KG conditioning trained and drawn on shuffled disease-phenotype edges

log = logging.getLogger(__name__)


class ClassTokens(nn.Module):
    """A learned [K, D] token set per class plus a stage embedding (the class-conditional baseline)."""

    def __init__(self, num_classes: int, num_tokens: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_classes, num_tokens, dim) * 0.02)
        self.stage = nn.Sequential(nn.Linear(8, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.unknown_stage = nn.Parameter(torch.zeros(dim))  # NaN severity: an ungraded photo (as the KG encoder)

    def forward(self, idx: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(4, dtype=torch.float32, device=severity.device) + 1
        ang = torch.nan_to_num(severity.float(), nan=0.0)[:, None] / 3.0 * math.pi * freqs
        stage = self.stage(torch.cat([ang.sin(), ang.cos()], -1))
        return self.tokens[idx] + with_unknown_stage(stage, severity.float(), self.unknown_stage)[:, None, :]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        default_unknown_stage(state_dict, prefix, self.unknown_stage)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def null(self, batch_size: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)


class Conditioner(nn.Module):
    """Turns indices into `profiles` + severities (+ ages) into (text states, added kwargs, tokens or None)."""

    def __init__(self, mode: str, profiles: list[FacialProfile], backbone, encoder: nn.Module | None = None,
                 graph_builder=None, num_tokens: int = 8, full_prompts=(), phenotype_draws: bool = False,
                 descriptions=None, unknown_frequency: float = 0.5):
        """full_prompts: indices of profiles whose text prompts name every phenotype (phenotype-atlas faces and
        observed phenotype sets). phenotype_draws: the generator trained on observed phenotype sets, so a request
        draws its phenotypes from the profile (kgface.diffusion.phenotype_sets; every mode but class), a phenotype
        of unknown KG frequency with `unknown_frequency` (the phantom's data.unknown_frequency, as its faces did).
        descriptions: {disease_id: StageDescriptions} (the run's descriptions.json, from the LLM or llm=none's
        templates): the stage sentences text prompts use; a disease without one gets the template's sentence."""
        super().__init__()
        self.descriptions = descriptions or None
        self.full_prompts = {int(i) for i in full_prompts}
        self.phenotype_draws = bool(phenotype_draws) and mode != "class"
        self.unknown_frequency = float(unknown_frequency)
        if mode not in MODES:
            raise UserError(f"conditioning={mode} is unknown; use one of {', '.join(MODES)}")
        self.mode, self.profiles, self.backbone = mode, list(profiles), backbone
        self.encoder = encoder
        self.graph_builder = graph_builder
        self.class_tokens = ClassTokens(len(profiles), num_tokens, backbone.cross_attention_dim) \
            if mode == "class" else None
        self._graphs = None
        if mode in KG_MODES:
            if encoder is None or graph_builder is None:
                raise UserError(f"conditioning={mode} needs the KG encoder")
            self._graphs = [graph_builder.graph(p) for p in self.profiles]
            lost = sum(encoder.phenotype_overflow(g) for g in self._graphs)
            if lost:  # the lowest-weight phenotypes get no slot: say so rather than drop them silently
                log.warning("encoder.tokens=phenotypes: %d phenotypes of %d profiles get no token slot (model."
                            "num_tokens=%d); raise model.num_tokens to keep them", lost, len(self._graphs),
                            encoder.num_tokens)

    @property
    def uses_tokens(self) -> bool:
        return self.mode != "text"

    @property
    def uses_kg(self) -> bool:
        return self.mode in KG_MODES

    @property
    def uses_text(self) -> bool:
        return self.mode in TEXT_MODES

    def prompts(self, idx: torch.Tensor, stages: torch.Tensor) -> list[str]:
        if not self.uses_text:
            return [NEUTRAL_PROMPT] * len(idx)
        # a face known to show exactly its phenotypes is named by all of them, never by a stage sentence; a stage
        # below 0 is unknown (an ungraded photo): the prompt names the disease without a stage
        return [training_prompt(self.profiles[int(i)], int(s) if int(s) >= 0 else None, conditioning="text",
                                descriptions=None if int(i) in self.full_prompts else self.descriptions,
                                every_phenotype=int(i) in self.full_prompts) for i, s in zip(idx, stages)]

    def tokens(self, idx: torch.Tensor, severity: torch.Tensor, age: torch.Tensor | None = None,
               graphs=None) -> torch.Tensor | None:
        """KG / class tokens [B, K, D]; `graphs` overrides the per-profile graphs (custom or unseen profiles)."""
        if self.mode == "text":
            return None
        # inputs follow the weights (accelerate moves the conditioner to the GPU; graphs and indices are built on
        # the CPU)
        device = next(self.parameters()).device
        severity = severity.to(device)
        if self.mode == "class":
            return self.class_tokens(idx.to(device), severity)
        from torch_geometric.data import Batch

        batch = graphs if graphs is not None else Batch.from_data_list([self._graphs[int(i)] for i in idx])
        return self.encoder(batch.to(device), severity.float(), None if age is None else age.to(device))

    def null(self, batch_size: int) -> torch.Tensor | None:
        if self.mode == "text":
            return None
        return (self.class_tokens if self.mode == "class" else self.encoder).null(batch_size)

    def null_states(self, batch_size: int) -> tuple[torch.Tensor, dict]:
        return self.backbone.text_states([""] * batch_size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.mode in KG_MODES:
            return list(self.encoder.parameters())
        if self.mode == "class":
            return list(self.class_tokens.parameters())
        return []


def shuffled_edges(profiles, seed: int):
    """Control: every disease keeps its id and name but gets another disease's visible phenotypes (a seeded
    derangement over the diseases, held-out ones included). Seen diseases stay learnable (their tokens are still
    distinct); what should collapse is drawing a held-out disease from its phenotypes. With
    trainer.observed_phenotypes the control trains on the images' true phenotype sets, as kg does, and draws each
    request's set from the shuffled profile: then the seen diseases should collapse too, and its profile match
    compares each image with the (shuffled) set it was asked for."""
    sick = [p for p in profiles if not p.healthy]
    if len(sick) < 2:  # no derangement exists: the control would be kg itself
        raise UserError(f"the kg_shuffled control needs at least 2 diseases to swap phenotypes between (the panel "
                        f"has {len(sick)}); drop kg_shuffled from baselines")
    order = list(range(len(sick)))
    rng = random.Random(seed)
    while len(order) > 1 and any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    moved = {p.disease_id: dataclasses.replace(p, phenotypes=list(sick[j].phenotypes)) for p, j in zip(sick, order)}
    return [moved.get(p.disease_id, p) for p in profiles]
