"""`python -m kgface.profiles diseases='[ORPHA:870,OMIM:163950]' hydra.run.dir=OUT`

Writes OUT/profiles.json (schema kgface.profiles/1, see docs/knowledge.md) and OUT/profiles.ttl (the profiles and
their facial subgraph as RDF), and prints a table. No `diseases` = the kg's default panel.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .cache import atomic_path, write_json_atomic
from .config import disease_list, entry
from .kg import FacialProfile
from .kg.rdf import profiles_to_graph
from .runtime import load_knowledge, load_profiles, make_cache


def format_table(profiles: list[FacialProfile]) -> str:
    rows = [("disease", "name", "visible", "w/ freq", "hidden", "absent", "most frequent visible phenotypes")]
    for p in profiles:
        top = ", ".join(f"{ph.name} ({ph.frequency:.2f})" if ph.frequency is not None else ph.name
                        for ph in p.phenotypes[:3])
        rows.append((p.disease_id, p.name[:34], str(len(p.phenotypes)),
                     str(sum(ph.frequency is not None for ph in p.phenotypes)), str(p.hidden_phenotypes),
                     str(len(p.negative_phenotypes)), top[:90]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


def run(cfg: DictConfig, out_dir: Path) -> list[FacialProfile]:
    from .run_files import check_output_dir

    # a train run's profiles.json is what its generation and evaluation judge against: never replaced from here
    check_output_dir(out_dir, "the profiles", ("metrics.json", "manifest.csv", "trial.csv"))
    cache = make_cache(cfg)
    knowledge = load_knowledge(cfg, cache)
    kg = knowledge[0]
    diseases = disease_list(cfg.get("diseases"))
    profiles = load_profiles(cfg, diseases, cache, knowledge=knowledge)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = profiles_to_graph(profiles, kg.terms)  # built before either file: a failure leaves no new JSON beside
    with atomic_path(out_dir / "profiles.ttl") as tmp:  # an old Turtle file; the JSON, written last, marks the pair
        graph.serialize(destination=str(tmp), format="turtle")
    write_json_atomic(out_dir / "profiles.json", {
        "schema": "kgface.profiles/1", "kg": cfg.kg.source, "kg_stats": kg.stats,
        "profiles": [p.to_dict() for p in profiles]})
    cache.record(out_dir)
    print(format_table(profiles))
    print(f"wrote {out_dir / 'profiles.json'} and {out_dir / 'profiles.ttl'}")
    return profiles


main = entry("profiles")(run)

if __name__ == "__main__":
    main()
