"""From the evaluator's reading to the trial's scale, and a model of that reading for the coverage study.

The evaluator's continuous severity (its CORAL head, 0-3) is an instrument reading, not the true severity. It is
calibrated on real images of known severity (the run's non-training phantom or photo images of the disease and
healthy faces): an OLS line raw = a + b * true. A reading is put on the true scale as (raw - a) / b. Effects on the
severity scale are differences, so only the slope matters to them: its standard error enters the effect's interval
by the delta method (analysis.py). On the lesion scale the severity then goes through the convex lesion-count curve,
where the intercept no longer cancels: the interval's slope term is an approximation there (docs/trials.md).

The same calibration set defines the measurement model of the coverage study (no images are rendered there):

    raw = a + b * true + u_patient + e_day

with u_patient ~ N(0, between_sd^2) (the per-identity share of the calibration residuals, a method-of-moments
estimate) and e_day resampled from the calibration residuals net of their identity means. Each simulated trial
re-draws the calibration set from this model and refits the line, so the study also carries the calibration's own
uncertainty. What it does not carry: errors of the generator (an image that does not show the requested severity)
and day-to-day correlation of the reading errors of one face; the end-to-end trial's own bias shows those.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Calibration:
    intercept: float
    slope: float
    slope_se: float
    r2: float
    n: int

    def to_true(self, raw) -> np.ndarray:
        return (np.asarray(raw, dtype=float) - self.intercept) / self.slope

    @property
    def rel_se(self) -> float:
        """The slope's relative standard error: a calibrated effect's relative uncertainty from calibration."""
        return abs(self.slope_se / self.slope)

    def as_dict(self) -> dict:
        return {"intercept": round(self.intercept, 4), "slope": round(self.slope, 4),
                "slope_se": round(self.slope_se, 4), "r2": round(self.r2, 4), "images": self.n}


IDENTITY = Calibration(0.0, 1.0, 0.0, 1.0, 0)  # calibration=none: readings taken as they are


def fit_calibration(true, raw, groups=None) -> Calibration:
    """OLS raw = a + b * true. `groups` (one identity per image): the slope's standard error is the larger of the
    OLS one and the one clustered by identity (CR1): images of one face share its reading offset, so where a face's
    images share their severity too (one graded photo set per patient) the OLS error is too small, by about
    sqrt(1 + (m - 1) rho) for m images per face; with few faces the clustered one is itself noisy, which the larger
    of the two guards against."""
    x, y = np.asarray(true, dtype=float), np.asarray(raw, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise UserError(f"calibration needs >= 3 images of different severities, got {len(x)}")
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    intercept = float(y.mean() - slope * x.mean())
    resid = y - intercept - slope * x
    s2 = float((resid ** 2).sum() / max(len(x) - 2, 1))
    r2 = 1.0 - float((resid ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
    sxx = float((xc * xc).sum())
    se = float(np.sqrt(s2 / sxx))
    if groups is not None:
        _, index = np.unique(np.asarray(groups), return_inverse=True)
        g, n = int(index.max()) + 1, len(x)
        if 1 < g < n:  # one image per face: nothing is shared (CR1 would be White's error; OLS is kept)
            scores = np.bincount(index, xc * resid, minlength=g)
            cr1 = g / (g - 1) * (n - 1) / max(n - 2, 1) * float((scores ** 2).sum()) / sxx ** 2
            se = max(se, float(np.sqrt(cr1)))
    return Calibration(intercept, slope, se, r2, len(x))


def calibration_problem(cal: Calibration, min_slope: float = 0.1) -> str | None:
    """Why readings cannot be put on the true scale with this line (None when they can): the slope must be at least
    `min_slope` and 2 standard errors above 0, or (raw - a) / b amplifies noise without bound."""
    if cal.slope < min_slope or cal.slope < 2 * cal.slope_se:
        return (f"the evaluator's severity barely rises with the true severity on the {cal.n} calibration images "
                f"(slope {cal.slope:.3f} +- {cal.slope_se:.3f} per unit, R^2 {cal.r2:.2f})")
    return None


MIN_CALIBRATION_IMAGES = 8  # images of the disease a calibration line is fitted on, at least
MIN_CALIBRATION_FACES = 3   # ... from this many faces: a slope error clustered by face over 2 has one df


def calibrate(calset, disease: str) -> tuple[Calibration | None, str | None]:
    """The line applied to readings, from a calibration set (columns true, raw, identity, disease), and why it
    cannot be applied (None when it can): too few images or faces of a disease, a slope that does not resolve
    severity, or one that does only through the healthy faces. A trial lives inside the disease's range, so the line
    applied is the one fitted on the diseased images (true > 0) alone: the line through the healthy faces at 0 is
    steeper wherever the evaluator tells healthy from diseased more sharply than one stage from the next, and
    (raw - a) / b with its slope shrank every effect towards 0 (one that reads every stage alike: to about 0). The
    line over all images must rise too (the first gate)."""
    which = disease if set(calset["disease"]) <= {disease, "healthy"} else "any disease"
    inside = diseased_rows(calset)
    # every image of the disease, then those above severity 0 the applied line is fitted on alone (stage-0 images
    # counted for the first, not the second)
    for rows, what in ((calset[(calset["disease"] != "healthy").to_numpy()], "of known severity"),
                       (inside, "above severity 0 (the applied line is fitted on these)")):
        shown, faces = len(rows), int(rows["identity"].nunique())
        if shown < MIN_CALIBRATION_IMAGES or faces < MIN_CALIBRATION_FACES:
            return None, (f"only {shown} images of {which} {what} outside the evaluator's training split, from "
                          f"{faces} faces (calibration needs >= {MIN_CALIBRATION_IMAGES} images of >= "
                          f"{MIN_CALIBRATION_FACES} faces)")
    try:
        line = fit_calibration(calset["true"], calset["raw"], calset["identity"])
    except UserError as exc:  # e.g. every image of one severity: auto falls back to the raw readings
        return None, str(exc)
    problem = calibration_problem(line)
    if problem:
        return line, problem
    try:
        within = fit_calibration(inside["true"], inside["raw"], inside["identity"])
    except UserError:
        return line, (f"the diseased calibration images hold one severity ({len(inside)} of them): the line rises "
                      "through the healthy faces, and nothing shows it resolves severity inside the disease")
    if calibration_problem(within):
        return line, (f"the evaluator's severity barely rises with the true severity among the {within.n} diseased "
                      f"calibration images (slope {within.slope:.3f} +- {within.slope_se:.3f} per unit); the line "
                      f"through the healthy faces (slope {line.slope:.3f}) would read that flat range as resolved")
    return within, None


def diseased_rows(calset):
    """The calibration images inside the disease's range (true > 0, not healthy): what the applied line and the
    coverage study's measurement model are fitted on."""
    return calset[(calset["true"] > 0).to_numpy() & (calset["disease"] != "healthy").to_numpy()]


@dataclass(frozen=True)
class MeasurementModel:
    calibration: Calibration     # the instrument's line: the truth of the study
    truths: np.ndarray           # the calibration set's true severities (redrawn per simulated trial)
    identities: np.ndarray       # and their identities
    within: np.ndarray           # residuals net of their identity's mean (resampled per image)
    between_sd: float            # sd of the per-identity offset

    def measure(self, true, groups, rng: np.random.Generator) -> np.ndarray:
        """Raw readings of images with these true severities; `groups` (one label per image: the patient) share an
        offset."""
        true = np.asarray(true, dtype=float)
        labels, index = np.unique(np.asarray(groups), return_inverse=True)
        offset = rng.normal(0.0, self.between_sd, len(labels))[index]
        noise = rng.choice(self.within, size=len(true), replace=True)
        c = self.calibration
        return c.intercept + c.slope * true + offset + noise

    def recalibrated(self, rng: np.random.Generator) -> Calibration:
        """The line refitted on a calibration set redrawn from the model (same true severities, new readings)."""
        return fit_calibration(self.truths, self.measure(self.truths, self.identities, rng), self.identities)

    def as_dict(self) -> dict:
        return {**self.calibration.as_dict(), "residual_sd": round(float(np.std(self.within)), 4),
                "between_identity_sd": round(self.between_sd, 4)}


def fit_measurement_model(true, raw, identity) -> MeasurementModel:
    cal = fit_calibration(true, raw, identity)
    true, raw, identity = np.asarray(true, dtype=float), np.asarray(raw, dtype=float), np.asarray(identity)
    resid = raw - cal.intercept - cal.slope * true
    labels, index = np.unique(identity, return_inverse=True)
    counts = np.bincount(index)
    means = np.bincount(index, resid) / counts
    within = resid - means[index]
    dof = len(resid) - len(labels)
    within_var = float((within ** 2).sum() / dof) if dof > 0 else float(np.var(resid))
    if dof <= 0:  # one image per identity: no split into between / within; rescaled for the line's two
        # parameters (their residuals' variance is SSR / n; SSR / (n - 2) is the noise's: 25% more at 8 images)
        n = len(resid)
        return MeasurementModel(cal, true, identity, (resid - resid.mean()) * np.sqrt(n / max(n - 2, 1)), 0.0)
    between_var = float(np.var(means, ddof=1)) - within_var * float(np.mean(1.0 / counts)) if len(labels) > 1 else 0.0
    # resampled residuals keep the within-identity variance (rescaled for the degrees of freedom lost to the means)
    scale = np.sqrt(len(resid) / dof)
    return MeasurementModel(cal, true, identity, within * scale, float(np.sqrt(max(between_var, 0.0))))
