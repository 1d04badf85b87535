"""`python -m kgface.trial run=RUN_DIR hydra.run.dir=OUT` — a simulated N-of-1 trial whose daily outcome is an image
(docs/trials.md).

The design (`trial=` group, conf/trial/) is validated, each patient's schedule and daily severities are simulated
(kgface.trials.severity), every patient-day becomes an image of the patient's own baseline face at that day's
severity (kgface.trials.images), the evaluator reads each image, and each treatment's effect is estimated from the
true and from the measured severities (kgface.trials.analysis), with a coverage study of the design.
Outputs: OUT/trial.csv, OUT/trial.parquet, OUT/images/<patient>/, OUT/report.md with its figures, OUT/trial.json.
Everything is checked before anything is generated (the trial's table is simulated first: a design the analysis
cannot identify fails before any model loads), written to a staging folder and moved in, trial.csv last, replacing a
previous trial's outputs in OUT as a whole (kgface.trials.report.write_outputs).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import as_number, entry
from .errors import UserError

log = logging.getLogger("kgface.trial")

CALIBRATION_MODES = ("auto", "real", "none")
DECIMALS = 4  # severities are recorded (and analysed) to 4 decimals


def _image_seed(seed: int, patient: int) -> int:
    return int(np.random.SeedSequence([int(seed), 3, patient]).generate_state(1)[0])


def _columns(table: pd.DataFrame, acne: bool) -> pd.DataFrame:
    first = ["patient_id", "date", "block", "day", "treatment"] + (["AcneSeverity"] if acne else [])
    rest = ["day_in_block", "analysed", "true_severity", "measured_severity", "measured_severity_raw",
            "expected_severity", "condition_severity"] + (["lesion_count"] if acne else [])
    return table[first + rest + ["image", "identity", "disease", "image_seed"]]


def _side_by_side(true_est: pd.DataFrame, measured_est: pd.DataFrame) -> pd.DataFrame:
    keys, cols = ["patient_id", "effect"], ["estimate", "low", "high"]
    # unit, cov and df follow the patient's blocks, not the outcome: the true and the measured fit share them
    t = true_est[keys + ["unit", "cov", "df", "truth"] + cols].rename(columns={c: f"true_{c}" for c in cols})
    return t.merge(measured_est[keys + cols].rename(columns={c: f"measured_{c}" for c in cols}), on=keys)


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .diffusion.adapter import adapter_scale_or_none
    from .diffusion.editing import edit_mask
    from .diffusion.generator import Generator
    from .diffusion.requests import Profiles
    from .diffusion.run_loading import check_precision_device, load_profiles_json, load_run, run_config
    from .run_files import check_output_dir, check_replaced_entries, run_data
    from .prompts.wording import STAGE_SCALES
    from .runtime import check_run_kg, make_cache, torch_device
    from .trials import analysis, report
    from .trials.design import (check_size, design_from_config, from_condition, simulate, to_condition, true_effects,
                                whole)
    from .trials.images import baseline_faces, daily_images, instrument
    from .trials.measurement import diseased_rows, fit_measurement_model

    t0 = time.perf_counter()
    # 1. everything that can be checked without the model, then the run, the disease and the faces
    seed = whole(cfg.get("seed"), "seed", 0, "numpy seeds cannot be negative; give a whole number >= 0")
    threads = whole(cfg.get("num_threads") or 0, "num_threads", 0, "cannot be negative (0 = torch's default)")
    if threads > 0:
        torch.set_num_threads(threads)
    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise UserError("run= is required: a kgface.train output directory (python -m kgface.trial run=RUN_DIR)")
    design = design_from_config(cfg.trial)
    n_images = check_size(design, whole(cfg.max_images or 0, "max_images", 0, "cannot be negative (0 = no limit)"))
    if not 0.0 < as_number(cfg.strength, "strength", "give one in (0, 1]") <= 1.0:
        raise UserError(f"strength={cfg.strength} must lie in (0, 1]")
    if cfg.calibration not in CALIBRATION_MODES:
        raise UserError(f"calibration={cfg.calibration} is unknown; use {' | '.join(CALIBRATION_MODES)}")
    batch_size = whole(cfg.batch_size, "batch_size", 1)
    steps = None if cfg.steps is None else whole(cfg.steps, "steps", 1, "give at least 1 (null = the run's)")
    guidance = (None if cfg.guidance is None
                else as_number(cfg.guidance, "guidance", "give one (e.g. 3), or null for the run's"))
    # what a trial writes replaces report.md, images/ and gifs/ in OUT: never in another job's output folder
    check_output_dir(out_dir, "the trial", ("metrics.json", "manifest.csv"))  # an earlier trial is replaced
    # ... as an earlier trial left it: never a user's own images/ or report.md, nor the baseline photos it reads
    # marks: what a trial writes and no photo folder holds; baselines/ goes after images/ and comes in first, so an
    # interrupted rerun still leaves one (trial.csv and trial.json go first and come in last)
    inputs = [("input", cfg.input)]
    if cfg.input not in (None, ""):
        from .diffusion.editing import input_files

        try:  # the photos a manifest or folder lists (a bad input= is the baseline reader's error, below)
            inputs += [("input", p) for p, _ in input_files(cfg.input)]
        except UserError:
            pass
    check_replaced_entries(out_dir, "the trial", report.MANAGED,
                           ("trial.csv", "trial.json", "trial.parquet", "baselines", "gifs"), tuple(inputs))
    # the trial is a function of the design and the seed alone: simulated now, so a design the analysis cannot
    # separate (e.g. every patient's blocks in one order, with the trend term) fails before any model loads
    mask_spec = cfg.trial.get("mask")
    mask_spec = OmegaConf.to_container(mask_spec) if isinstance(mask_spec, ListConfig) else mask_spec
    edit_mask(mask_spec, None, 8, "trial.mask")  # a bad one fails before the model loads (drawn at its size below)
    table, patients = simulate(design, seed)
    analysis.check_identifiable(table, design)
    runin_bias, design_warnings = analysis.design_checks(table, design, patients)
    for note in design_warnings:  # the trial still runs: a user may want exactly this design; the report says it too
        log.warning("%s", note)
    run_dir = Path(str(cfg.run)).expanduser()
    cache = make_cache(cfg)
    device = torch_device(cfg.get("device"))
    check_run_kg(cfg, run_config(run_dir))  # before the model loads (an SD run takes minutes)
    backbone, conditioner, run_profiles, run_cfg = load_run(run_dir, cache=cache, adapter_scale=cfg.adapter_scale,
                                                           dtype=cfg.get("dtype"))
    backbone.unet.to(device)  # as kgface.generate: the text encoder stays on the CPU (states cached per prompt)
    backbone.vae.to(device)
    conditioner.to(device)
    check_precision_device(backbone, device)
    profile = Profiles(cfg, run_profiles, cache).get(design.disease, key="trial.disease")
    if profile.healthy:
        raise UserError("trial.disease=healthy: a trial needs a disease whose severity it follows")
    if conditioner.mode == "class" and profile.disease_id not in {p.disease_id for p in conditioner.profiles}:
        raise UserError(f"run={cfg.run} uses conditioning=class, which cannot draw {profile.disease_id} "
                        f"({profile.name}), a disease it never saw; use a conditioning=kg, text or kg_text run")
    if conditioner.mode == "text":  # the trial still runs (a baseline worth measuring); the report says it too
        design_warnings.append(f"run={cfg.run} is conditioning=text: its prompt names the stage, not the severity, so "
                               "a patient's image changes only where the daily severity crosses a stage boundary; "
                               "the image outcome moves in steps (a kg or kg_text run draws the severity itself)")
        log.warning("%s", design_warnings[-1])
    acne = profile.disease_id in STAGE_SCALES  # the acne lesion-count scale
    if design.scale == "lesions" and not acne:
        raise UserError(f"trial.scale=lesions is the acne lesion-count scale; {profile.disease_id} ({profile.name}) "
                        "has none: use trial.scale=severity")
    size = backbone.image_size
    mask = edit_mask(mask_spec, None, size, "trial.mask")
    info = run_data(run_dir)
    manifest = Path(info["manifest"]) if info.get("manifest") else None
    data_cfg = OmegaConf.to_container(run_cfg.data, resolve=True) if run_cfg.get("data") is not None else None
    faces = baseline_faces(design.patients, size, seed, cfg.input, manifest, data_cfg)
    # the instrument is the one kgface.train fits: on the KG's profiles, not on learned frequencies the generator
    # may be conditioned on (profile.source=learned|blend), so the cached evaluator is found
    meter = instrument(cfg, run_dir, run_cfg, manifest, load_profiles_json(run_dir), cache, profile.disease_id,
                       progress=bool(cfg.progress), patients={b.identity for b in faces})

    # 2. the simulated trial's images
    pids = list(patients)
    seeds = {pid: _image_seed(seed, p) for p, pid in enumerate(pids)}
    table["condition_severity"] = np.round(to_condition(table["true_severity"], design.scale), DECIMALS)
    guidance = float(guidance if guidance is not None else run_cfg.model.sample.guidance)
    steps = int(steps if steps is not None else run_cfg.model.sample.steps)
    n_train = int(backbone.scheduler.config.num_train_timesteps)
    if steps > n_train:
        raise UserError(f"steps={steps}: DDIM steps are at most {n_train} (the model's noise ladder)")
    gen = Generator(backbone, conditioner, guidance=guidance, steps=steps,
                    eta=float(run_cfg.model.sample.get("eta", 0.0)))
    log.info("trial: %d patients x %d days = %d images of %s", design.patients, design.schedule.days, n_images,
             profile.name)
    conditions = [table.loc[table["patient_id"] == pid, "condition_severity"].to_numpy() for pid in pids]
    per_patient = daily_images(gen, profile, faces, conditions, [seeds[pid] for pid in pids], float(cfg.strength),
                               mask, batch_size, progress=bool(cfg.progress))
    width = len(str(design.schedule.days))
    table["image"] = [f"images/{pid}/day{int(d):0{width}d}.png" for pid, d in zip(table["patient_id"], table["day"])]
    table["identity"] = table["patient_id"].map({pid: f.identity for pid, f in zip(pids, faces)})
    table["disease"] = profile.disease_id
    table["image_seed"] = table["patient_id"].map(seeds)
    if acne:
        from .data.phantom.acne import count_from_severity

        table["AcneSeverity"] = table["true_severity"]
        table["lesion_count"] = [count_from_severity(s) for s in table["condition_severity"]]

    # 3. measurement and analysis
    # read patient by patient: one concatenated copy of every image beside the per-patient ones doubled the memory
    # (5,000 images at 1024 px: ~31 GB) after all the drawing was done
    raw, cal = np.concatenate([meter.read(x) for x in per_patient]), meter.calibration
    table["measured_severity_raw"] = np.round(raw, DECIMALS)
    table["measured_severity"] = np.round(from_condition(cal.to_true(raw), design.scale), DECIMALS)
    truth = true_effects(design, patients)
    estimates = pd.concat([analysis.estimate_effects(table, "true_severity", design, truth),
                           analysis.estimate_effects(table, "measured_severity", design, truth, rel_se=cal.rel_se)],
                          ignore_index=True)
    per_patient_effects = _side_by_side(
        analysis.patient_effects(table, "true_severity", design, truths={k: p.effects for k, p in patients.items()}),
        analysis.patient_effects(table, "measured_severity", design, rel_se=cal.rel_se))
    study, study_note = None, "Not run (trial.analysis.study_trials=0)."
    if design.analysis.study_trials:
        # without a usable calibration line the study still judges the design's analysis on true severities; the
        # measured outcome's noise model is that line, so it is left out (and the note says why)
        usable = meter.calset is not None and not meter.problem
        inside = diseased_rows(meter.calset) if usable else None  # where the applied line was fitted
        model = fit_measurement_model(inside["true"], inside["raw"], inside["identity"]) \
            if usable else None
        _, study = analysis.coverage_study(design, design.analysis.study_trials, seed, model,
                                           progress=bool(cfg.progress))
        study_note = None if usable else (
            f"True severities only: {meter.problem or 'calibration=none: no calibration set'}, and the measured "
            "outcome's noise model is the calibration line.")
        if study.empty:  # every simulated draw was left out (this trial's own draw was not)
            flat = int(study.attrs.get("skipped_calibration", 0))
            other = int(study.attrs.get("skipped", 0)) - flat
            why = [f"{other} could not be analysed (e.g. every patient drew the same order)"] if other else []
            why += [f"{flat} refitted a calibration line too flat to apply (calibration=auto's rule)"] if flat else []
            study, study_note = None, (f"Not run: none of the {design.analysis.study_trials} simulated trials of "
                                       f"this design could be used: {'; '.join(why) or 'none was drawn'}.")

    # 4. outputs
    table = _columns(table, acne)
    err = table["measured_severity"] - table["true_severity"]
    resolves = table["measured_severity"].std() > 0 and table["true_severity"].std() > 0
    baselines = {pid: f.image for pid, f in zip(pids, faces)}
    summary = {
        "run": str(cfg.run), "seed": seed, "trial": str(cfg.trial.get("name", "")),
        "disease": {"id": profile.disease_id, "name": profile.name}, "design": report.design_dict(design),
        "days_per_patient": design.schedule.days, "images": n_images,
        "images_settings": {"strength": float(cfg.strength), "guidance": guidance, "steps": steps, "mask": mask_spec,
                            "input": cfg.input, "image_size": size,
                            "dtype": str(run_cfg.model.get("dtype", "fp32")),
                            "adapter_scale": adapter_scale_or_none(backbone.unet)},
        "patients": {pid: {"identity": f.identity, "baseline_face": f.source, "image_seed": seeds[pid],
                           "baseline_severity": patients[pid].baseline, "trend": patients[pid].trend,
                           "effects": patients[pid].effects} for pid, f in zip(pids, faces)},
        "truth": truth, "effects": estimates.to_dict("records"),
        "runin_bias": runin_bias.to_dict("records"), "design_warnings": design_warnings,
        "measurement": {**meter.notes(),
                        "trial_correlation": float(np.corrcoef(table["true_severity"],
                                                               table["measured_severity"])[0, 1]) if resolves else None,
                        "trial_mae": float(err.abs().mean())},
        "study": ({"trials": design.analysis.study_trials, "seed": seed, "summary": study.to_dict("records")}
                  if study is not None else None),
        "study_note": study_note, "columns": list(table.columns), "seconds": round(time.perf_counter() - t0, 1)}
    figures = {"series": "series.png", "effects": "effects.png",
               "gifs": {pid: f"gifs/{pid}.gif" for pid in pids} if cfg.gifs else {}}
    if meter.line is not None:
        figures["calibration"] = "calibration.png"

    def draw(folder: Path) -> None:
        report.plot_series(table, dict(zip(pids, per_patient)), baselines, design.treatments, design.reference,
                           folder / figures["series"])
        off_scale = ("measured_severity",) if report.measured_caveat(summary["measurement"]) else ()
        report.plot_effects(estimates, folder / figures["effects"], off_scale)
        if meter.line is not None:
            report.plot_calibration(meter.calset, meter.line, folder / figures["calibration"])
        report.write_report(folder / "report.md", summary, estimates, per_patient_effects, study, figures)

    patients_table = pd.DataFrame([{"patient_id": pid, **{k: v for k, v in p.items() if k != "effects"},
                                    **{f"effect_{k}": v for k, v in p["effects"].items()}}
                                   for pid, p in summary["patients"].items()])
    tables = {"patients": patients_table, "effects": estimates, "patient_effects": per_patient_effects,
              "study": study}
    path = report.write_outputs(out_dir, table, dict(zip(pids, per_patient)), baselines, tables, summary, draw,
                                bool(cfg.gifs))
    print(f"{n_images} images, {design.patients} patients in {time.perf_counter() - t0:.0f} s: {path}")
    return {**summary, "table": str(path)}


main = entry("trial")(run)

if __name__ == "__main__":
    main()
