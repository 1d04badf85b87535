"""`python -m kgface.describe diseases='[ORPHA:870]' llm=openai llm.model=NAME hydra.run.dir=OUT`

Writes OUT/descriptions.json: per disease, a one-sentence facial description for each stage 0..3, from the LLM
(checked against the answer schema and the profile) or from the template (`llm=none`, or the fallback, with its
reason). Training and generation prompts read it. No `diseases` = the kg's default panel. See docs/prompts.md.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import disease_list, entry
from .prompts import StageDescriptions, describe_profiles, make_backend, save_descriptions
from .runtime import load_profiles, make_cache


def format_descriptions(descriptions: dict[str, StageDescriptions]) -> str:
    lines = []
    for d in descriptions.values():
        origin = d.backend + (f"/{d.model}" if d.model else "")
        note = f"; template because {d.fallback_reason}" if d.fallback_reason else ""
        lines.append(f"{d.disease_id} {d.name} [{d.source}, {origin}{note}]")
        lines += [f"  {s.stage}: {s.description}" for s in d.stages]
    return "\n".join(lines)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, StageDescriptions]:
    from .run_files import check_output_dir

    # a train run's descriptions.json holds the sentences its text prompts trained on: never replaced from here
    check_output_dir(out_dir, "the descriptions", ("metrics.json", "manifest.csv", "trial.csv"))
    cache = make_cache(cfg)
    diseases = disease_list(cfg.get("diseases"))
    llm = OmegaConf.to_container(cfg.llm, resolve=True)
    make_backend(llm)  # a missing or malformed llm.* setting fails now, before the KG loads
    profiles = load_profiles(cfg, diseases, cache)
    descriptions = describe_profiles(profiles, llm, cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_descriptions(out_dir / "descriptions.json", descriptions)
    cache.record(out_dir)
    print(format_descriptions(descriptions))
    print(f"wrote {path}")
    return descriptions


main = entry("describe")(run)

if __name__ == "__main__":
    main()
