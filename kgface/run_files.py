"""The plain files of a `kgface.train` output directory that more than the generator reads: `profiles.json` (every
profile the run knows, held-out ones included), `data.json` (which diseases were held out, the manifest) and
`evaluator/` (the instrument kgface.generate and kgface.trial score their images with).

Kept apart from `kgface.diffusion.run_loading` (which rebuilds the generator) so that `kgface.evaluate` can read what
a run was judged against without importing the generator it measures. A baselines run keeps these files in its top
folder and one generator per subfolder (`run=OUT/kg`): every reader looks in the folder, then in its parent.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import RunError, UserError
from .kg import FacialProfile


def run_file(run_dir: Path, name: str) -> Path | None:
    """`name` in the run folder, else in its parent (a baselines subfolder), else None."""
    run_dir = Path(run_dir)
    return next((f / name for f in (run_dir, run_dir.parent) if (f / name).is_file()), None)


def enclosing_run(folder: Path) -> Path | None:
    """The kgface.train run that `folder` is or lies in (the first of it and its parents holding data.json and
    profiles.json), else None: other jobs must not write their outputs there."""
    folder = Path(folder).resolve()
    marks = ("data.json", "profiles.json")
    return next((f for f in (folder, *folder.parents) if all((f / m).is_file() for m in marks)), None)


TRAIN_MARKS = ("data.json", "model")  # a kgface.train run's folder, or one generator of a baselines run


def check_output_dir(out_dir: Path, job: str, marks: tuple[str, ...]) -> None:
    """`job` (e.g. "the evaluation") is about to replace its own files in OUT=hydra.run.dir: refused, before any
    work, where OUT holds a train run, lies in one (RUN/evaluation holds the run's own report) or holds another job's
    output (one of `marks`: metrics.json an evaluation, dataset.json a data set, trial.csv a trial, ...)."""
    out_dir = Path(out_dir)
    held = [name for name in TRAIN_MARKS if (out_dir / name).exists()]
    if held:
        raise UserError(f"hydra.run.dir={out_dir} holds a kgface.train run ({', '.join(held)}), whose files "
                        f"{job} would replace; write {job} to another hydra.run.dir")
    run = enclosing_run(out_dir)
    if run is not None:
        raise UserError(f"hydra.run.dir={out_dir} lies in the kgface.train run {run}, whose files {job} could "
                        f"replace; write {job} to another hydra.run.dir")
    held = [name for name in marks if (out_dir / name).exists()]
    if held:
        raise UserError(f"hydra.run.dir={out_dir} holds another kgface output ({', '.join(held)}), whose files "
                        f"{job} would replace; write {job} to another hydra.run.dir")


# what the other jobs leave in their OUT (kgface.generate, kgface.dataset, kgface.trial, kgface.profiles); an
# evaluation leaves metrics.json and report.md, kgface.describe descriptions.json, without the config.yaml a train run
# writes first
OTHER_JOB_MARKS = ("generation.json", "dataset.json", "trial.csv", "trial.json", "profiles.ttl")


def check_train_output_dir(out_dir: Path) -> None:
    """kgface.train is about to reset OUT=hydra.run.dir (its last metrics, evaluator, generator and samples): only an
    empty folder or an earlier train run's may be reset; another job's output, or a folder inside another train run
    (RUN/evaluation, a baselines run's generator subfolder), is refused before anything is removed."""
    out_dir = Path(out_dir)
    held = [name for name in OTHER_JOB_MARKS if (out_dir / name).exists()]
    for name, job in (("metrics.json", "an evaluation"), ("descriptions.json", "kgface.describe")):
        if (out_dir / name).is_file() and not (out_dir / "config.yaml").is_file():
            held.append(f"{name} of {job}")
    if held:
        raise UserError(f"hydra.run.dir={out_dir} holds another kgface output ({', '.join(held)}), which the train "
                        "run would partly delete; train into another hydra.run.dir")
    run = enclosing_run(out_dir)
    if run is not None and run != out_dir.resolve():
        raise UserError(f"hydra.run.dir={out_dir} lies in the kgface.train run {run}, whose files the train run "
                        "could replace; train into another hydra.run.dir")


def check_replaced_entries(out_dir: Path, job: str, replaced: tuple[str, ...], own_marks: tuple[str, ...],
                           inputs: tuple = ()) -> None:
    """`job` replaces the `replaced` entries of OUT as an earlier run of itself left them: refused where one is there
    without any of `own_marks` (a user's own images/ or manifest.csv, not an earlier set) and where an input path
    (`inputs`: (key, value) pairs) lies in one of them, so the job never deletes what it did not write."""
    out = Path(out_dir).resolve()
    present = [name for name in replaced if (out / name).exists() or (out / name).is_symlink()]
    if present and not any((out / name).exists() or (out / name).is_symlink() for name in own_marks):
        raise UserError(f"hydra.run.dir={out_dir} holds {', '.join(present)} that no earlier run of {job} wrote "
                        f"(no {' or '.join(own_marks)} beside them), which {job} would replace; move them away or "
                        "write to another hydra.run.dir")
    for key, value in inputs:
        if not isinstance(value, (str, Path)) or str(value) == "":
            continue
        path = Path(str(value)).expanduser().resolve()
        hit = [name for name in replaced if path == out / name or (out / name) in path.parents]
        if hit:
            raise UserError(f"{key}={value} lies in {out_dir}'s {hit[0]}, which {job} replaces with its own; move "
                            "the input out or write to another hydra.run.dir")


def is_baselines_generator(folder: Path) -> bool:
    """A generator subfolder of a baselines run (`OUT/<mode>`): its name is one of OUT/config.yaml's baselines."""
    folder = Path(folder)
    config = folder.parent / "config.yaml"
    if not config.is_file():
        return False
    from omegaconf import OmegaConf

    try:
        return folder.name in [str(m) for m in (OmegaConf.load(config).get("baselines") or [])]
    except Exception:  # noqa: BLE001 -- an unreadable config is not a baselines run
        return False


def load_profiles_json(run_dir: Path, conditioning: bool = False) -> list[FacialProfile]:
    """The run's KG profiles (profiles.json); with `conditioning`, those its generator was conditioned on: under
    profile.source=learned|blend, kgface.train wrote their learned frequencies to conditioning_profiles.json beside
    profiles.json, and generation must draw from what the generator learned, not from the KG's numbers."""
    path = run_file(run_dir, "profiles.json")
    if path is None:
        raise RunError(f"run={run_dir} has no profiles.json; is it a kgface.train output?")
    learned = path.parent / "conditioning_profiles.json"
    source = learned if conditioning and learned.is_file() else path
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        return [FacialProfile.from_dict(p) for p in (data if source == learned else data["profiles"])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a truncated or hand-edited file
        raise RunError(f"{source}: not a kgface profiles file ({type(exc).__name__}: {exc}); restore it or rerun "
                       "kgface.train") from exc


def run_data(run_dir: Path) -> dict:
    """The run's data.json (its manifest, held-out diseases, how its prompts were built); {} without the file, a
    one-line RunError naming it when it is damaged."""
    path = run_file(run_dir, "data.json")
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not readable JSON ({type(exc).__name__}); restore it or rerun kgface.train") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a kgface data.json (a JSON object); restore it or rerun kgface.train")
    return data


def heldout_of(run_dir: Path) -> set[str]:
    """The diseases the run held out from its generator (data.json's `heldout`; empty without the file)."""
    return set(run_data(run_dir).get("heldout") or [])


def find_evaluator(cfg, run_dir: Path) -> tuple[object | None, str]:
    """(evaluator or None, where it came from / why there is none): `evaluator_dir=PATH`, else RUN_DIR/evaluator (a
    baselines generator RUN_DIR/<mode>: the run's shared OUT/evaluator); `evaluator_dir=false` skips it."""
    from .evaluation import load_evaluator

    if cfg.evaluator_dir is False:
        return None, "evaluator_dir=false: identity_similarity not computed"
    if cfg.evaluator_dir not in (None, "", True):
        path = Path(str(cfg.evaluator_dir)).expanduser()
        if not path.exists():
            raise UserError(f"evaluator_dir={path} does not exist; give a saved evaluator folder (RUN_DIR/evaluator)")
        return load_evaluator(path), str(path)
    folders = [run_dir / "evaluator"]
    if not (run_dir / "config.yaml").is_file():  # a baselines sub-run: the evaluator is the parent run's
        folders.append(run_dir.parent / "evaluator")
    for folder in folders:
        if (folder / "evaluator.json").is_file():
            return load_evaluator(folder), str(folder)
    return None, (f"run={run_dir} has no evaluator/ (train it with evaluate=true, or pass evaluator_dir=PATH): "
                  "identity_similarity not computed")
