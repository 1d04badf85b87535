"""The trial's images: each patient's baseline face, one image per patient-day, and their measurement.

- Baseline faces: `input=` photos (IMAGE | DIR | MANIFEST.csv, prepared as `kgface.generate`'s transform mode does),
  else healthy test-split images of the run's dataset, else (a phantom run with too few of them) healthy phantom
  faces of further test-split identities rendered on the spot. Never a training identity.
- Daily images: SDEdit from the patient's baseline latent with one fixed noise per patient (the request seed), so
  from day to day only the severity condition changes: consecutive days are edits of one face, equal severities give
  the same image, and what a severity draws (lesion sites, say) stays where it was as it rises and falls. A `mask`
  confines the edits (pixels outside it are the baseline's exactly). `kgface.diffusion.requests.generate` samples.
- Measurement: the evaluator's continuous severity (CORAL) per image, calibrated (measurement.py) on real images of
  known severity: the run's non-training images of the trial's disease and healthy faces.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UserError

log = logging.getLogger("kgface.trial")


@dataclass
class Baseline:
    identity: str
    image: torch.Tensor      # uint8 [3, S, S]
    source: str              # the file, or "phantom identity N (rendered)"


def _manifest_faces(manifest: Path, seed: int) -> list[tuple[str, Path]]:
    """(identity, path) of the healthy test-split images, one per identity, in a seeded order."""
    from ..data.manifest import read_manifest

    df = read_manifest(manifest)[0]
    rows = df[(df["disease"] == "healthy") & (df["split"] == "test")].drop_duplicates("identity").sort_values("path")
    order = np.random.default_rng([int(seed), 5]).permutation(len(rows))
    return [(str(rows.iloc[i]["identity"]), Path(rows.iloc[i]["abspath"])) for i in order]


def _rendered_faces(data_cfg: dict, exclude: set[str], n: int, size: int, seed: int) -> list[Baseline]:
    """Healthy phantom faces of test-split identities not in `exclude` (the dataset's own split)."""
    from ..data.phantom import render_face, sample_identity
    from ..data.phantom.dataset import PhantomConfig, identity_label, identity_split

    pcfg = PhantomConfig.from_dict(data_cfg)
    test = sorted(i for i, s in identity_split(pcfg).items() if s == "test" and identity_label(i) not in exclude)
    test = [test[k] for k in np.random.default_rng([int(seed), 6]).permutation(len(test))][:n]
    out = []
    for i in test:
        img = render_face(sample_identity(pcfg.seed, i), None, size=size, supersample=pcfg.supersample)
        out.append(Baseline(identity_label(i), torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1),
                            f"phantom identity {i} (rendered)"))
    return out


def baseline_faces(n: int, size: int, seed: int, input_spec=None, manifest: Path | None = None,
                   data_cfg: dict | None = None) -> list[Baseline]:
    """n baseline faces, one per patient (see the module docstring for where they come from)."""
    from ..diffusion.editing import input_files, prepare_image

    if input_spec not in (None, ""):
        listed = input_files(input_spec)
        given = [""] * len(listed)  # the identities a manifest names (a blank one, or a file's stem, is no person)
        if str(input_spec).lower().endswith(".csv"):
            from ..data.manifest import read_manifest

            given = [str(i).strip() for i in read_manifest(Path(str(input_spec)).expanduser())[0]["identity"]]
        files, seen = [], set()
        for (path, ident), person in zip(listed, given):  # a manifest may list a person twice: one face per patient
            if person and person in seen:
                continue
            seen.add(person)
            files.append((path, ident))
        if len(files) < n:
            raise UserError(f"input={input_spec} gives {len(files)} identities' photo(s) for trial.patients={n}: one "
                            f"person per patient; add photos or set trial.patients={len(files)}")
        return [Baseline(ident, prepare_image(path, size), str(path)) for path, ident in files[:n]]
    out = []
    if manifest is not None:
        out = [Baseline(ident, prepare_image(path, size), str(path))
               for ident, path in _manifest_faces(manifest, seed)[:n]]
    if len(out) < n and data_cfg is not None and data_cfg.get("name") == "phantom":
        out += _rendered_faces(data_cfg, {b.identity for b in out}, n - len(out), size, seed)
    if len(out) < n:
        raise UserError(f"the run's dataset has {len(out)} healthy test faces for trial.patients={n}; give "
                        "baseline photos with input=IMAGE|DIR|MANIFEST.csv")
    return out


def daily_images(gen, profile, baselines: list[Baseline], conditions: list[np.ndarray], seeds: list[int],
                 strength: float, mask: torch.Tensor | None, batch_size: int, progress: bool = True,
                 age: int = -1) -> list[torch.Tensor]:
    """Per patient, uint8 [days, 3, S, S]: the baseline face at each day's severity (conditions, 0-3), shared noise
    from the patient's seed."""
    from ..diffusion.generator import Request
    from ..diffusion.requests import Item, generate

    items = [Item(Request(profile, float(s), int(seed), age), {}, b.identity, b.image)
             for b, cond, seed in zip(baselines, conditions, seeds) for s in cond]
    images = generate(gen, items, batch_size, strength, mask, progress=progress)
    out, start = [], 0
    for cond in conditions:
        out.append(images[start:start + len(cond)])
        start += len(cond)
    return out


def read_severity(evaluator, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The evaluator's continuous severity (0-3) of uint8 NCHW images."""
    out = [evaluator.score(images[i:i + batch])["severity_pred"].to_numpy(dtype=float)
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros(0)


def calibration_set(evaluator, manifest: Path, disease: str, own: bool = True,
                    patients: set[str] | frozenset = frozenset()) -> tuple[pd.DataFrame, str]:
    """(true, raw, identity, disease, split) of real images of known severity the evaluator never learned from, and
    what they are: the run's images of `disease` and healthy faces outside the training split (the severity head
    was fitted there: its line, slope error and residuals would be in-sample), without photos lacking a grade
    (their stage is a placeholder), and without any image the evaluator's trained_on list names, whatever split
    this manifest gives it (a test copy of a training image; an evaluator fitted on other splits). `own`: the
    evaluator was fitted on this manifest (the run's), whose val split only sets the disease probe's temperature,
    so this manifest's val images stay. A disease without images (one the dataset never drew) is calibrated
    on every disease's images: the evaluator's severity head reads stage for all diseases alike. Too few images
    or faces of the disease (measurement.calibrate): `instrument` says so and does not calibrate. `patients`: the
    trial's baseline identities, whose faces are left out too (the line that reads their daily images would be
    fitted on their own faces)."""
    from ..data.manifest import read_manifest, stage_known
    from ..evaluation import load_images
    from ..evaluation.evaluator import image_digest

    df = read_manifest(manifest)[0]
    what = disease
    if (df["disease"] == disease).sum() == 0:
        what = "every disease (none of the images shows " + disease + ")"
    else:
        df = df[df["disease"].isin([disease, "healthy"])]
    df = df[(df["split"] != "train") & stage_known(df)]
    learned = set(getattr(evaluator, "trained_on", None) or ())
    if own and learned:
        learned -= {image_digest(p) for p in df["abspath"][df["split"] == "val"]}
    dropped = 0
    if learned:
        fresh = np.array([image_digest(p) not in learned for p in df["abspath"]], dtype=bool)
        dropped, df = int((~fresh).sum()), df[fresh]
    own_faces = df["identity"].astype(str).isin(set(patients) - {""})
    n_patients = df.loc[own_faces, "identity"].nunique()
    df = df[~own_faces].reset_index(drop=True)
    raw = read_severity(evaluator, load_images(list(df["abspath"]))) if len(df) else np.zeros(0)
    splits = " + ".join(s for s in ("val", "test") if (df["split"] == s).any()) or "no split"
    note = (f"{len(df)} real images of {what} and healthy faces of known severity, {splits}"
            + (f" ({dropped} left out: the evaluator learned from them)" if dropped else "")
            + (f" (the faces of {n_patients} of the trial's own patients left out)" if n_patients else ""))
    return (pd.DataFrame({"true": df["severity"].astype(float), "raw": raw, "identity": df["identity"].astype(str),
                          "disease": df["disease"], "split": df["split"]}), note)


@dataclass
class Instrument:
    """The evaluator and how its readings are put on the true scale."""
    evaluator: object
    source: str                      # where the evaluator came from
    mode: str                        # calibration: auto | real | none
    calibration: object              # the line applied (measurement.IDENTITY: none)
    line: object | None = None       # the line fitted on the calibration set (None: calibration=none)
    calset: pd.DataFrame | None = None
    calset_note: str = "none"
    problem: str | None = None       # why the fitted line is not applied (auto)

    def read(self, images: torch.Tensor) -> np.ndarray:
        """The evaluator's raw severity (0-3) of uint8 NCHW images."""
        return read_severity(self.evaluator, images)

    def notes(self) -> dict:
        return {"evaluator": self.source, "calibration_mode": self.mode, "calibration_set": self.calset_note,
                "problem": self.problem, "calibration": self.line.as_dict() if self.line is not None else None}


def instrument(cfg, run_dir: Path, run_cfg, manifest: Path | None, profiles, cache, disease: str,
               progress: bool = True, patients: set[str] | frozenset = frozenset()) -> Instrument:
    """The evaluator (`evaluator_dir=PATH`, else RUN_DIR/evaluator, else one fitted and cached on the run's dataset
    with the run's evaluator config, as kgface.train fits it) and its calibration (`calibration=`): `auto` applies
    the line when it resolves severity (else raw readings, with the reason), `real` applies it or fails, `none`
    skips it. (The key is not `evaluator=`: Hydra reads that as the conf/evaluator/ group.)"""
    from omegaconf import OmegaConf

    from ..run_files import find_evaluator
    from .measurement import IDENTITY, calibrate

    if cfg.evaluator_dir is False:
        raise UserError("evaluator_dir=false: a trial measures its images; leave it unset (the run's) or give one")
    if cfg.evaluator_dir not in (None, "") and not Path(str(cfg.evaluator_dir)).expanduser().exists():
        raise UserError(f"evaluator_dir={cfg.evaluator_dir} does not exist; give a saved evaluator folder "
                        "(RUN_DIR/evaluator) or leave it unset")
    evaluator, source = find_evaluator(OmegaConf.create({"evaluator_dir": cfg.evaluator_dir}), run_dir)
    if evaluator is None:
        if manifest is None or not manifest.is_file():
            raise UserError(f"run={run_dir} has no evaluator/ and names no dataset to fit one on; "
                            "give evaluator_dir=PATH")
        from ..evaluation import fit_evaluator

        log.info("run=%s has no evaluator/: fitting one on %s (cached)", run_dir, manifest)
        evaluator = fit_evaluator(run_cfg.evaluator, manifest, profiles, cache, progress=progress)
        source = f"fitted on the run's dataset ({manifest}) with the run's evaluator config (the run has no evaluator/)"
    mode = str(cfg.calibration)
    if mode == "none":
        return Instrument(evaluator, source, mode, IDENTITY)
    if manifest is None or not manifest.is_file():
        raise UserError(f"run={run_dir} names no dataset of real images to calibrate the evaluator on; "
                        "use calibration=none")
    # the run's own evaluator, named or not, was fitted on this manifest: its val faces only set the probe's temperature
    own = cfg.evaluator_dir in (None, "") or \
        Path(str(cfg.evaluator_dir)).expanduser().resolve() == (Path(run_dir) / "evaluator").resolve()
    calset, note = calibration_set(evaluator, manifest, disease, own=own, patients=patients)
    line, problem = calibrate(calset, disease)  # a line through a handful of faces would pass for the instrument's
    if problem and mode == "real":
        raise UserError(f"{problem}: its readings cannot be calibrated; train the evaluator longer or give more "
                        "held-out images of known severity, or use calibration=auto|none")
    if problem:
        log.warning("%s: measured severities are the raw readings (calibration=auto)", problem)
    return Instrument(evaluator, source, mode, IDENTITY if problem else line, line, calset, note, problem)
