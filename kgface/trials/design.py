"""A trial as data: the validated design of a `trial=` config and its simulated daily table (no images yet).

`design_from_config(cfg.trial)` checks everything (schedule, severity model, scale, analysis) and returns a Design;
`simulate(design, seed)` draws every patient's schedule (randomised orders), parameters and daily severities from
per-patient streams of one seed, so a patient's course does not depend on how many patients the trial has.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError
from .schedule import WASHOUT, Schedule, ScheduleError, days_of, schedule_from_config
from .severity import Patient, SeverityModel, model_from_config, simulate_patient

SCALES = ("severity", "lesions")
COVARIANCES = ("nonrobust", "hac", "cluster")
UNITS = ("block", "day")
EFFECTS = ("common", "by_patient")


@dataclass(frozen=True)
class Analysis:
    skip_days: int = 0          # first days of every block left out (run-in to the steady state)
    unit: str = "block"         # block: one mean per analysed block | day: the daily rows
    trend: bool = True          # a linear study-day term
    cov: str = "nonrobust"      # nonrobust | hac (Newey-West within patient) | cluster (by patient)
    hac_lags: int = 3
    alpha: float = 0.05         # 1 - confidence level
    study_trials: int = 0       # trials of the coverage study in the report (no images; 0 = none)
    effects: str = "common"     # common: one effect per treatment | by_patient: + treatment-by-patient terms


@dataclass(frozen=True)
class Design:
    disease: str
    scale: str                  # severity (0-3, the generator's stage) | lesions (acne lesion count)
    patients: int
    start_date: dt.date
    schedule: Schedule
    model: SeverityModel
    analysis: Analysis

    @property
    def treatments(self) -> tuple[str, ...]:
        return self.schedule.treatments

    @property
    def reference(self) -> str:
        return self.schedule.reference


def scale_bounds(scale: str) -> tuple[float, float]:
    from ..data.phantom.acne import LESION_CAP, MAX_SEVERITY

    return (0.0, float(LESION_CAP)) if scale == "lesions" else (0.0, MAX_SEVERITY)


def to_condition(values, scale: str) -> np.ndarray:
    """Trial-scale values -> the generator's continuous severity in [0, 3] (lesions: the phantom's count curve)."""
    from ..data.phantom.acne import _ANCHOR_N, _ANCHOR_S

    v = np.asarray(values, dtype=float)
    if scale == "lesions":
        return np.interp(v, _ANCHOR_N, _ANCHOR_S)
    return np.clip(v, 0.0, 3.0)


def from_condition(values, scale: str) -> np.ndarray:
    """The inverse of to_condition (continuous, not rounded). Readings outside [0, 3] (a calibrated reading of a
    clear or severe face can fall there) are extrapolated linearly, on the lesion scale along the curve's end
    segments: clipping them to 0 or 80 lesions would pull the measured effects towards 0 near clear skin."""
    from ..data.phantom.acne import _ANCHOR_N, _ANCHOR_S

    v = np.asarray(values, dtype=float)
    if scale != "lesions":
        return v
    s, n = np.asarray(_ANCHOR_S), np.asarray(_ANCHOR_N)
    out = np.interp(v, s, n)
    low, high = v < s[0], v > s[-1]
    out = np.where(low, n[0] + (v - s[0]) * (n[1] - n[0]) / (s[1] - s[0]), out)
    return np.where(high, n[-1] + (v - s[-1]) * (n[-1] - n[-2]) / (s[-1] - s[-2]), out)


def whole(value, key: str, minimum: int, what: str = "") -> int:
    """`value` as an int >= minimum, else a one-line UserError naming `key` (2.9 is refused, not truncated; an int,
    or a string of one, is read exactly: a float holds 53 bits, and seed=2^53 + 1 became 2^53)."""
    try:
        n = int(value) if isinstance(value, int) else int(str(value).strip())
        ok = not isinstance(value, bool)
    except ValueError:
        try:
            f = float(value)
            ok = not isinstance(value, bool) and f == int(f)
            n = int(f) if ok else None
        except (TypeError, ValueError, OverflowError):
            ok = False
    if not ok:
        raise UserError(f"{key}={value!r} is not a whole number; give one >= {minimum}")
    if n < minimum:
        raise UserError(f"{key}={n}: {what or f'must be at least {minimum}'}")
    return n


def _fraction(value, key: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):  # float() of a huge integer overflows
        f = float("nan")
    if isinstance(value, bool) or not 0.0 < f < 1.0:  # NaN fails the comparison too
        raise UserError(f"{key}={value!r} must be a number in (0, 1), e.g. 0.05")
    return f


def _flag(value, key: str) -> bool:
    # bool("false") is True: only a YAML / command-line boolean is accepted
    if not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false (unquoted)")
    return value


def _check_repeats(schedule: Schedule) -> None:
    """effects=by_patient fits each patient's own effects, so the noise its intervals need must come from a block
    that repeats a treatment within a patient. Without one, on block means the fit has no residual df (NaN
    intervals, or with the trend a slope it cannot separate), and on daily rows its residuals are day-to-day noise
    within blocks only (blind to block-level noise; the slope is then read from onsets and carry-over inside the
    blocks). Refused whatever trend and unit."""
    if schedule.treatment_blocks <= len(schedule.treatments):
        raise UserError(f"trial.analysis.effects=by_patient needs every patient to repeat a treatment (got "
                        f"trial.schedule.order={schedule.order_text}, cycles={schedule.cycles}: no block-to-block noise to build "
                        "its intervals from); set trial.schedule.cycles >= 2, an order that repeats one (e.g. "
                        "[A, B, A]) or trial.analysis.effects=common")


# every key a trial file may hold: Hydra refuses an unknown key only on the command line, so a typo in a study file
# (analysis: {skip: 5}, schedule: {washout: 3}) ran with the default in silence
KNOWN_KEYS = {
    "trial": {"name", "disease", "scale", "patients", "start_date", "mask", "schedule", "severity", "analysis"},
    "trial.schedule": {"reference", "baseline_days", "treatments", "order", "cycles", "block_days", "washout_days"},
    "trial.analysis": {"skip_days", "trend", "unit", "cov", "hac_lags", "effects", "alpha", "study_trials"},
    "trial.severity": {"baseline", "trend", "noise", "treatments"},
    "trial.severity.baseline": {"mean", "sd"}, "trial.severity.trend": {"mean", "sd"},
    "trial.severity.noise": {"sd", "ar"},
}
TREATMENT_KEYS = {"effect", "sd", "tau", "tau_off"}


def check_keys(c) -> None:
    """Refuse a key of the trial config that nothing reads (one line naming it and the keys there are)."""
    def walk(node, where, known):
        if not hasattr(node, "items"):
            return  # not a mapping: its reader's own error
        unknown = sorted(str(k) for k in node.keys() if str(k) not in known)
        if unknown:
            raise UserError(f"{where}.{unknown[0]} is not a trial setting; {where} takes "
                            f"{', '.join(sorted(known))} (docs/trials.md)")

    for where, known in KNOWN_KEYS.items():
        node = c
        for part in where.split(".")[1:]:
            node = node.get(part) if hasattr(node, "get") else None
        if node is not None:
            walk(node, where, known)
    severity = c.get("severity") if hasattr(c, "get") else None
    treatments = severity.get("treatments") if hasattr(severity, "get") else None
    if hasattr(treatments, "items"):
        for name, t in treatments.items():
            walk(t, f"trial.severity.treatments.{name}", TREATMENT_KEYS)


def design_from_config(c) -> Design:
    """The validated design of a `trial` config node (a DictConfig or dict)."""
    check_keys(c)
    disease = c.get("disease")
    if disease in (None, "", "???") or not isinstance(disease, (str, int)) or isinstance(disease, bool):
        # a study file without it became the string "None", refused only after the run's model had loaded
        raise UserError(f"trial.disease={disease!r}: name the disease the trial follows (an id or name, e.g. "
                        "trial.disease=ORPHA:123 or 'trial.disease=Acne vulgaris')")
    scale = str(c.get("scale", "severity"))
    if scale not in SCALES:
        raise UserError(f"trial.scale={scale} is unknown; use {' | '.join(SCALES)}")
    patients = whole(c.get("patients"), "trial.patients", 1, "a trial needs at least one patient")
    try:
        start = dt.date.fromisoformat(str(c.get("start_date", "2024-01-01")))
    except ValueError:
        raise UserError(f"trial.start_date={c.get('start_date')!r} is not a date (YYYY-MM-DD)") from None
    for key in ("analysis", "schedule", "severity"):
        if c.get(key) is not None and not hasattr(c.get(key), "items"):
            raise UserError(f"trial.{key} must be a mapping of its settings (docs/trials.md), not {c.get(key)!r}")
    a = c.get("analysis") or {}
    unit = str(a.get("unit", "block"))
    if unit not in UNITS:
        raise UserError(f"trial.analysis.unit={unit} is unknown; use {' | '.join(UNITS)}")
    cov = str(a.get("cov", "nonrobust"))
    if cov not in COVARIANCES:
        raise UserError(f"trial.analysis.cov={cov} is unknown; use {' | '.join(COVARIANCES)}")
    alpha = _fraction(a.get("alpha", 0.05), "trial.analysis.alpha")
    lags = whole(a.get("hac_lags", 3), "trial.analysis.hac_lags", 0, "cannot be negative")
    study = whole(a.get("study_trials", 0), "trial.analysis.study_trials", 0, "cannot be negative")
    trend = _flag(a.get("trend", True), "trial.analysis.trend")
    effects = str(a.get("effects", "common"))
    if effects not in EFFECTS:
        raise UserError(f"trial.analysis.effects={effects} is unknown; use {' | '.join(EFFECTS)}")
    if effects == "by_patient" and cov != "nonrobust":
        # each patient's residuals are orthogonal to its own intercept and effects, so a sandwich that sums them by
        # patient (cluster, and hac-panel, which nears it with few rows per patient) has ~0 to say about the effects
        raise UserError(f"trial.analysis.effects=by_patient needs cov=nonrobust (got cov={cov}: with each patient's "
                        "own effects in the fit, a by-patient sandwich cannot estimate their error); keep unit=block "
                        "for autocorrelated days, or use effects=common")
    if cov == "hac" and unit == "block":
        # a patient's handful of block means with hac_lags >= their count is a sandwich summed by patient, read with
        # n - k df where about patients - 1 apply: intervals too narrow (t(13) 2.16 where t(3) 3.18 would hold)
        raise UserError("trial.analysis.cov=hac is for unit=day (autocorrelated daily rows); with unit=block use "
                        "cov=nonrobust (block means are near independent when the noise's autocorrelation dies "
                        "out over the skipped days: at stronger autocorrelation lengthen trial.analysis.skip_days "
                        "and the blocks) or cov=cluster (by patient)")
    schedule = schedule_from_config(c.get("schedule") or {}, a.get("skip_days", 0))
    if effects == "by_patient":
        _check_repeats(schedule)
    if (dt.date.max - start).days < schedule.days - 1:  # day d's date, start + d - 1, is written to trial.csv
        raise UserError(f"trial.start_date={start} + {schedule.days} study days passes the last date Python writes "
                        f"({dt.date.max}); give an earlier start_date")
    # the run-in as schedule_from_config read it ("5.0" is 5 there; int("5.0") would raise)
    skip = whole(a.get("skip_days", 0), "trial.analysis.skip_days", 0)
    analysis = Analysis(skip_days=skip, unit=unit, trend=trend, cov=cov,
                        hac_lags=lags, alpha=alpha, study_trials=study, effects=effects)
    if cov == "cluster" and patients < 2:
        raise UserError("trial.analysis.cov=cluster needs at least 2 patients (clusters); use nonrobust (or hac with "
                        "unit=day)")
    model = model_from_config(c.get("severity") or {}, schedule.treatments, *scale_bounds(scale))
    return Design(disease=str(disease).strip(), scale=scale, patients=patients, start_date=start,
                  schedule=schedule, model=model, analysis=analysis)


def patient_ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"P{i + 1:0{width}d}" for i in range(n)]


def simulate(design: Design, seed: int) -> tuple[pd.DataFrame, dict[str, Patient]]:
    """(daily table, patients): one row per patient-day with patient_id, date, block, day, day_in_block, treatment,
    analysed (kept by the analysis), expected_severity (noise-free) and true_severity (what the image shows)."""
    frames, patients = [], {}
    for p, pid in enumerate(patient_ids(design.patients)):
        blocks = design.schedule.blocks(np.random.default_rng([int(seed), 1, p]))
        days = days_of(blocks)
        patient, expected, observed = simulate_patient(days["treatment"], design.model,
                                                       np.random.default_rng([int(seed), 2, p]))
        # recorded to 4 decimals (what the table holds is what the analysis sees); a lesion count is whole
        observed = np.round(observed) if design.scale == "lesions" else np.round(observed, 4)
        patients[pid] = patient
        frames.append(pd.DataFrame({
            "patient_id": pid,
            "date": pd.to_datetime([design.start_date + dt.timedelta(days=int(d) - 1) for d in days["day"]]),
            "block": days["block"], "day": days["day"], "day_in_block": days["day_in_block"],
            "treatment": days["treatment"].astype(str),
            "analysed": (days["day_in_block"] > design.analysis.skip_days) & (days["treatment"] != WASHOUT),
            "expected_severity": np.round(expected, 4), "true_severity": observed}))
    return pd.concat(frames, ignore_index=True), patients


def true_effects(design: Design, patients: dict[str, Patient]) -> dict[str, float]:
    """The effects the analysis estimates: each treatment's steady-state difference from the reference, averaged
    over the trial's patients (their own effects; equal to the configured effect when its sd is 0)."""
    return {k: float(np.mean([p.effects[k] for p in patients.values()])) for k in design.treatments}


def check_size(design: Design, max_images: int) -> int:
    """The number of patient-days (= images); an error above max_images (a schedule too long to render)."""
    n = design.patients * design.schedule.days
    if max_images and n > max_images:
        raise ScheduleError(f"{design.patients} patients x {design.schedule.days} days = {n} images, more than "
                            f"max_images={max_images}; shorten the schedule or raise max_images")
    if not math.isfinite(n) or n < 1:
        raise ScheduleError("the schedule has no days")
    return n
