"""The severity model of a simulated N-of-1 trial: pure functions of parameters and a seeded numpy Generator.

Per patient i (drawn once): a baseline severity b_i ~ N(baseline.mean, baseline.sd), a drift per day
g_i ~ N(trend.mean, trend.sd) and, per treatment k, the patient's own effect d_ik ~ N(effect_k, sd_k).

Each treatment has an effect state E_ik(t) that moves towards its target with a first-order time constant:

    target_ik(t) = d_ik while k is given on day t, else 0
    E_ik(t) = E_ik(t-1) + (target_ik(t) - E_ik(t-1)) * (1 - exp(-1 / tau)),   E_ik(-1) = 0

with tau = `tau` (days) while k is given and `tau_off` after it stops. This is the exact daily sampling of
dE/dt = (target - E) / tau, so after n days on k its effect is d_ik (1 - exp(-n / tau)), and n days after stopping it
has decayed to exp(-n / tau_off) of its level: the carry-over into the next block. The daily outcome is

    y_i(t) = clip(b_i + g_i t + sum_k E_ik(t) + e_i(t), scale.low, scale.high)

with t the 0-based study day and e_i an AR(1) series: e(t) = ar e(t-1) + N(0, noise.sd^2 (1 - ar^2)), stationary
with sd `noise.sd` (ar = 0: independent days). At steady state on k (many tau, no noise, no trend, no clipping)
y = b_i + d_ik: a treatment's effect is its steady-state difference from the untreated level. Negative effects
improve acne. Everything is in the units of the trial's scale (severity 0-3, or acne lesions 0-80).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError


class SeverityModelError(UserError):
    """Severity-model parameters that cannot describe a trial."""


@dataclass(frozen=True)
class Treatment:
    effect: float          # mean steady-state change from the untreated level (scale units; negative = better)
    sd: float = 0.0        # between-patient sd of that change
    tau: float = 2.0       # time constant (days) of the approach to the effect while given
    tau_off: float = 2.0   # time constant (days) of its decay after it stops (the carry-over)


@dataclass(frozen=True)
class SeverityModel:
    baseline_mean: float
    baseline_sd: float = 0.0
    trend_mean: float = 0.0
    trend_sd: float = 0.0
    noise_sd: float = 0.0
    noise_ar: float = 0.0
    treatments: dict[str, Treatment] = field(default_factory=dict)
    low: float = 0.0
    high: float = 3.0


@dataclass(frozen=True)
class Patient:
    baseline: float
    trend: float
    effects: dict[str, float]   # the patient's own steady-state effect of each treatment


def _number(c, key: str, where: str, default=None, minimum: float | None = None, positive: bool = False) -> float:
    value = c.get(key, default) if hasattr(c, "get") else default
    if value is None:
        raise SeverityModelError(f"{where}.{key} is missing")
    try:
        if isinstance(value, bool):  # true is not 1.0: a YAML slip, refused as the schedule's numbers are
            raise TypeError
        f = float(value)
    except (TypeError, ValueError, OverflowError):  # float() of a huge integer overflows
        raise SeverityModelError(f"{where}.{key}={value!r} is not a number") from None
    if not math.isfinite(f):
        raise SeverityModelError(f"{where}.{key}={value} is not finite")
    if positive and f <= 0:
        raise SeverityModelError(f"{where}.{key}={value} must be > 0 (a time constant in days)")
    if minimum is not None and f < minimum:
        raise SeverityModelError(f"{where}.{key}={value} must be >= {minimum:g}")
    return f


def _mapping(c, where: str, fields: str):
    """`c` when it is a mapping; otherwise a one-line error naming the key and what it holds."""
    if not hasattr(c, "items") or not hasattr(c, "get"):
        raise SeverityModelError(f"{where} must be a mapping {{{fields}}}, not {c!r}")
    return c


def model_from_config(c, treatments: tuple[str, ...], low: float, high: float) -> SeverityModel:
    """The validated model of a `trial.severity` config; `treatments` are the schedule's (each needs parameters)."""
    where = "trial.severity"
    _mapping(c, where, "baseline, trend, noise, treatments")
    given = {str(k): v for k, v in _mapping(c.get("treatments") or {}, f"{where}.treatments",
                                            "one entry per treatment").items()}
    unknown = sorted(set(given) - set(treatments))
    if unknown:
        raise SeverityModelError(f"{where}.treatments has parameters for {', '.join(unknown)}, which the schedule "
                                 f"does not give (treatments: {', '.join(treatments)})")
    missing = [t for t in treatments if t not in given]
    if missing:
        raise SeverityModelError(f"{where}.treatments has no parameters for {', '.join(missing)} "
                                 "(effect, sd, tau, tau_off)")
    parsed = {}
    for name in treatments:
        t, w = given[name], f"{where}.treatments.{name}"
        _mapping(t, w, "effect, sd, tau, tau_off")
        tau = _number(t, "tau", w, 2.0, positive=True)
        parsed[name] = Treatment(effect=_number(t, "effect", w), sd=_number(t, "sd", w, 0.0, minimum=0.0), tau=tau,
                                 tau_off=_number(t, "tau_off", w, tau, positive=True)
                                 if t.get("tau_off") is not None else tau)
    base, trend, noise = (_mapping(c.get(k) or {}, f"{where}.{k}", fields) for k, fields in
                          (("baseline", "mean, sd"), ("trend", "mean, sd"), ("noise", "sd, ar")))
    ar = _number(noise, "ar", f"{where}.noise", 0.0)
    if not -1.0 < ar < 1.0:
        raise SeverityModelError(f"{where}.noise.ar={ar} must lie in (-1, 1) (a stationary AR(1) series)")
    mean = _number(base, "mean", f"{where}.baseline")
    if not low <= mean <= high:
        raise SeverityModelError(f"{where}.baseline.mean={mean:g} lies outside the scale [{low:g}, {high:g}]")
    return SeverityModel(baseline_mean=mean, baseline_sd=_number(base, "sd", f"{where}.baseline", 0.0, minimum=0.0),
                         trend_mean=_number(trend, "mean", f"{where}.trend", 0.0),
                         trend_sd=_number(trend, "sd", f"{where}.trend", 0.0, minimum=0.0),
                         noise_sd=_number(noise, "sd", f"{where}.noise", 0.0, minimum=0.0), noise_ar=ar,
                         treatments=parsed, low=float(low), high=float(high))


def draw_patient(model: SeverityModel, rng: np.random.Generator) -> Patient:
    """A patient's baseline (clipped to the scale), drift and own treatment effects."""
    baseline = float(np.clip(rng.normal(model.baseline_mean, model.baseline_sd), model.low, model.high))
    trend = float(rng.normal(model.trend_mean, model.trend_sd))
    effects = {k: float(rng.normal(t.effect, t.sd)) for k, t in model.treatments.items()}
    return Patient(baseline, trend, effects)


def effect_states(treatment_by_day, model: SeverityModel, patient: Patient) -> dict[str, np.ndarray]:
    """E_ik(t) per treatment k over the days (see the module docstring); days under no treatment (the reference,
    washout) let every state decay."""
    days = list(treatment_by_day)
    out = {}
    for k, t in model.treatments.items():
        on, off = 1.0 - math.exp(-1.0 / t.tau), 1.0 - math.exp(-1.0 / t.tau_off)
        e, state = np.zeros(len(days)), 0.0
        for n, given in enumerate(days):
            target, rate = (patient.effects[k], on) if given == k else (0.0, off)
            state += (target - state) * rate
            e[n] = state
        out[k] = e
    return out


def expected_severity(treatment_by_day, model: SeverityModel, patient: Patient) -> np.ndarray:
    """The noise-free, unclipped course b_i + g_i t + sum_k E_ik(t)."""
    days = np.arange(len(list(treatment_by_day)), dtype=float)
    total = patient.baseline + patient.trend * days
    for e in effect_states(treatment_by_day, model, patient).values():
        total = total + e
    return total


def ar1_noise(n: int, sd: float, ar: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary AR(1) series with marginal sd `sd` (the first value drawn from the stationary law)."""
    z = rng.normal(0.0, 1.0, n)
    e = np.zeros(n)
    innovation = sd * math.sqrt(1.0 - ar * ar)
    for t in range(n):
        e[t] = (ar * e[t - 1] + innovation * z[t]) if t else sd * z[0]
    return e


def simulate_patient(treatment_by_day, model: SeverityModel, rng: np.random.Generator
                     ) -> tuple[Patient, np.ndarray, np.ndarray]:
    """(patient, expected course, observed daily severity clipped to the scale); draws the patient, then the noise."""
    patient = draw_patient(model, rng)
    expected = expected_severity(treatment_by_day, model, patient)
    noise = ar1_noise(len(expected), model.noise_sd, model.noise_ar, rng)
    return patient, expected, np.clip(expected + noise, model.low, model.high)
