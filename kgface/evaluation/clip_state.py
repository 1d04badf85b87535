"""A tiny CLIP's training state on disk, so a killed evaluator fit resumes where it stopped (the benchmark's CLIP trains
for ~an hour on 2 cores) and ends with exactly the weights of an uninterrupted run.

The state is a folder beside the cache entry it will become (`.<key>.partial`, as the VAE's): weights, the optimizer
and schedule, the data order and position, the random generators and the losses so far, written whole or not at all.
A state saved for another entry (its `fingerprint`) is ignored; one that does not load is removed and training starts
from step 0 with the model as it was built (nothing half-loaded is kept).
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import torch

from ..cache import atomic_folder

log = logging.getLogger(__name__)

CLIP_CHECKPOINT_EVERY = 1000  # steps; ~2% of the benchmark CLIP's time per save is far less (a few MB)


def save_state(folder: Path, step: int, fingerprint: str, modules: dict, opt, sched, gen: torch.Generator,
               order: torch.Tensor, pos: int, losses: list[float], seconds: float) -> None:
    """Write the training state after `step` steps (atomically: a kill mid-save keeps the previous one)."""
    from safetensors.torch import save_file

    stamp = {"step": str(step), "fingerprint": fingerprint}  # in every file: a state is read whole or refused
    with atomic_folder(folder) as tmp:
        for name, module in modules.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"),
                      metadata=stamp)
        save_file({"generator": gen.get_state(), "torch": torch.get_rng_state(), "order": order.contiguous(),
                   "losses": torch.tensor(losses, dtype=torch.float64)}, str(tmp / "progress.safetensors"),
                  metadata=stamp)
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), **stamp}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "pos": pos, "seconds": seconds,
                                                    "fingerprint": fingerprint}), encoding="utf-8")


def _stamped(path: Path, stamp: dict) -> dict:
    """A safetensors file's tensors, refused unless it was written with this state (another save's file, swapped in
    by a rival run while this one read the folder, must not be mixed in)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}) != stamp:
            raise ValueError(f"{path.name} belongs to another saved state")
        return {k: f.get_tensor(k) for k in f.keys()}


def load_state(folder: Path, fingerprint: str, modules: dict, opt, sched, gen: torch.Generator, n: int,
               steps: int) -> dict | None:
    """{step, pos, order, losses, seconds} of a saved state for `fingerprint` (a fit of `steps` steps over `n`
    images), its weights, optimizer, schedule and random generators loaded; None when there is none or it belongs to
    another entry; a state that fails to load or to add up is removed (with a warning), everything it touched is put
    back as it was, and None is returned."""
    meta_file = folder / "state.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    if meta and meta.get("fingerprint") != fingerprint:
        return None
    before = ({n: copy.deepcopy(m.state_dict()) for n, m in modules.items()}, copy.deepcopy(opt.state_dict()),
              copy.deepcopy(sched.state_dict()), gen.get_state(), torch.get_rng_state())
    try:
        step, pos = int(meta["step"]), int(meta["pos"])
        stamp = {"step": str(step), "fingerprint": fingerprint}
        progress = _stamped(folder / "progress.safetensors", stamp)
        if not (0 < step < steps and 0 <= pos <= n and len(progress["order"]) == n and len(progress["losses"]) == step):
            raise ValueError(f"step {step}, position {pos} and {len(progress['losses'])} losses do not fit a fit of "
                             f"{steps} steps over {n} images")
        for name, module in modules.items():
            module.load_state_dict(_stamped(folder / f"{name}.safetensors", stamp))
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        if {k: saved.get(k) for k in stamp} != stamp:
            raise ValueError("optimizer.pt belongs to another saved state")
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        gen.set_state(progress["generator"])
        torch.set_rng_state(progress["torch"])
        return {"step": step, "pos": pos, "seconds": float(meta.get("seconds", 0.0)), "order": progress["order"],
                "losses": progress["losses"].tolist()}
    except Exception as exc:  # noqa: BLE001 - any failure means: this state cannot be resumed
        log.warning("%s: the evaluator CLIP's saved training state does not load (%s); removed, training from step 0",
                    folder, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        weights, opt_state, sched_state, gen_state, rng_state = before
        for name, module in modules.items():
            module.load_state_dict(weights[name])
        opt.load_state_dict(opt_state)
        sched.load_state_dict(sched_state)
        gen.set_state(gen_state)
        torch.set_rng_state(rng_state)
        shutil.rmtree(folder, ignore_errors=True)
        return None
