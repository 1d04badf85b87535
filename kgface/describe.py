"""Entry: per-disease, per-stage facial descriptions, written to RUN_DIR/descriptions.json.

    python -m kgface.describe diseases=[ORPHA:870] llm=openai llm.model=NAME hydra.run.dir=OUT
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from kgface.prompts import describe_profiles, save_descriptions
from kgface.resources import conf_dir


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.get("out_dir"):  # tests and scripts calling run() outside @hydra.main
        return Path(cfg.out_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> dict:
    from kgface import runtime

    diseases = cfg.diseases if cfg.diseases is not None else [d.id for d in cfg.kg.panel]
    profiles = runtime.load_profiles(cfg, list(diseases))
    cache = runtime.make_cache(cfg)
    llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
    descriptions = describe_profiles(profiles, llm_cfg, cache)
    out = _run_dir(cfg)
    path = save_descriptions(out / "descriptions.json", descriptions)
    cache.record(out)
    for d in descriptions.values():
        note = f"  [template: {d.fallback_reason}]" if d.fallback_reason else ""
        print(f"{d.disease_id} {d.name} ({d.source}, {d.backend}{'/' + d.model if d.model else ''}){note}")
        for s in d.stages:
            print(f"  {s.stage}: {s.description}")
    print(f"wrote {path}")
    return {"descriptions": str(path), "diseases": list(descriptions)}


main = hydra.main(version_base=None, config_path=str(conf_dir()), config_name="describe")(run)

if __name__ == "__main__":
    main()
