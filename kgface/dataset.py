"""`python -m kgface.dataset data=phantom data.per_class=... hydra.run.dir=OUT`

Writes OUT/manifest.csv plus OUT/images/, OUT/dataset.json (renderable share per disease, unrenderable terms,
held-out coverage) and OUT/contact_sheet.png (one row per disease, stages left to right). The phantom set is built
once per config in the cache (the default train job reuses the same entry) and copied into OUT (hard links let an
image edited in OUT change the cache entry).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import disease_list, entry
from .data.build import dataset_stats, materialise, phantom_dataset
from .runtime import load_profiles, make_cache


def panel_profiles(cfg: DictConfig, cache):
    profiles = load_profiles(cfg, disease_list(cfg.data.get("diseases"), "data.diseases"), cache)
    if not any(p.healthy for p in profiles):
        profiles.append(load_profiles(cfg, ["healthy"], cache)[0])
    return profiles


def summary(stats: dict) -> str:
    lines = [f"{stats['images']} images"]
    lines.append("renderable share of each disease's KG frequency mass: " + ", ".join(
        f"{k} {v:.2f}" for k, v in stats["renderable_share"].items()))
    lines.append("held-out diseases (seen by the evaluator, never by the generator) and the share of their renderable "
                 "phenotype mass that training diseases also show: " + ", ".join(
                     f"{k} {v:.2f}" for k, v in stats["heldout_coverage"].items()))
    n_unrenderable = sum(len(v) for v in stats["unrenderable_terms"].values())
    lines.append(f"{n_unrenderable} visible phenotype annotations have no renderer effect (listed in dataset.json)")
    return "\n".join(lines)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    from .data.real.build import SET_FILES
    from .run_files import check_output_dir, check_replaced_entries

    # a data set replaces manifest.csv and images/ in OUT: never those of a generated set, an evaluation or a trial
    check_output_dir(out_dir, "the data set", ("metrics.json", "generation.json", "trial.csv"))
    # ... nor a user's own images/ or manifest.csv (no dataset.json beside them: no earlier build wrote them)
    inputs = tuple((f"data.{k}", OmegaConf.select(cfg, f"data.{k}", throw_on_missing=False)) for k in ("root", "path"))
    # (a job's cache record is no one's photos: it does not make OUT another's)
    check_replaced_entries(out_dir, "the data set", tuple(f for f in SET_FILES if f != "cache_entries.json"),
                           ("dataset.json",), inputs)
    if cfg.data.name != "phantom":
        from .data.real import build_real_dataset  # real photos: adapters under conf/data/

        return build_real_dataset(cfg.data, out_dir)
    cache = make_cache(cfg)
    folder = phantom_dataset(cfg, panel_profiles(cfg, cache), cache)
    materialise(folder, out_dir)
    cache.record(out_dir)
    print(summary(dataset_stats(out_dir)))
    print(f"wrote {out_dir / 'manifest.csv'} and {out_dir / 'contact_sheet.png'}")
    return out_dir


main = entry("dataset")(run)

if __name__ == "__main__":
    main()
