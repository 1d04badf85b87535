"""The training loop: one loop for every model scale and conditioning mode (read top to bottom).

Noise or velocity prediction on VAE latents (DDPM schedule; the scheduler's prediction_type: epsilon, or v for a
zero-terminal-SNR schedule), optional Min-SNR weighting, classifier-free
guidance dropout of the KG/class tokens and/or the text, AdamW with warm-up + cosine decay, gradient accumulation
and mixed precision through accelerate, an EMA of the trainable weights, checkpoints every N steps and exact resume.

Exact resume: every random draw of step n (batch indices, noise, timesteps, CFG dropout) comes from a generator
seeded by (seed, n), and torch's global generators (the encoder's dropout) are seeded from (seed, n) too, so a run
killed after checkpoint k and resumed replays steps k+1.. exactly; a checkpoint holds the trainable weights, the EMA
and the optimizer/scheduler state (safetensors + `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..cache import atomic_folder
from ..errors import UserError
from .sampling import PREDICTIONS

TRAINER_DEFAULTS = {
    "steps": 1500, "batch_size": 16, "lr": 3e-4, "adapter_lr": None, "encoder_lr": 3e-4, "weight_decay": 1e-2,
    "warmup_steps": 100, "grad_accum": 1, "mixed_precision": "no", "max_grad_norm": 1.0, "ema_decay": 0.999,
    "ema": True, "min_snr_gamma": 5.0, "cfg_drop_tokens": 0.1, "cfg_drop_text": 0.0, "cfg_drop_both": 0.05,
    "checkpoint_every": 500, "keep_checkpoints": 2, "resume": None, "log_every": 25, "val_every": 0,
    "seed": 0, "num_threads": 0, "mark_weight": 0.0, "age_drop": 0.1,
}


class TrainingError(UserError):
    pass


# trainer.resume=null beside this run's checkpoints is refused (resume_checkpoint): a fresh start goes elsewhere
AFRESH = "start afresh in another hydra.run.dir (or move its checkpoints/ folder away)"


@dataclass
class LatentSet:
    """The training set as tensors: latents [N, C, h, w] (scaled), class index, stage (-1 unknown), severity (NaN
    unknown), age (-1 unknown);
    `weights` (optional, [N]): rows are drawn with these probabilities instead of uniformly (e.g. a fixed share of
    phenotype-atlas faces in every batch); `marks` (optional, [N, 1, h, w] in [0, 1]): where each face's disease
    marks are on the latent grid (trainer.mark_weight)."""
    latents: torch.Tensor
    index: torch.Tensor
    stage: torch.Tensor
    severity: torch.Tensor
    age: torch.Tensor
    weights: torch.Tensor | None = None
    marks: torch.Tensor | None = None

    def __len__(self):
        return len(self.latents)


class EMA:
    """Exponential moving average of a list of parameters (warm-up as in diffusers' EMAModel)."""

    def __init__(self, params, decay: float):
        self.params, self.decay, self.steps = list(params), decay, 0
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def step(self):
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the parameters for the block, the raw ones put back exactly after it."""
        raw = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)


def _named(params) -> dict[str, torch.Tensor]:
    return {f"p{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(params)}


def noise_schedule_record(noise_scheduler) -> dict:
    """What a checkpoint must share with the run resuming it: the training target and the noise levels. The sampling
    ladder (timestep_spacing) is left out: it changes no training step, and the run saves the new one at its end."""
    c = noise_scheduler.config
    return {"prediction_type": str(c.prediction_type),
            "zero_terminal_snr": bool(c.get("rescale_betas_zero_snr", False)),
            "num_train_timesteps": int(c.num_train_timesteps), "beta_schedule": str(c.beta_schedule)}


# the record's keys as model.schedule names them, for the error that refuses a mismatched resume
_SCHEDULE_KEYS = {"prediction_type": "model.schedule.prediction_type",
                  "zero_terminal_snr": "model.schedule.zero_terminal_snr"}


def save_checkpoint(folder: Path, step: int, params, ema: EMA | None, optimizer, scheduler, losses,
                    buffers: dict[str, torch.Tensor] | None, schedule: dict, setup: dict | None = None,
                    names: list[str] | None = None) -> Path:
    """setup: what the run trained on (kgface.train's `training_setup`: a hash per config group), compared by a
    later run that resumes this checkpoint; names: the parameters' names, in the order the tensors are saved."""
    with atomic_folder(folder) as tmp:  # a run killed mid-save keeps its last complete checkpoint
        save_file(_named(params), str(tmp / "trainable.safetensors"))
        if buffers:  # running statistics (the KG encoder's token centering): not parameters, but state all the same
            save_file({k: v.detach().cpu().contiguous() for k, v in buffers.items()},
                      str(tmp / "buffers.safetensors"))
        if ema is not None:
            save_file(_named(ema.shadow), str(tmp / "ema.safetensors"))
        scaler = getattr(optimizer, "scaler", None)  # accelerate's fp16 loss scale: not in the optimizer's state
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {})}, tmp / "optimizer.pt")
        state = {"step": step, "ema_steps": ema.steps if ema else 0, "losses": losses, "schedule": schedule,
                 **({"setup": setup} if setup else {}), **({"names": list(names)} if names else {})}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    return folder


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def _check_same_setup(folder: Path, saved: dict | None, current: dict | None) -> None:
    """A checkpoint continues only the training it was part of: the same conditioning, seed, data, knowledge graph,
    encoder, model, profile source, what the trainer feeds, what each step minimises and the sentences of text prompts
    (the rest of trainer.* may change: steps, rates). Only groups both records hold are compared (a group added since
    is not). A checkpoint without the record (before 2026-12-07, or trained outside kgface.train) resumes unchecked."""
    if not saved or not current:
        return
    if saved.get("version") != current.get("version"):  # hashed another way: a difference would not be the user's
        logging.getLogger(__name__).warning(
            "%s: its checkpoint's training record is from another kgface version; resuming without comparing the "
            "settings (resume with the ones it trained with)", folder)
        return
    changed = [k for k in current if k in saved and saved[k] != current[k] and k != "version"]
    if changed:
        names = {"trainer": "trainer.observed_phenotypes / atlas_share / mark_weight",
                 "objective": "trainer.cfg_drop_tokens / cfg_drop_text / cfg_drop_both / age_drop / min_snr_gamma",
                 "descriptions": "descriptions.json's sentences (llm.*)",
                 "model_weights": "the weights of model.pretrained / model.text_model (another file of the same size)",
                 "encoder_weights": "the weights of encoder.text_model (another file of the same size)"}
        keys = ", ".join(names.get(k, k if k in ("conditioning", "seed") else f"{k}.*") for k in changed)
        raise TrainingError(f"{folder} was trained under other settings ({keys} differ from this run's); resuming "
                            "would continue those weights under this config.yaml: resume with the settings it "
                            "trained with, or start afresh in another hydra.run.dir")


def resume_checkpoint(run_dir: Path, t) -> Path | None:
    """The checkpoint a generator trained into run_dir resumes from under trainer settings `t` (None: it starts at
    step 0), or a TrainingError. Pure reading: the train job calls it for every generator folder before it resets
    anything, so a rerun that cannot train fails before it has removed the last run's outputs."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    folder = None
    if t.get("resume"):
        folder = latest_checkpoint(ckpt_dir) if t["resume"] == "latest" else Path(t["resume"])
        if folder is None and t["resume"] == "latest":
            pass  # nothing to resume: start at step 0
        elif folder is None or not (folder / "state.json").is_file():
            raise TrainingError(f"trainer.resume={t['resume']}: no checkpoint there; use latest or a step-* folder")
        else:
            # this folder's later checkpoints, or, resuming from another folder, any of them: another run's, which
            # retention would keep beside this run's and a later resume=latest would continue
            here = folder.resolve().parent == ckpt_dir.resolve()
            later = [p.name for p in ckpt_dir.glob("step-*")
                     if (p / "state.json").is_file() and (not here or p.name > folder.name)]
            try:
                state = json.loads((folder / "state.json").read_text())
                saved = int(state["step"])
            except (OSError, ValueError, KeyError, TypeError) as e:  # a checkpoint killed or edited mid-write
                raise TrainingError(f"{folder / 'state.json'}: unreadable ({type(e).__name__}); resume from another "
                                    "checkpoint (trainer.resume=PATH) or delete this one") from None
            if saved > int(t["steps"]):  # an empty loop would save that run's weights under this config
                raise TrainingError(f"trainer.resume={t['resume']}: {folder.name} is past trainer.steps="
                                    f"{int(t['steps'])}; resume with trainer.steps >= {saved}, or start afresh in "
                                    "another hydra.run.dir")
            if later:
                # a kill before this run overwrote them would resume from an abandoned run's step under this config
                which = "later checkpoints" if here else "checkpoints"
                raise TrainingError(f"trainer.resume={t['resume']}: {ckpt_dir} also holds {which} "
                                    f"{sorted(later)} of an earlier run; move or delete them first")
            _check_same_setup(folder, state.get("setup"), t.get("setup"))
    if folder is None and t.get("checkpoint_every") and sorted(ckpt_dir.glob("step-*")):
        # an earlier run's checkpoints beside a fresh one: the retention below would delete this run's newest, and
        # a later resume=latest would continue the old run under this config
        old = sorted(p.name for p in ckpt_dir.glob("step-*"))
        if t.get("resume") == "latest":  # only folders without state.json (killed mid-write, copied in part)
            raise TrainingError(f"{ckpt_dir} holds {', '.join(old)} but none has its state.json (a checkpoint "
                                "killed mid-write or copied in part): nothing to resume; delete them to start afresh")
        raise TrainingError(f"{ckpt_dir} holds checkpoints of an earlier run ({old[-1]}); trainer.resume=latest "
                            "continues it, or move the folder away (or use another hydra.run.dir) to start afresh")
    return folder


def restore_ema(folder: Path, ema: EMA, steps: int, params) -> None:
    """The checkpoint's EMA shadow, or (a run saved with trainer.ema off) the resumed weights: the average then starts
    there, not at the fresh weights the EMA was built from."""
    with torch.no_grad():
        if (folder / "ema.safetensors").is_file():
            shadow = load_file(str(folder / "ema.safetensors"))
            for i, s in enumerate(ema.shadow):
                s.copy_(shadow[f"p{i:05d}"])
            ema.steps = steps
            return
        for s, p in zip(ema.shadow, params):
            s.copy_(p)
    logging.getLogger(__name__).warning(f"{folder}: no ema.safetensors (trainer.ema was off); the EMA starts from "
                                        "the resumed weights")


def load_checkpoint(folder: Path, params, ema: EMA | None, optimizer, scheduler,
                    buffers: dict[str, torch.Tensor] | None = None, schedule: dict | None = None,
                    names: list[str] | None = None) -> tuple[int, list]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    _check_same_schedule(folder, state.get("schedule"), schedule)
    weights = load_file(str(folder / "trainable.safetensors"))
    if len(weights) != len(params):
        raise TrainingError(f"{folder}: holds {len(weights)} trainable tensors, this run has {len(params)}; "
                            "was it made with another config, or by an older kgface (e.g. before the encoder's "
                            f"unknown_stage)? Resume it with that config, or {AFRESH}")
    saved_names = state.get("names")  # absent in checkpoints written before 2026-12-07's third session
    if names and saved_names and list(saved_names) != list(names):
        i = next((i for i, (a, b) in enumerate(zip(saved_names, names)) if a != b), min(len(saved_names), len(names)))
        there, here = (saved_names[i] if i < len(saved_names) else "-"), (names[i] if i < len(names) else "-")
        raise TrainingError(f"{folder}: trainable tensor {i} is {there} there and {here} in this run: made with "
                            f"another config or kgface version; {AFRESH}")
    bad = next((i for i, p in enumerate(params) if tuple(weights[f"p{i:05d}"].shape) != tuple(p.shape)), None)
    if bad is not None:  # a changed width (model.lora_rank, model.num_tokens, encoder.hidden): one line, no traceback
        raise TrainingError(f"{folder}: trainable tensor {bad} has shape {tuple(weights[f'p{bad:05d}'].shape)}, this "
                            f"run's has {tuple(params[bad].shape)}: made with another config; {AFRESH}")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(weights[f"p{i:05d}"])
        if buffers:
            saved = load_file(str(folder / "buffers.safetensors")) if (folder / "buffers.safetensors").is_file() else {}
            missing = [name for name in buffers if name not in saved]
            if missing:  # the token-centring statistics restart at mean 0 / variance 1: said, not silent
                logging.getLogger(__name__).warning(
                    "%s: no saved %s (a checkpoint from before they were kept); they restart from their initial "
                    "values", folder, ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
            for name, b in buffers.items():
                if name in saved:
                    b.copy_(saved[name])
        if ema is not None:
            restore_ema(folder, ema, state["ema_steps"], params)
    opt = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")  # GPU-saved resumes on a CPU
    configured = [float(g["initial_lr"]) for g in optimizer.param_groups]  # this run's rates (LambdaLR's bases)
    # ... and its other settings: load_state_dict brings back the checkpoint's weight decay, betas and eps too,
    # so trainer.weight_decay=0 on resume went on at the old decay in silence
    settings = [{k: g[k] for k in ("weight_decay", "betas", "eps") if k in g} for g in optimizer.param_groups]
    try:  # moments and step counts come back from the checkpoint; the rates too, unless this run names others
        optimizer.load_state_dict(opt["optimizer"])
    except ValueError as exc:  # e.g. a checkpoint from before the adapter had its own parameter group
        raise TrainingError(f"{folder}: its optimizer state does not fit this run ({exc}); {AFRESH}") from None
    for group, own in zip(optimizer.param_groups, settings):
        changed = {k: (group[k], v) for k, v in own.items() if group[k] != v}
        if changed:
            logging.getLogger(__name__).warning(
                "%s: trained with %s; continuing with this run's", folder,
                ", ".join(f"{k}={old}" for k, (old, _) in changed.items()))
        group.update(own)
    scheduler.load_state_dict(opt["scheduler"])
    if getattr(optimizer, "scaler", None) is not None and "scaler" in opt:  # an fp16 run resumes at its loss scale
        optimizer.scaler.load_state_dict(opt["scaler"])
    saved = [float(b) for b in scheduler.base_lrs]
    if saved != configured:  # e.g. resumed after a NaN with a lower trainer.lr: the config's rates, same schedule
        logging.getLogger(__name__).warning(f"{folder}: trained at learning rates {saved}; continuing at this "
                                            f"run's {configured} (trainer.lr / adapter_lr / encoder_lr)")
        scheduler.base_lrs = configured
    # the rate of the step it resumes at, on this run's schedule: the optimizer state brought the old schedule's
    # (a finished 6,000-step run resumed with trainer.steps=12000 took its first step at the old end's rate 0)
    for group, base, factor in zip(optimizer.param_groups, configured, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return int(state["step"]), list(state.get("losses", []))


def _check_same_schedule(folder: Path, saved: dict | None, current: dict | None) -> None:
    """A checkpoint trained for one target or noise ladder, continued under another, would mix two objectives
    without a word. A checkpoint from before the record (kgface before 2026-12-06) is not checked: most trained
    epsilon, but v runs existed for a few hours before it, and guessing wrong would advise the wrong objective."""
    if current is None:
        return
    if saved is None:
        logging.getLogger(__name__).warning(f"{folder}: the checkpoint does not record its noise schedule (an older "
                                            "kgface); resuming without checking it against model.schedule")
        return
    differ = [k for k, v in current.items() if k in saved and saved[k] != v]
    if differ:
        trained = ", ".join(f"{k}={saved[k]!r}" for k in differ)
        now = ", ".join(f"{current[k]!r}" for k in differ)
        settable = [f"{_SCHEDULE_KEYS[k]}={str(saved[k]).lower()}" for k in differ if k in _SCHEDULE_KEYS]
        fix = f"set {' '.join(settable)}" if len(settable) == len(differ) else \
            "resume it with the model it was trained with"
        raise TrainingError(f"{folder}: trained with {trained}, this run has {now}; {fix}, or {AFRESH}")


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def guidance_dropout(u: torch.Tensor, drop_tokens: float, drop_text: float, drop_both: float,
                     has_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples train an unconditional branch, from one uniform draw u per sample: (tokens dropped, text
    dropped). u < both drops both, the next `drop_tokens` the tokens alone, the top `drop_text` the text alone.
    Without tokens (conditioning=text) the tokens' share drops the text, the run's only condition: its
    unconditional branch then trains as often as a KG run's null tokens (both + tokens), so guidance compares
    the two conditionings on an equal footing."""
    both = u < drop_both
    tok = both | ((u >= drop_both) & (u < drop_both + drop_tokens))
    txt = both | (u >= 1 - drop_text)
    if not has_tokens:
        txt = txt | tok
    return tok, txt


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023). Epsilon: min(SNR, gamma) / SNR, i.e. the clean-latent error
    weighted by min(SNR, gamma). v: min(SNR + 1, gamma) / (SNR + 1), the clean-latent error weighted by
    min(SNR + 1, gamma): the same cap on the nearly clean steps, but weight >= 1 (not ~0) at the pure-noise end,
    where a zero-terminal-SNR sampler starts (the paper's min(SNR, gamma) / (SNR + 1) is 0 at SNR = 0)."""
    a = alphas_cumprod[timesteps]
    if prediction == "v_prediction":
        snr1 = 1 / (1 - a).clamp(min=1e-12)  # SNR + 1
        return torch.clamp(snr1, max=gamma) / snr1
    snr = a / (1 - a)
    return torch.clamp(snr, max=gamma) / snr


def train(backbone, conditioner, data: LatentSet, cfg: dict, run_dir: Path, progress: bool = True,
          on_validate=None, stop_after: int | None = None) -> dict:
    """Train `backbone.trainable` + the conditioner's parameters; returns {"losses": [...], "steps": n, ...}.

    stop_after: stop (as if killed) after this many steps of this call, for resume tests."""
    from accelerate import Accelerator
    from tqdm import tqdm

    t = {**TRAINER_DEFAULTS, **cfg}
    if t["num_threads"]:
        torch.set_num_threads(int(t["num_threads"]))
    if len(data) < 1:
        raise TrainingError("no training images: check data.heldout and the dataset's train split")
    mark_weight = float(t["mark_weight"] or 0.0)
    if not (math.isfinite(mark_weight) and mark_weight >= 0):
        raise TrainingError(f"trainer.mark_weight={mark_weight}: use a weight >= 0 (0 = the plain loss)")
    if mark_weight and data.marks is None:
        raise TrainingError("trainer.mark_weight > 0 but the training set has no mark maps (latent_set(marks=True))")
    if int(t["keep_checkpoints"]) < 0:
        raise TrainingError(f"trainer.keep_checkpoints={t['keep_checkpoints']}: use the number of recent "
                            "checkpoints to keep (0 keeps all)")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    # One process may train several models (baselines, tests) with different precisions; accelerate keeps a
    # process-wide singleton that refuses a second mixed_precision, so each run starts from a fresh state.
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(gradient_accumulation_steps=int(t["grad_accum"]), mixed_precision=t["mixed_precision"],
                      log_with="tensorboard", project_dir=str(run_dir / "logs"))
    if acc.num_processes > 1:
        # the loop draws the same batches on every rank, calls the conditioner's own methods (a DDP wrapper has
        # none) and writes checkpoints from every rank: say so rather than train wrong
        raise TrainingError(f"{acc.num_processes} processes: kgface trains on one device per run for now; launch "
                            "one process (python -m kgface.train or accelerate launch --num_processes 1)")
    acc.init_trackers("train")
    unet, device = backbone.unet, acc.device
    params = list(backbone.trainable) + conditioner.trainable_parameters()
    # checkpoints hold the tensors by position: their names go beside them, so a resume whose parameters come in
    # another order (another config or kgface version, equal shapes) is refused instead of loading them crosswise
    known = {id(p): f"unet.{n}" for n, p in unet.named_parameters()}
    for n, p in conditioner.named_parameters():
        known.setdefault(id(p), f"conditioner.{n}")
    names = [known.get(id(p), f"param{i}") for i, p in enumerate(params)]
    # the adapter's value projections start at zero and grow only as fast as the optimizer moves them: a separate
    # learning rate lets the condition take hold early without speeding up (and destabilising) the whole UNet
    from .adapter import adapter_parameters
    adapter_ids = {id(p) for p in adapter_parameters(backbone.unet).values()}
    base = [p for p in backbone.trainable if id(p) not in adapter_ids]
    own = [p for p in backbone.trainable if id(p) in adapter_ids]
    adapter_lr = float(t["lr"] if t.get("adapter_lr") is None else t["adapter_lr"])
    groups = [g for g in ({"params": base, "lr": float(t["lr"])}, {"params": own, "lr": adapter_lr}) if g["params"]]
    if conditioner.trainable_parameters():
        groups.append({"params": conditioner.trainable_parameters(), "lr": float(t["encoder_lr"])})
    # a group at rate 0 is frozen (run_checks): its gradients stay out of the clip's norm, or the moving groups'
    # clip factor would follow the frozen UNet's gradients (trainer.lr=0 with an adapter_lr: "the adapter alone")
    clipped = [p for g in groups if g["lr"] > 0 for p in g["params"]]
    if not clipped:  # preflight refuses the configs that get here; a run built in code may not have had it
        raise TrainingError(f"conditioning={conditioner.mode}: nothing to train (no trainable weights at a rate > 0; "
                            "check model.lora_rank and trainer.lr / adapter_lr / encoder_lr)")
    optimizer = torch.optim.AdamW(groups, weight_decay=float(t["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(t["warmup_steps"]), int(t["steps"])))
    unet, conditioner, optimizer = acc.prepare(unet, conditioner, optimizer)
    backbone.vae.to(device)
    ema = EMA(params, float(t["ema_decay"])) if t["ema"] else None
    buffers = dict(conditioner.named_buffers())
    start, losses = 0, []
    schedule_record = noise_schedule_record(backbone.scheduler)  # checked on resume, written with every checkpoint
    folder = resume_checkpoint(run_dir, t)
    if folder is not None:
        start, losses = load_checkpoint(folder, params, ema, optimizer, scheduler, buffers, schedule_record, names)
    alphas = backbone.scheduler.alphas_cumprod.to(device)
    n_train = backbone.scheduler.config.num_train_timesteps
    prediction = backbone.scheduler.config.prediction_type
    if prediction not in PREDICTIONS:
        raise TrainingError(f"the noise scheduler's prediction_type={prediction!r}: kgface trains epsilon or "
                            "v_prediction")
    null_states, null_added = conditioner.null_states(1)
    bar = tqdm(range(start, int(t["steps"])), desc=f"training ({conditioner.mode})", disable=not progress,
               initial=start, total=int(t["steps"]))
    unet.train()
    conditioner.train()
    tic, done = time.perf_counter(), 0
    # dropout (encoder.dropout > 0) draws from torch's global generators, not from `g`: seeded per step as well (on
    # another stream), so a resumed run replays it too; forked, so what follows the loop draws as before
    rng_devices = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        for step in bar:
            step_seed = int(t["seed"]) * 1_000_003 + step
            g = torch.Generator().manual_seed(step_seed)
            torch.manual_seed(step_seed ^ 0x5DEECE66D)
            micro = []
            for _ in range(int(t["grad_accum"])):
                with acc.accumulate(unet):
                    if data.weights is None:
                        idx = torch.randint(0, len(data), (int(t["batch_size"]),), generator=g)
                    else:
                        idx = torch.multinomial(data.weights, int(t["batch_size"]), replacement=True, generator=g)
                    x0 = data.latents[idx].to(device)
                    noise = torch.randn(x0.shape, generator=g).to(device)
                    ts = torch.randint(0, n_train, (len(idx),), generator=g).to(device)
                    drop_tok, drop_txt = guidance_dropout(torch.rand(len(idx), generator=g),
                                                          float(t["cfg_drop_tokens"]), float(t["cfg_drop_text"]),
                                                          float(t["cfg_drop_both"]), has_tokens=conditioner.uses_tokens)
                    cls = data.index[idx]
                    states, added = backbone.text_states(conditioner.prompts(cls, data.stage[idx]))
                    if drop_txt.any():
                        states = torch.where(drop_txt.view(-1, 1, 1), null_states.expand_as(states), states)
                        added = {k: torch.where(drop_txt.view(-1, *[1] * (v.ndim - 1)), null_added[k].expand_as(v), v)
                                 for k, v in added.items()}
                    kw = {k: v.to(device) for k, v in added.items()}  # SDXL's text_embeds / time_ids, built on the CPU
                    if conditioner.uses_tokens:
                        age = None
                        if conditioner.uses_kg and getattr(conditioner.encoder, "age_groups", 0):
                            # every sample drawn without age= asks for the unknown age (-1): it must be trained too
                            age = torch.where(torch.rand(len(idx), generator=g) < float(t["age_drop"]), -1,
                                              data.age[idx])
                        tokens = conditioner.tokens(cls, data.severity[idx].to(device),
                                                    None if age is None else age.to(device))
                        tokens = torch.where(drop_tok.view(-1, 1, 1).to(device), conditioner.null(len(idx)), tokens)
                        kw["image_embeds"] = [tokens]
                    with acc.autocast():
                        pred = unet(backbone.scheduler.add_noise(x0, noise, ts), ts,
                                    encoder_hidden_states=states.to(device), added_cond_kwargs=kw or None).sample
                    target = noise if prediction == "epsilon" else backbone.scheduler.get_velocity(x0, noise, ts)
                    err = F.mse_loss(pred.float(), target.float(), reduction="none")
                    if mark_weight:  # the same total weight per face, moved onto its marks (latent cells they cover)
                        w = 1.0 + mark_weight * data.marks[idx].to(device)
                        per = (err * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))
                    else:
                        per = err.mean(dim=(1, 2, 3))
                    if t["min_snr_gamma"]:
                        per = per * min_snr_weights(alphas, ts, float(t["min_snr_gamma"]), prediction)
                    loss = per.mean()
                    if not torch.isfinite(loss):
                        last = latest_checkpoint(ckpt_dir)
                        raise TrainingError(f"the loss became {loss.item()} at step {step}; training stopped. Last "
                                            f"good checkpoint: {last or 'none'} (lower trainer.lr, or check the data)")
                    acc.backward(loss)
                    if acc.sync_gradients and t["max_grad_norm"]:
                        acc.clip_grad_norm_(clipped, float(t["max_grad_norm"]))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    micro.append(loss.item())
            # fp16: a step whose gradients overflowed was skipped by the loss scaler; the schedule and the average wait
            # for the next real update (as accelerate's wrapped scheduler does), or the first few calibration steps
            # would shift the warm-up and pull the EMA towards weights that did not move
            if not acc.optimizer_step_was_skipped:
                scheduler.step()
                if ema is not None:
                    ema.step()
            losses.append(sum(micro) / len(micro))
            done += 1
            if step % int(t["log_every"]) == 0 or step + 1 == int(t["steps"]):
                recent = losses[-int(t["log_every"]):]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}",
                                it_s=f"{done / (time.perf_counter() - tic):.2f}")
                acc.log({"loss": losses[-1], "lr": scheduler.get_last_lr()[0]}, step=step)
            if t["checkpoint_every"] and (step + 1) % int(t["checkpoint_every"]) == 0:
                save_checkpoint(ckpt_dir / f"step-{step + 1:07d}", step + 1, params, ema, optimizer, scheduler, losses,
                                buffers, schedule_record, t.get("setup"), names)
                keep = int(t["keep_checkpoints"])  # 0 keeps all
                for old in sorted(ckpt_dir.glob("step-*"))[:-keep] if keep else []:
                    shutil.rmtree(old)
            if on_validate is not None and t["val_every"] and (step + 1) % int(t["val_every"]) == 0:
                # drawn with the EMA weights, the ones the run saves (raw ones can look quite different early on),
                # then the raw weights go back exactly
                with ema.swapped() if ema is not None else contextlib.nullcontext():
                    on_validate(step + 1)
            if stop_after is not None and done >= stop_after:
                break
    seconds = time.perf_counter() - tic  # the loop's own time: the teardown below is not a training step's
    acc.end_training()
    # mixed precision wrapped their forward in autocast: unwrap, so the run's own samples are drawn through
    # sampling.unet_eps exactly as kgface.generate draws them from the saved run (full precision over an fp32 base,
    # autocast over a half one; a no-op without mixed precision)
    for module in (unet, conditioner):
        if "_original_forward" in module.__dict__:  # only accelerate's layer (unwrap_model would peel diffusers' too)
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_original_forward", None)
    unet.eval()
    conditioner.eval()
    return {"losses": losses, "steps": start + done, "ema": ema,
            "seconds": seconds, "steps_this_call": done}
