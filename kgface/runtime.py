"""Objects every stage needs, built from the composed config: the cache, the knowledge graph and its profiles."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .cache import Cache
from .kg import (HEALTHY, FacialProfile, KnowledgeGraph, NoVisiblePhenotypeError, ProfileBuilder, UnknownDiseaseError,
                 VisibleCatalog, load_kg)
from .resources import kg_data_dir


# the kg config's files: a run's config.yaml records them absolute (kgface.train's preflight)
KG_FILE_KEYS = ("path", "features", "obo_path", "hpoa_path", "kg_data_dir")


def check_kg_settings(cfg: DictConfig) -> None:
    """`kg.path` / `kg.features` that the job's `kg` source does not read, refused (kgface.kg.check_kg_files) from a
    job's config, without loading the graph (`???`: not given)."""
    from .kg import check_kg_files

    path = OmegaConf.select(cfg, "kg.path", throw_on_missing=False)
    check_kg_files(str(cfg.kg.source), None if path in (None, "", "???") else path,
                   OmegaConf.select(cfg, "kg.features", throw_on_missing=False))


def apply_num_threads(cfg: DictConfig) -> None:
    """The job's `num_threads` (0: torch's default) as torch's intra-op threads, or a one-line error naming it."""
    from .config import as_number
    from .errors import UserError

    threads = as_number(cfg.get("num_threads") or 0, "num_threads")
    if threads != int(threads) or threads < 0:
        raise UserError(f"num_threads={cfg.num_threads}: a whole number >= 0 (0 = torch's default)")
    if threads > 0:
        import torch

        torch.set_num_threads(int(threads))


def check_run_kg(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """kgface.generate / trial resolve diseases the run did not train on from their own `kg`: another source is an
    error; other files are a warning (an unseen disease is then built from another graph than the seen ones)."""
    import logging
    import os

    from .errors import UserError

    if run_cfg.kg.source != cfg.kg.source:
        raise UserError(f"kg={cfg.kg.source} but run={cfg.run} was trained with kg={run_cfg.kg.source}; "
                        f"set kg={run_cfg.kg.source}")
    check_kg_settings(cfg)  # a file this source does not read: refused here too (the KG loads lazily)

    def where(c, key):
        value = c.kg.get(key)
        return None if value in (None, "", "???") else os.path.abspath(os.path.expanduser(str(value)))

    for key in KG_FILE_KEYS:
        if cfg.kg.source == "hpo" and key in ("path", "features"):  # unused for hpo
            continue
        if where(cfg, key) != where(run_cfg, key):
            logging.getLogger(__name__).warning(
                "kg.%s=%s but run=%s was trained with kg.%s=%s: diseases it did not train on are built from another "
                "graph than the ones it did", key, cfg.kg.get(key), cfg.run, key, run_cfg.kg.get(key))


def make_cache(cfg: DictConfig) -> Cache:
    from .cache import default_cache_dir

    folder = cfg.paths.get("cache_dir")
    return Cache(Path(str(folder)).expanduser() if folder else default_cache_dir())


def load_knowledge(cfg: DictConfig, cache: Cache | None = None, progress: bool = True
                   ) -> tuple[KnowledgeGraph, VisibleCatalog]:
    k = cfg.kg

    def path(key):  # ~ as in every other path setting (kgface.train's preflight made these absolute, no other job)
        return Path(str(k.get(key))).expanduser() if k.get(key) not in (None, "") else None

    data_dir = path("kg_data_dir") or kg_data_dir()
    kg = load_kg(k.source, path=path("path"), features=path("features"), kg_data_dir=data_dir,
                 obo_path=path("obo_path"), hpoa_path=path("hpoa_path"), cache=cache, progress=progress)
    return kg, VisibleCatalog.load(data_dir)


def panel_queries(cfg: DictConfig, kg: KnowledgeGraph | None = None) -> list[dict]:
    """The default disease panel as [{id, name}] (kg.panel null = every disease of the graph)."""
    panel = cfg.kg.get("panel")
    if panel is None:
        if kg is None:
            return []
        return [{"id": d, "name": kg.disease_name(d)} for d in kg.diseases["id"]]
    from .errors import UserError

    if isinstance(panel, str):  # kg.panel=ORPHA:870: a panel of one, not one of its characters each
        panel = [panel]
    if not isinstance(panel, (ListConfig, list, tuple)):
        raise UserError(f"kg.panel={panel}: give a list of disease ids, e.g. kg.panel='[ORPHA:870,ORPHA:904]'")
    out = []
    for i, p in enumerate(panel):
        item = OmegaConf.to_container(p) if isinstance(p, DictConfig) else p
        if isinstance(item, str) and item.strip():
            out.append({"id": item, "name": item})
        elif isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].strip():
            out.append(dict(item))
        else:  # an int, a name without an id, an empty string: a traceback or a disease never asked for
            raise UserError(f"kg.panel[{i}]={p}: give a disease id as text (e.g. ORPHA:870) or {{id: ..., name: ...}}")
    if not out:
        raise UserError("kg.panel=[] names no disease; list disease ids, or set kg.panel=null for every disease of "
                        "the graph")
    return out


def resolve_entry(builder: ProfileBuilder, entry: dict) -> FacialProfile:
    """A panel entry resolves by its id, else by its name; if neither, the id's error (with suggestions) stands."""
    try:
        return builder.build(entry["id"])
    except UnknownDiseaseError:
        if entry.get("name") and entry["name"] != entry["id"]:
            try:
                return builder.build(entry["name"])
            except UnknownDiseaseError:
                pass
        raise


def load_profiles(cfg: DictConfig, diseases: list[str] | None = None, cache: Cache | None = None,
                  include_healthy: bool = True, knowledge: tuple[KnowledgeGraph, VisibleCatalog] | None = None
                  ) -> list[FacialProfile]:
    """Profiles for the given ids/names (None = the panel), in order, without duplicates. A panel of every disease of
    the graph (kg.panel null, e.g. kg=rdf) leaves out, with one warning, diseases with nothing visible to draw: the
    first such one stopped the whole run; a disease named in the panel or asked for still fails."""
    kg, catalog = knowledge or load_knowledge(cfg, cache)
    builder = ProfileBuilder(kg, catalog)
    whole_graph = diseases is None and cfg.kg.get("panel") is None
    entries = ([{"id": str(d), "name": ""} for d in diseases] if diseases is not None
               else panel_queries(cfg, kg))
    out, seen, invisible = [], set(), []
    for e in entries:
        try:
            profile = resolve_entry(builder, e)
        except NoVisiblePhenotypeError:
            if not whole_graph:
                raise
            invisible.append(e["id"])
            continue
        if profile.disease_id in seen or (profile.disease_id == HEALTHY and not include_healthy):
            continue
        seen.add(profile.disease_id)
        out.append(profile)
    if invisible:
        import logging

        logging.getLogger(__name__).warning(
            "kg.panel=null: %d of the graph's %d diseases have no visible phenotype and are left out (e.g. %s)",
            len(invisible), len(entries), ", ".join(invisible[:3]))
        if not any(not p.healthy for p in out):  # profiles.json / descriptions.json were written empty, exit 0
            from .errors import UserError

            raise UserError(f"kg.panel=null: none of the graph's {len(invisible)} diseases has a visible phenotype "
                            f"(e.g. {', '.join(invisible[:3])}); check kg.path, or annotate visible (facial) HPO "
                            "terms")
    return out


def learned_table(cfg: DictConfig) -> tuple[str, dict, float, str, dict] | None:
    """`profile.*` checked and its file read: None for profile.source=kg, else (source, disease -> HPO id -> learned
    frequency, blend weight, path, the file's content). Cheap: kgface.train's preflight calls it."""
    from .config import as_number
    from .errors import UserError
    from .kg.profiles import PROFILE_SOURCES

    p = cfg.get("profile") or {}
    source = str(p.get("source", "kg"))
    if source not in PROFILE_SOURCES:
        raise UserError(f"profile.source={source}: use one of {', '.join(PROFILE_SOURCES)}")
    if source == "kg":
        if p.get("learned"):  # set and silently unread: the run would condition on the KG's frequencies
            raise UserError(f"profile.learned={p.get('learned')} is read only with profile.source=learned|blend "
                            "(profile.source=kg here); set profile.source=learned or blend, or profile.learned=null")
        return None
    blend = as_number(p.get("blend", 0.5), "profile.blend", "the learned frequencies' weight in [0, 1]")
    if not 0.0 <= blend <= 1.0:  # 50 meant as 50% pushed every blended frequency to 0 or 1
        raise UserError(f"profile.blend={blend:g}: the learned frequencies' weight in [0, 1] (0.5: half each)")
    path = p.get("learned")
    if not path:
        raise UserError(f"profile.source={source} needs profile.learned=PATH, a learned_profiles.json written by "
                        "python -m kgface.evaluate real=MANIFEST (or a train run's evaluation/learned_profiles.json)")
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(str(path)).expanduser().read_text(encoding="utf-8"))
        table = {d: {e["hpo_id"]: float(e["learned_frequency"]) for e in entry["phenotypes"]}
                 for d, entry in data["diseases"].items()}
    except FileNotFoundError:
        raise UserError(f"profile.learned={path}: file not found (run python -m kgface.evaluate real=MANIFEST "
                        "to write learned_profiles.json)") from None
    except OSError as exc:  # a folder (RUN/evaluation rather than its learned_profiles.json), no permission
        raise UserError(f"profile.learned={path}: cannot read it ({type(exc).__name__}); give the "
                        "learned_profiles.json file itself") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"profile.learned={path}: not a kgface learned_profiles.json ({exc!r})") from None
    for d, row in table.items():  # 80 meant as 80% became 1.0, -0.2 a "present" phenotype at frequency 0
        for h, f in row.items():
            if not 0.0 <= f <= 1.0:
                raise UserError(f"profile.learned={path}: {d} {h} has learned_frequency {f:g}; frequencies lie in "
                                "[0, 1] (a share of faces, not a percentage)")
    from .config import heldout_diseases

    held = heldout_diseases(cfg)
    if table and set(table) <= held:  # profile_source keeps the KG's for held-out diseases: nothing would be used
        raise UserError(f"profile.learned={path} holds only held-out diseases ({', '.join(sorted(table))}), whose "
                        "frequencies stay the KG's; use profile.source=kg, or learn profiles of the seen diseases")
    return source, table, blend, str(path), data


def profile_source(cfg: DictConfig, profiles: list) -> list:
    """`profile.source=kg|learned|blend`: the profiles whose frequencies condition the generator (the KG's, or those
    learned from images: `profile.learned=OUT/learned_profiles.json` of `python -m kgface.evaluate`, or a train
    run's `evaluation/learned_profiles.json`)."""
    import logging

    from .errors import UserError
    from .kg.profiles import with_frequencies

    learned = learned_table(cfg)
    if learned is None:
        return list(profiles)
    source, table, blend, path, data = learned
    heads = data.get("phenotype_heads")
    if heads != "atlas":  # see learn_and_write's note
        which = ("phenotype heads that also saw diseased faces (evaluator.phenotype_heads=all)" if heads == "all" else
                 "zero-shot phenotype heads (evaluator.phenotype_heads=zero_shot), uncalibrated and untaught"
                 if heads == "zero_shot" else
                 "phenotype heads it does not name (a file written before 2026-12-05; the default heads also saw "
                 "diseased faces)")
        logging.getLogger(__name__).warning(
            "profile.learned=%s was learned by %s: its frequencies can echo the KG's; heads fitted on a phenotype "
            "atlas (evaluator.phenotype_heads=atlas) follow the faces", path, which)
    logging.getLogger(__name__).warning(
        "profile.learned=%s was learned from %s: if this run's data has the same test faces, its generator is "
        "conditioned on a statistic of the faces it will be evaluated against; learn the profiles on another set "
        "for a clean comparison", path, data.get("learned_from", "a real set's test split"))
    from .config import heldout_diseases

    held = sorted(heldout_diseases(cfg) & set(table))
    if held:  # learned from faces the held-out target is read on: they would leak into the very test of composing
        logging.getLogger(__name__).warning(
            "profile.learned=%s: the held-out diseases' learned frequencies (%s) are left out; they keep the KG's "
            "(the held-out target asks what the generator composes from the KG alone)", path, ", ".join(held))
        table = {d: v for d, v in table.items() if d not in held}
    known = {q.disease_id for q in profiles}
    if not set(table) & known:
        raise UserError(f"profile.learned={path}: none of its diseases ({', '.join(sorted(table)[:5])}) is in the "
                        "panel; was it learned on another dataset?")
    return with_frequencies(profiles, table, source, blend)


def torch_device(name):
    """`device=` of kgface.generate and kgface.trial: cpu (default), cuda, cuda:N, or auto (the first GPU when there
    is one); a name torch does not know, or cuda without a GPU, is a one-line error."""
    import torch

    from .errors import UserError

    name = "cpu" if name in (None, "") else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name}: this torch sees no CUDA GPU; use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        # torch accepts cuda:3 on a one-GPU machine and fails at the first .to() with a traceback
        raise UserError(f"device={name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1}; use one of them")
    return device

