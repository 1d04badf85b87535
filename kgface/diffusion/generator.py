"""Sampling from a trained backbone + conditioner: batched requests, shared noise, unseen diseases.

A request is (profile, severity, seed[, age]). Each request's start noise comes from its own seed, so the same seed
gives the same image whatever else is in the batch, and the same seed across severities gives a progression of one
face. Profiles not seen in training (held-out or composed diseases) go through the KG encoder's graph builder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..kg import FacialProfile
from .sampling import cfg_model, ddim_invert, ddim_sample, ddim_timesteps, noise_to

log = logging.getLogger(__name__)


# eta's per-request stream: seed + this, apart from every start seed (kgface.generate takes seeds in [0, 2^62);
# the offset was 2^40 before 2026-12-07, so seed 2^40's start noise was seed 0's step noise)
STEP_NOISE_OFFSET = 1 << 62


@dataclass
class Request:
    profile: FacialProfile
    severity: float
    seed: int
    age: int = -1


START_SIGNAL = 0.1  # sqrt(alpha_bar) of the ladder's top above which pure noise is far off what that step expects
EPS_FLOOR = 1e-3    # ... below which an epsilon model's clean estimate (divided by it) is noise amplified 1,000x


def ladder_note(scheduler, steps: int, spacing: str) -> str | None:
    """Why this ladder samples badly (a warning), or None. Leading spacing with steps that do not divide the
    schedule starts far below its top (400 of 1,000 start at t = 798, where a third of the latent is image, yet
    the sampler starts from pure noise); an epsilon model asked to start at the pure-noise end divides by ~0."""
    ts = ddim_timesteps(scheduler.config.num_train_timesteps, steps, 1.0, spacing=spacing,
                        offset=scheduler.config.get("steps_offset", 0))
    signal = float(scheduler.alphas_cumprod[int(ts[0])].sqrt())
    if signal > START_SIGNAL:
        n = scheduler.config.num_train_timesteps
        divide = f"steps that divide {n} (20, 25, 50), " if n % steps else ""
        return (f"{steps} DDIM steps spaced '{spacing}' start at t={int(ts[0])}, where a latent keeps "
                f"{signal:.2f} of its image, yet sampling starts from pure noise: use {divide}more steps or "
                "spacing=trailing")
    if signal < EPS_FLOOR and scheduler.config.prediction_type == "epsilon":
        return (f"spacing '{spacing}' starts at t={int(ts[0])}, where sqrt(alpha_bar) is {signal:.1e}: an epsilon "
                "model's clean estimate divides by it (the measured 'even:999' failure); use spacing=leading, or a "
                "v-prediction run")
    return None


class Generator:
    def __init__(self, backbone, conditioner, guidance: float = 3.0, steps: int = 30, null_text: str = "empty",
                 spacing: str | None = None, eta: float = 0.0):
        """null_text: the prompt of guidance's unconditional branch. "empty" (diffusers' rule): the empty prompt with
        null tokens, trained in `cfg_drop_both` of the steps. "prompt": the request's own prompt with null tokens
        (trained in `cfg_drop_tokens`), so guidance pushes along the KG tokens alone; needs tokens (text mode would
        have no direction left). spacing: the DDIM ladder (sampling.SPACINGS); None = the run's scheduler's.
        eta: fresh noise per step (0 = deterministic DDIM); each request's comes from its own seed, like its start."""
        if null_text not in ("empty", "prompt"):
            raise ValueError(f"null_text must be 'empty' or 'prompt', not {null_text!r}")
        if null_text == "prompt" and not conditioner.uses_tokens:
            raise ValueError("null_text='prompt' guides along the tokens alone: this run's conditioning has none")
        self.backbone, self.conditioner = backbone, conditioner
        self.guidance, self.steps, self.null_text = float(guidance), int(steps), null_text
        self._spacing = spacing
        self.eta = float(eta)
        self._overflow_said = False  # the phenotype-slot warning, once per generator
        if not self.eta >= 0:
            raise ValueError(f"eta={eta}: eta is a number >= 0 (0 = deterministic DDIM)")
        self._index = {p.disease_id: i for i, p in enumerate(conditioner.profiles)}
        note = ladder_note(backbone.scheduler, self.steps, self.spacing)
        if note:
            log.warning(note)

    @property
    def device(self) -> torch.device:
        """Where the UNet is (a GPU after accelerate's prepare): every input is moved there; noise is still drawn on
        the CPU from each request's seed, so a seed gives the same start on any device."""
        return next(self.backbone.unet.parameters()).device

    @property
    def draws_phenotypes(self) -> bool:
        return self.conditioner.phenotype_draws

    def requested_phenotypes(self, reqs: list[Request]) -> list[list[str]] | None:
        """The HPO ids each request asks for when the generator draws phenotype sets, or when its prompts read the
        run's stage descriptions (an LLM's cite their own phenotypes, not the template's); None otherwise: the samples
        manifest's `requested_phenotypes`, which the evaluator's profile match compares with."""
        if self.draws_phenotypes:
            return [[p.hpo_id for p in prof.phenotypes] for prof in self.request_profiles(reqs)]
        described = self.conditioner.descriptions if self.conditioner.uses_text else None
        if not described:
            return None
        from ..prompts.wording import stage_of, stage_phenotypes

        out = []
        for r in reqs:
            stage, d = stage_of(r.severity), described.get(r.profile.disease_id)
            cited = None if d is None else next((s.phenotypes for s in d.stages if s.stage == stage), None)
            out.append([] if r.profile.healthy else list(cited) if cited is not None
                       else [p.hpo_id for p in stage_phenotypes(r.profile, stage)])  # no description: the template's
        return out

    def request_profiles(self, reqs: list[Request]) -> list:
        """The profiles the condition is built from: as requested, or (a generator trained on observed phenotype
        sets) each request's own draw of phenotypes from its profile."""
        if not self.draws_phenotypes:
            return [r.profile for r in reqs]
        from .phenotype_sets import drawn_profile

        return [drawn_profile(r.profile, r.seed, r.severity, self.conditioner.unknown_frequency) for r in reqs]

    def _tokens(self, reqs: list[Request]) -> torch.Tensor | None:
        c = self.conditioner
        sev = torch.tensor([r.severity for r in reqs], dtype=torch.float32)
        age = torch.tensor([r.age for r in reqs]) if c.uses_kg and getattr(c.encoder, "age_groups", 0) else None
        if c.mode == "class":
            unknown = [r.profile.disease_id for r in reqs if r.profile.disease_id not in self._index]
            if unknown:
                raise ValueError(f"conditioning=class cannot draw diseases it never saw: {sorted(set(unknown))}")
            return c.tokens(torch.tensor([self._index[r.profile.disease_id] for r in reqs]), sev)
        if c.mode == "text":
            return None
        graphs = c.graph_builder.batch(self.request_profiles(reqs))
        lost = c.encoder.phenotype_overflow(graphs)
        if lost and not self._overflow_said:  # said once: a request's lowest-weight ones drop
            self._overflow_said = True
            log.warning("encoder.tokens=phenotypes: %d phenotypes of these requests get no token slot (model."
                        "num_tokens=%d): the lowest-weight ones are left out", lost, c.encoder.num_tokens)
        return c.tokens(None, sev, age, graphs=graphs)

    def prompts(self, reqs: list[Request]) -> list[str]:
        """Each request's text prompt (a text run's whole condition: it names the stage, not the severity)."""
        from ..prompts import training_prompt
        from ..prompts.wording import stage_of

        if not self.conditioner.uses_text:
            return self.conditioner.prompts(torch.zeros(len(reqs), dtype=torch.long), torch.zeros(len(reqs)))
        descriptions = None if self.draws_phenotypes else self.conditioner.descriptions  # a drawn set: named whole
        return [training_prompt(p, stage_of(r.severity), conditioning="text", descriptions=descriptions,
                                every_phenotype=self.draws_phenotypes)
                for p, r in zip(self.request_profiles(reqs), reqs)]

    @property
    def prediction(self) -> str:
        """What the UNet outputs (the run's scheduler): epsilon or v_prediction."""
        return self.backbone.scheduler.config.prediction_type

    @property
    def spacing(self) -> str:
        """The ladder's spacing: as asked, else the run's scheduler's timestep_spacing (runs from before that key
        were leading)."""
        return self._spacing or str(self.backbone.scheduler.config.get("timestep_spacing", "leading"))

    def ladder(self, strength: float = 1.0) -> torch.Tensor:
        """The sampler's descending timesteps: `steps` of them, spaced as `spacing`, truncated to the last
        `strength` share."""
        config = self.backbone.scheduler.config
        return ddim_timesteps(config.num_train_timesteps, self.steps, strength, spacing=self.spacing,
                              offset=config.get("steps_offset", 0))

    def noise(self, reqs: list[Request]) -> torch.Tensor:
        """Each request's start noise, drawn on the CPU from its own seed (the same face whatever the batch)."""
        shape = self.backbone.latent_shape
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(r.seed))) for r in reqs])

    def step_noise(self, reqs: list[Request]):
        """eta's fresh noise, step after step: each request's from a stream of its own (seeded apart from its start
        noise), so a seed gives the same image whatever the batch, as with eta 0."""
        shape = self.backbone.latent_shape
        streams = [torch.Generator().manual_seed(int(r.seed) + STEP_NOISE_OFFSET) for r in reqs]
        return lambda i: torch.stack([torch.randn(shape, generator=g) for g in streams])

    @torch.no_grad()
    def latents(self, reqs: list[Request], init_latents: torch.Tensor | None = None, strength: float = 1.0,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        b = self.backbone
        noise = (self.noise(reqs) if noise is None else noise).to(self.device)
        steps = self.ladder(strength)
        alphas = b.scheduler.alphas_cumprod
        x = noise if init_latents is None else noise_to(init_latents.to(self.device), noise, steps[0], alphas)
        return ddim_sample(cfg_model(b.unet, self.guidance), x, steps, alphas, self.condition(reqs),
                           prediction=self.prediction, eta=self.eta,
                           step_noise=self.step_noise(reqs) if self.eta > 0 else None)

    def condition(self, reqs: list[Request]) -> tuple:
        """The sampler's `cond` tuple: text states, KG tokens and their null (CFG) counterparts, SDXL's added kwargs."""
        b, dev = self.backbone, self.device
        prompts = self.prompts(reqs)
        states, added = b.text_states(prompts)
        null_states, null_added = (states, added) if self.null_text == "prompt" else b.text_states([""] * len(reqs))
        tokens = self._tokens(reqs)
        null_tokens = self.conditioner.null(len(reqs)) if tokens is not None else None
        return (states.to(dev), tokens, null_states.to(dev), null_tokens, {k: v.to(dev) for k, v in added.items()},
                {k: v.to(dev) for k, v in null_added.items()})

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, source_reqs: list[Request], strength: float) -> torch.Tensor:
        """Latents DDIM-inverted under the source condition (no guidance: guidance-1 inversion is the stable one) up
        the `strength` share of the ladder: the start `latents(noise=...)` takes instead of fresh noise."""
        b = self.backbone
        return ddim_invert(cfg_model(b.unet, 1.0), latents.to(self.device), self.ladder(strength),
                           b.scheduler.alphas_cumprod, self.condition(source_reqs), prediction=self.prediction)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 images [B, 3, H, W]."""
        from .vae import to_uint8

        vae = self.backbone.vae
        latents = latents.to(next(vae.parameters()).device)
        return to_uint8(vae.decode(latents / vae.config.scaling_factor).sample).cpu()  # images live on the CPU

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        from .vae import to_model

        vae = self.backbone.vae
        images = images.to(next(vae.parameters()).device)
        return vae.encode(to_model(images)).latent_dist.mean * vae.config.scaling_factor

    def sample(self, reqs: list[Request], batch_size: int = 32, **kw) -> torch.Tensor:
        out = [self.decode(self.latents(reqs[i:i + batch_size], **kw)) for i in range(0, len(reqs), batch_size)]
        return torch.cat(out)
