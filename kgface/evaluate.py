"""`python -m kgface.evaluate real=MANIFEST generated=MANIFEST [run=RUN_DIR] hydra.run.dir=OUT`

Scores real and/or generated images with the evaluator (a train run's, with `run=`; else one trained, or loaded from
the cache, on `real`'s train split) and writes OUT/metrics.json, OUT/report.md, OUT/report.html with their PNGs and,
for a real set when the evaluator has phenotype heads, OUT/learned_profiles.json + .png. With `run=`, the sets are
judged against the run's own profiles.json. See docs/evaluation.md.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import entry
from .data.manifest import ManifestError, read_manifest
from .errors import UserError
from .evaluation import evaluate_sets, fit_evaluator, load_evaluator, write_report
from .evaluation.face_identity import load_face_identity
from .evaluation.fitting import disease_classes
from .evaluation.evaluator import refuse_unknown_labels
from .evaluation.inputs import set_name
from .evaluation.sets import check_generated
from .evaluation.validity import real_test_rows
from .evaluation.learned_profiles import earlier_learned_note, learn_and_write, val_rates_table
from .run_files import check_output_dir, is_baselines_generator, load_profiles_json, run_data, run_file
from .runtime import apply_num_threads, check_run_kg, load_profiles, make_cache


def judged_profiles(cfg: DictConfig, run_dir: Path | None, diseases: list[str], cache) -> list:
    """The profiles the sets are judged against: with run=, the run's own profiles.json (what kgface.train judged its
    samples against, whatever kg= it was trained with; for a folder inside a run, a baselines generator or the run's
    evaluator/, the enclosing run's), and the config's kg= only for diseases the run lacks or for run= an evaluator
    folder outside any run; without run=, the config's."""
    own = {}
    # an evaluator folder outside any run has no profiles.json: the config's kg= judges (tested by name, so that an
    # unreadable profiles.json stops the evaluation instead of falling back to kg=)
    if run_dir is not None and run_file(run_dir, "profiles.json") is not None:
        own = {p.disease_id: p for p in load_profiles_json(run_dir)}
    missing = [d for d in diseases if d not in own]
    config = run_file(run_dir, "config.yaml") if run_dir is not None and missing else None
    run_cfg = OmegaConf.load(config) if config is not None else None
    if run_cfg is not None and run_cfg.get("kg") is not None:  # the rest come from this config's kg=: another
        check_run_kg(cfg, run_cfg)  # source than the run's is refused, other files said
    rest = [p for p in load_profiles(cfg, missing, cache) if p.disease_id not in own] if missing else []
    return [own[d] for d in diseases if d in own] + rest


def trained_manifest(run_dir) -> Path | None:
    """The manifest a train run's generator learned from (data.json's `manifest`; the file may be gone since):
    the memorisation audit's training set when real= is another manifest, and where trained_atlas looks."""
    import json

    data = run_file(Path(str(run_dir)).expanduser(), "data.json")
    try:
        return Path(json.loads(data.read_text(encoding="utf-8"))["manifest"]) if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_atlas(run_dir) -> Path | None:
    """The phenotype atlas a train run's generator learned from (its metrics.json's train.atlas_images > 0; for a
    baselines generator folder `OUT/<mode>`, that conditioning's; for a baselines run folder, any conditioning's;
    the file beside its manifest), else None: copies of its faces are memorised images too."""
    import json

    from .data.manifest import ATLAS_FILE

    run_dir = Path(str(run_dir)).expanduser()
    data = run_file(run_dir, "data.json")  # a baselines generator folder: its parent's files
    manifest = trained_manifest(run_dir)
    if data is None or manifest is None:
        return None
    try:
        metrics = json.loads((data.parent / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    baselines = metrics.get("baselines") or {}
    if is_baselines_generator(run_dir) and run_dir.name in baselines:  # what this one generator trained on
        sections = [(baselines[run_dir.name] or {}).get("train") or {}]
    else:
        sections = [metrics.get("train") or {}] + [(b or {}).get("train") or {} for b in baselines.values()]
    atlas = manifest.parent / ATLAS_FILE
    return atlas if any(int(t.get("atlas_images") or 0) > 0 for t in sections) and atlas.is_file() else None


def audit_manifest(cfg: DictConfig, run_dir: Path | None):
    """(the run's training manifest, checked readable, or None, notes): the memorisation audit looks for copies of
    what the generator saw, the run's own manifest when real= is another; gone or unreadable (an image moved),
    real='s train split stands in and the report says so."""
    trained = trained_manifest(run_dir) if run_dir is not None and cfg.get("real") else None
    if trained is None or trained.resolve() == Path(str(cfg.real)).expanduser().resolve():
        return None, []  # real= is the run's own manifest: its train split is the generator's
    stand_in = "real='s train split stands in for the images the generator saw (copies of others go unnoticed)"
    if not trained.is_file():
        return None, [f"memorisation audit: the run's training manifest {trained} is gone; {stand_in}"]
    try:
        read_manifest(trained)
        return trained, []
    except ManifestError as exc:
        return None, [f"memorisation audit: the run's training manifest cannot be read ({exc}); {stand_in}"]


def run(cfg: DictConfig, out_dir: Path) -> dict:
    apply_num_threads(cfg)  # as kgface.generate
    if not cfg.get("real") and not cfg.get("generated"):
        raise UserError("nothing to evaluate: give real=MANIFEST and/or generated=MANIFEST")
    if not cfg.get("real") and not cfg.get("run"):
        raise UserError("without run=RUN_DIR the evaluator is trained on real=MANIFEST's train split: give real=")
    face_identity = load_face_identity(cfg.get("face_identity", "auto"))  # a bad value fails before any work
    grid_cases = (cfg.get("report") or {}).get("grid_cases", 8)
    if isinstance(grid_cases, bool) or not isinstance(grid_cases, int) or grid_cases < 1:
        raise UserError(f"report.grid_cases={grid_cases!r}: a whole number of images per grid, at least 1")
    if cfg.get("run"):
        check_evaluator_unset(cfg)  # before OUT's earlier report is touched
    else:  # a typo'd evaluator.* key would only key another cache entry: a refit that reads the defaults
        from .evaluation.clip_model import check_evaluator_keys, plain_config

        check_evaluator_keys(plain_config(cfg.evaluator))
    cache = make_cache(cfg)
    check_output_dir(out_dir, "the evaluation", ("trial.csv",))  # an earlier evaluation in OUT is replaced
    real = read_manifest(cfg.real, source="real")[0] if cfg.get("real") else None
    gen = read_manifest(cfg.generated, source="generated")[0] if cfg.get("generated") else None
    diseases = set()
    for df in (real, gen):
        if df is not None:
            diseases |= set(df["disease"])
            if "requested_disease" in df:
                diseases |= {d.strip() for d in df["requested_disease"].astype(str) if d.strip()}
    run_dir = Path(str(cfg.run)).expanduser() if cfg.get("run") else None
    trained, audit_notes = audit_manifest(cfg, run_dir)  # read now: a broken one must not fail after the scoring
    profiles = judged_profiles(cfg, run_dir, sorted(diseases), cache)
    if run_dir is not None:
        evaluator = load_evaluator(run_dir)
        if real is not None:  # another manifest's test rows may be this evaluator's train rows
            evaluator.check_unseen(real, f"real={cfg.real}")
    else:
        classes = disease_classes(real[real["split"] == "train"])
        if len(classes) >= 2:  # what fitting cannot change, refused before minutes of it: the evaluator will know
            # the diseases of real='s train split (fit_evaluator's classes; fewer: its own error)
            test = real_test_rows(real)  # real='s test split: there, and its labels among those classes
            refuse_unknown_labels(classes, test["disease"], set_name(real, "real set"), test["path"])
            if gen is not None:
                check_generated(classes, gen, profiles)
    if run_dir is None:
        evaluator = fit_evaluator(cfg.evaluator, cfg.real, profiles, cache, progress=bool(cfg.get("progress", True)))
    # photo manifests carry no heldout column: the run's data.json says which were held out, and with run= held out
    # means what its generator never trained on, not another set's column (a data.json naming none: the columns)
    data = run_data(run_dir) if run_dir is not None else {}
    heldout, atlas = (set(data.get("heldout") or []), trained_atlas(run_dir)) if run_dir is not None else (None, None)
    metrics, scored = evaluate_sets(evaluator, real, gen, profiles, return_scored=True, face_identity=face_identity,
                                    heldout=heldout, audit_extra=atlas, audit_train=trained,
                                    heldout_columns="heldout" not in data)
    # fitted and scored (a call refused on its inputs, the fit's own checks included, leaves an earlier report
    # whole): from the first file written into OUT until this one's metrics.json (last), no finished report is there
    (out_dir / "metrics.json").unlink(missing_ok=True)
    notes = [f"evaluator: {evaluator.cfg['name']} ({'from ' + str(cfg.run) if cfg.get('run') else 'trained on ' + str(cfg.real) + ' (train split)'})",
             "top-1 headline = stages 2-3, healthy and ungraded faces; stage 0 is healthy-looking by construction"]
    if "kid_clip" in metrics:
        notes.append("FID/KID on the evaluator's CLIP image features (InceptionV3 weights cannot be downloaded "
                     "here); lead with KID for small sets")
    elif "fid_kid_n" in metrics:
        notes.append(f"no FID/KID: {metrics['fid_kid_n'].get('no_fid_kid', 'too few images')}")
    notes += audit_notes
    # with phenotype heads (fitted on labelled faces or on an atlas beside a photo set, or zero-shot), whether or not this set's
    # rows carry phenotype labels: unlabelled photos are exactly where a learned profile is a finding
    extra = []
    if real is not None and cfg.get("learned_profiles", True) and "real" in scored and evaluator.phenotypes:
        learned_notes, extra = learn_and_write(evaluator, scored["real"].table, profiles, out_dir, str(cfg.real),
                                               val_rates_table(evaluator, cfg.real))
        notes += learned_notes
    else:  # learned_profiles=false, no real=, no phenotype heads: an earlier report's files are not this one's
        notes += earlier_learned_note(out_dir)
    write_report(out_dir, metrics, scored, evaluator, profiles, notes=notes, grid_cases=grid_cases,
                 extra_figures=extra)
    cache.record(out_dir)
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'report.html'}")
    return metrics


def check_evaluator_unset(cfg: DictConfig) -> None:
    """With run= the run's saved evaluator is loaded: an evaluator=... or evaluator.* override would be silently
    ignored, so it is refused (the default group's values are what an unset one reads as)."""
    from .resources import conf_dir

    default = OmegaConf.to_container(OmegaConf.load(conf_dir() / "evaluator" / "tiny_clip.yaml"), resolve=True)
    given = OmegaConf.to_container(cfg.evaluator, resolve=True)
    changed = sorted(k for k in set(default) | set(given) if default.get(k) != given.get(k))
    if changed:
        what = (f"evaluator={given.get('name')}" if given.get("name") != default.get("name")
                else f"evaluator.{changed[0]}={given.get(changed[0])}")
        raise UserError(f"run={cfg.run} loads that run's own evaluator, so {what} is not read; leave it out, or "
                        "evaluate without run= to fit one on real='s train split")


main = entry("evaluate")(run)

if __name__ == "__main__":
    main()
