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

    with atomic_folder(folder) as tmp:
        for name, module in modules.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        save_file({"generator": gen.get_state(), "torch": torch.get_rng_state(), "order": order.contiguous(),
                   "losses": torch.tensor(losses, dtype=torch.float64)}, str(tmp / "progress.safetensors"))
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "pos": pos, "seconds": seconds,
                                                    "fingerprint": fingerprint}), encoding="utf-8")


def load_state(folder: Path, fingerprint: str, modules: dict, opt, sched, gen: torch.Generator) -> dict | None:
    """{step, pos, order, losses, seconds} of a saved state for `fingerprint`, its weights, optimizer, schedule and
    random generators loaded; None when there is none or it belongs to another entry; a state that fails to load is
    removed (with a warning), everything it touched is put back as it was, and None is returned."""
    from safetensors.torch import load_file

    meta_file = folder / "state.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if meta and meta.get("fingerprint") != fingerprint:
        return None
    before = ({n: copy.deepcopy(m.state_dict()) for n, m in modules.items()}, copy.deepcopy(opt.state_dict()),
              copy.deepcopy(sched.state_dict()), gen.get_state(), torch.get_rng_state())
    try:
        for name, module in modules.items():
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        progress = load_file(str(folder / "progress.safetensors"))
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        gen.set_state(progress["generator"])
        torch.set_rng_state(progress["torch"])
        return {"step": int(meta["step"]), "pos": int(meta["pos"]), "seconds": float(meta.get("seconds", 0.0)),
                "order": progress["order"], "losses": progress["losses"].tolist()}
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
