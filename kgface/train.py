"""`python -m kgface.train` — the main job (Hydra overrides; `accelerate launch -m kgface.train ...` on GPUs).

The default run is the embedded benchmark, end to end on a 2-core CPU:
profiles -> descriptions -> phantom data -> VAE (cached) -> latents -> KG encoder + adapter + UNet training ->
samples (diseases x stages, held-out diseases too) -> evaluation (when the evaluator is available) -> report.
Everything lands under the Hydra run directory (layout in docs/training.md); later commands take it as `run=OUT`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .cache import write_json_atomic
from .config import entry
from .errors import UserError
from .runtime import load_knowledge, load_profiles, make_cache

AGE_INDEX = {"child": 0, "adolescent": 1, "adult": 2, "older_adult": 3}


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def build_conditioning(cfg: DictConfig, backbone, profiles, cache, mode: str | None = None):
    """The conditioner for `mode` (default cfg.conditioning) over the training profiles (encoder from cfg.encoder)."""
    from .diffusion.conditioning import Conditioner

    mode = mode or cfg.conditioning
    num_tokens = int(cfg.model.get("num_tokens", 8))
    encoder = builder = None
    if mode == "kg":
        from .encoders import KGEncoder

        enc_cfg = {**_container(cfg.encoder), "num_tokens": num_tokens}
        torch.manual_seed(int(cfg.seed))
        encoder = KGEncoder.from_config(enc_cfg, out_dim=backbone.cross_attention_dim)
        builder = encoder.graph_builder(cache=cache)
    cond = Conditioner(mode, profiles, backbone, encoder, builder, num_tokens=num_tokens)
    if builder is not None:
        builder.warm(profiles)
    return cond


def latent_set(manifest: Path, profiles, backbone, heldout: set[str]):
    """Encode the train split of the generator's diseases (held-out ones excluded) into a LatentSet."""
    import pandas as pd

    from .diffusion.trainer import LatentSet
    from .diffusion.vae import to_model

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    index = {p.disease_id: i for i, p in enumerate(profiles)}
    unknown = sorted(set(df["disease"]) - set(index) - heldout)
    if unknown:
        raise UserError(f"{manifest}: labels {unknown} are not in the disease panel; add them to kg.panel "
                        "or map the dataset's classes to panel ids")
    df = df[(df["split"] == "train") & ~df["disease"].isin(heldout)]
    if df.empty:
        raise UserError(f"{manifest}: no training images for the generator's diseases")
    from PIL import Image
    import numpy as np

    imgs = torch.from_numpy(np.stack([np.asarray(Image.open(manifest.parent / p).convert("RGB"))
                                      for p in df["path"]])).permute(0, 3, 1, 2)
    vae = backbone.vae
    with torch.no_grad():
        lat = torch.cat([vae.encode(to_model(imgs[i:i + 64])).latent_dist.mean for i in range(0, len(imgs), 64)])
    return LatentSet(latents=lat * vae.config.scaling_factor,
                     index=torch.tensor([index[d] for d in df["disease"]]),
                     stage=torch.tensor(df["stage"].astype(int).to_numpy()),
                     severity=torch.tensor(df["severity"].astype(float).to_numpy(), dtype=torch.float32),
                     age=torch.tensor([AGE_INDEX.get(a, -1) for a in df.get("age_group", [""] * len(df))]))


def sample_grid(generator, profiles, stages, per_cell: int, seed: int):
    """Images for every (profile, stage) with shared seeds per column (the same faces across diseases/stages)."""
    from .diffusion.generator import Request

    reqs, rows = [], []
    for p in profiles:
        for k in range(per_cell):
            for j, s in enumerate(stages):
                # healthy has no stages: its cells are other faces (other seeds) instead of repeats
                sd = seed + 1000 + k * len(stages) + j if p.healthy else seed + k
                reqs.append(Request(p, 0.0 if p.healthy else float(s), sd))
                rows.append({"disease": p.disease_id, "stage": 0 if p.healthy else int(s), "seed": sd})
    return generator.sample(reqs), rows


def save_grid(images: torch.Tensor, rows: list[dict], names: dict, path: Path, stages, per_cell: int) -> Path:
    from PIL import Image, ImageDraw

    size = images.shape[-1]
    diseases = list(dict.fromkeys(r["disease"] for r in rows))
    cols = per_cell * len(stages)
    label_w = 170
    sheet = Image.new("RGB", (label_w + cols * (size + 2), 16 + len(diseases) * (size + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for k in range(cols):
        draw.text((label_w + k * (size + 2) + 2, 2), f"stage {list(stages)[k % len(stages)]}", fill="black")
    for r_i, d in enumerate(diseases):
        draw.text((4, 18 + r_i * (size + 2)), f"{d}\n{names.get(d, '')[:26]}", fill="black")
        cells = [i for i, r in enumerate(rows) if r["disease"] == d]
        for c, i in enumerate(cells[:cols]):
            img = Image.fromarray(images[i].permute(1, 2, 0).numpy())
            sheet.paste(img, (label_w + c * (size + 2), 16 + r_i * (size + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .data.build import phantom_dataset
    from .dataset import panel_profiles
    from .prompts import describe_profiles, save_descriptions

    t0 = time.perf_counter()
    if int(cfg.get("num_threads") or 0) > 0:
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    cache = make_cache(cfg)
    timings, metrics = {}, {}

    # 1. knowledge -> profiles (the panel + healthy), descriptions
    profiles = panel_profiles(cfg, cache)
    write_json_atomic(out_dir / "profiles.json", {"schema": "kgface.profiles/1", "kg": cfg.kg.source,
                                                  "profiles": [p.to_dict() for p in profiles]})
    descriptions = describe_profiles(profiles, _container(cfg.llm), cache)
    save_descriptions(out_dir / "descriptions.json", descriptions)
    timings["profiles_s"] = time.perf_counter() - t0

    # 2. data
    if cfg.data.name == "phantom":
        manifest = phantom_dataset(cfg, profiles, cache, progress=cfg.progress) / "manifest.csv"
    else:  # real photos: preprocessed into the run directory (their labels must use the panel's KG ids)
        from .data.real import build_real_dataset

        manifest = build_real_dataset(cfg.data, out_dir / "data").manifest
    heldout = {str(h) for h in cfg.data.get("heldout") or []}
    write_json_atomic(out_dir / "data.json", {"manifest": str(manifest), "heldout": sorted(heldout)})
    timings["data_s"] = time.perf_counter() - t0 - sum(timings.values())

    # 3. VAE (tiny: trained once per dataset, cached)
    vae = None
    if cfg.model.name == "tiny":
        from .diffusion.vae import cached_vae

        vae, metrics["vae"], _ = cached_vae(manifest, _container(cfg.model.tiny), _container(cfg.model.vae_train),
                                            cache, progress=cfg.progress)
    timings["vae_s"] = time.perf_counter() - t0 - sum(timings.values())

    # 4-6. the generator, once per conditioning
    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    for mode in modes:
        sub = out_dir if len(modes) == 1 else out_dir / mode
        t1 = time.perf_counter()
        result = train_generator(cfg, mode, profiles, manifest, heldout, vae, cache, sub)
        if len(modes) == 1:
            metrics.update(result)
        else:
            metrics.setdefault("baselines", {})[mode] = result
        timings[f"generator_{mode}_s"] = time.perf_counter() - t1

    # 7. report
    metrics["timings"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["conditioning"] = modes[0] if len(modes) == 1 else modes
    write_json_atomic(out_dir / "metrics.json", metrics)
    grids = [Path(m) / "samples" / "grid.png" for m in ([] if len(modes) == 1 else modes)] or \
        [Path("samples") / "grid.png"]
    _report(out_dir, metrics, grids)
    cache.record(out_dir)
    print(f"done in {time.perf_counter() - t0:.0f} s: {out_dir / 'report.md'}")
    return metrics


def train_generator(cfg: DictConfig, mode: str, profiles, manifest: Path, heldout: set[str], vae, cache,
                    out_dir: Path) -> dict:
    """Train one generator (conditioning `mode`), save it, and draw its sample grid into out_dir."""
    from .diffusion.adapter import save_kg_adapter
    from .diffusion.backbones import build_backbone, save_model_folder
    from .diffusion.generator import Generator
    from .diffusion.trainer import train

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    backbone = build_backbone(_container(cfg.model), vae=vae, num_tokens=int(cfg.model.get("num_tokens", 8)),
                              with_adapter=mode != "text")
    train_profiles = [p for p in profiles if p.disease_id not in heldout]
    conditioner = build_conditioning(cfg, backbone, train_profiles, cache, mode)
    data = latent_set(manifest, train_profiles, backbone, heldout)
    result = train(backbone, conditioner, data, {**_container(cfg.trainer), "seed": int(cfg.seed)}, out_dir,
                   progress=cfg.progress)
    if result["ema"] is not None:
        result["ema"].copy_to()  # the final weights are the EMA weights (checkpoints keep the raw ones)
    recent = result["losses"][-50:]
    metrics = {"train": {"steps": result["steps"], "final_loss": sum(recent) / max(1, len(recent)),
                         "seconds": round(result["seconds"], 1), "train_images": len(data)}}

    # save: model/, adapter, encoder/ (or the class tokens)
    save_model_folder(backbone, out_dir / "model")
    if mode != "text":
        save_kg_adapter(backbone.unet, out_dir)
    if mode == "kg":
        conditioner.encoder.save_pretrained(out_dir / "encoder")
    elif mode == "class":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in conditioner.class_tokens.state_dict().items()},
                  str(out_dir / "class_tokens.safetensors"))
    write_json_atomic(out_dir / "losses.json", result["losses"])
    _plot_loss(result["losses"], out_dir / "loss.png")

    # samples: every disease (held-out ones too, except under class conditioning) x stage
    gen = Generator(backbone, conditioner, guidance=float(cfg.model.sample.guidance),
                    steps=int(cfg.model.sample.steps))
    drawable = profiles if mode != "class" else train_profiles
    stages = list(cfg.samples.stages)
    images, rows = sample_grid(gen, drawable, stages, int(cfg.samples.per_cell), int(cfg.seed) + 1000)
    names = {p.disease_id: p.name + (" (held out)" if p.disease_id in heldout else "") for p in profiles}
    save_grid(images, rows, names, out_dir / "samples" / "grid.png", stages, int(cfg.samples.per_cell))
    _write_samples(images, rows, out_dir / "samples", heldout)
    metrics["samples"] = {"images": len(rows), "manifest": "samples/manifest.csv"}
    return metrics


def _write_samples(images, rows, folder: Path, heldout: set[str]) -> Path:
    """samples/*.png + samples/manifest.csv (the dataset format plus the request), for kgface.evaluate."""
    from PIL import Image

    from .data.manifest import write_manifest

    out = []
    for i, (img, r) in enumerate(zip(images, rows)):
        rel = f"images/{r['disease'].replace(':', '_')}_s{r['stage']}_seed{r['seed']}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / rel)
        out.append({"path": rel, "identity": f"seed-{r['seed']}", "disease": r["disease"], "stage": r["stage"],
                    "severity": float(r["stage"]), "split": "test", "source": "generated", "phenotypes": "{}",
                    "mode": "sample", "requested_disease": r["disease"], "requested_stage": r["stage"],
                    "seed": r["seed"], "source_image": "", "heldout": r["disease"] in heldout})
    return write_manifest(out, folder / "manifest.csv")


def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) >= k else losses
    ax.plot(smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smoothed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(out_dir: Path, metrics: dict, grids: list[Path]) -> None:
    lines = ["# kgface training run", "", f"Conditioning: `{metrics['conditioning']}`", "",
             "## Samples (diseases x stages; held-out diseases were never trained on)", ""]
    for grid in grids:
        lines += [f"![samples]({grid})", "", f"![loss]({grid.parent.parent / 'loss.png'})", ""]
    lines += ["## Numbers", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


main = entry("train")(run)

if __name__ == "__main__":
    main()
