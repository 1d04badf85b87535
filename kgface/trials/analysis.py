"""Treatment effects of a trial, from the true and from the image-measured severities, and a coverage study.

The model (statsmodels least squares; block means weighted by their analysed days). The analysed days are each
block minus its first `skip_days` (the run-in: the previous treatment's carry-over and the new one's onset); washout
days are left out. With `unit: block` (default)
each analysed block is summarised by its mean outcome and mean study day (the classic summary-measures analysis of
N-of-1 series: a block mean averages over day-to-day noise, and neighbouring means are near independent once the
noise's autocorrelation has died out over the skipped days between them: warned otherwise); with `unit: day` the daily
rows enter as they are. Either way

    y = sum_k beta_k [treatment = k] + alpha_patient + gamma * day + e

with the reference level (Baseline) as the dummies' base, a fixed intercept per patient (the patients' baselines;
in a balanced design the same beta as a random-intercept mixed model, without its convergence issues) and, with
`trend`, one linear study-day term. beta_k is treatment k's steady-state difference from the reference, averaged
over the trial's patients (the estimand: those patients' mean effect; design.true_effects). With `effects:
by_patient` the model adds treatment-by-patient terms and the estimate is the mean of the patients' own fitted
effects (effect_weights), exactly that estimand, with intervals built for it when effects differ between patients.
Standard errors (`cov`): `nonrobust` (default; independent block means), `hac` (Newey-West within each patient's
series, statsmodels `hac-panel`, `hac_lags` lags: for unit=day with autocorrelated noise), `cluster` (by patient, t
with patients - 1 df, statsmodels' df_resid_inference; targets the population's mean effect, poor with few patients).
A design matrix without full column rank (with `trend`: every patient's blocks in one order, so the study day is a
combination of intercepts and dummies), or one with no more rows than columns (no residual df: NaN intervals), is
refused with a one-line NotIdentifiable; the treatment dummies are named
`trt[k]` so that no treatment name (`day`, `const`) can clash with another column.

Measured severities are calibrated readings (measurement.py); the calibration slope's relative standard error r
widens a measured effect's standard error by the delta method: se^2 = se_model^2 + beta^2 r^2.
Contrasts between treatments (A - B) come from the same fit. Per-patient effects (each patient's own N-of-1 result)
fit the model to that patient's block means (nonrobust; few blocks give few df and wide intervals, which is what one
patient's blocks support), or to its daily rows with the same `cov` (nonrobust for cluster) where the patient has
too few blocks or `unit: day`; the `unit` column says which.

The estimand is each treatment's steady state, but the analysis averages the analysed days: a run-in shorter than
a few time constants leaves onset and carry-over in every estimate. `design_checks` measures that bias exactly (the
model fitted to the noise-free course minus the model fitted to the steady-state course) and warns about it, and
about days the scale's bounds clip.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError
from .design import Design, from_condition, simulate, to_condition, true_effects
from .measurement import calibration_problem
from .schedule import WASHOUT


def _column(treatment: str) -> str:
    """A treatment's dummy column: namespaced, so a treatment called `day`, `const` or `patient[P02]` cannot take
    (or be taken for) another column of the design."""
    return f"trt[{treatment}]"


def _interaction(treatment: str, patient: str) -> str:
    return f"{_column(treatment)}:patient[{patient}]"


def _by_patient(design: Design, per_patient: bool) -> bool:
    """Whether the pooled fit has treatment-by-patient terms (a patient's own fit has one patient: never)."""
    return design.analysis.effects == "by_patient" and not per_patient


def _design_matrix(rows: pd.DataFrame, design: Design, per_patient: bool) -> pd.DataFrame:
    x = pd.DataFrame({"const": 1.0}, index=rows.index)
    for k in design.treatments:
        x[_column(k)] = (rows["treatment"] == k).astype(float)
    if not per_patient:
        others = sorted(rows["patient_id"].unique())[1:]
        for pid in others:
            x[f"patient[{pid}]"] = (rows["patient_id"] == pid).astype(float)
        if _by_patient(design, per_patient):
            # each patient's effect as the first patient's plus its own deviation: the fit then holds every
            # patient's own effect, and their mean (effect_weights) is the estimand, the patients' mean effect
            for k in design.treatments:
                for pid in others:
                    x[_interaction(k, pid)] = x[_column(k)] * (rows["patient_id"] == pid).astype(float)
    if design.analysis.trend:
        x["day"] = rows["day"].astype(float)
    return x


def _fit(y: np.ndarray, x: pd.DataFrame, groups: np.ndarray, cov: str, lags: int, weights: np.ndarray):
    import statsmodels.api as sm

    # a block mean of m days has variance ~ sigma^2 / m: blocks of unequal analysed length (a 7-day baseline beside
    # 14-day treatment blocks) weigh by their days; daily rows (weights 1) and equal blocks are plain OLS
    model = sm.WLS(y, x, weights=weights)
    if cov == "cluster":
        return model.fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    if cov == "hac":  # 0 lags: White's sandwich within each patient, not the model-based errors
        return model.fit(cov_type="hac-panel", cov_kwds={"groups": groups, "maxlags": lags, "df_correction": False},
                         use_t=True)
    return model.fit()


def analysed_rows(table: pd.DataFrame, outcome: str, unit: str) -> pd.DataFrame:
    """The rows the model sees: analysed days, or (unit=block) one row per analysed block (mean outcome and day)."""
    rows = table[table["analysed"] & (table["treatment"] != WASHOUT)].sort_values(["patient_id", "day"])
    if unit == "day":
        return rows
    return (rows.groupby(["patient_id", "block"], sort=True)
            .agg(treatment=("treatment", "first"), day=("day", "mean"), days=("day", "size"),
                 **{outcome: (outcome, "mean")})
            .reset_index())


class NotIdentifiable(UserError):
    """A design whose effects the model cannot separate (its design matrix is rank-deficient), or whose fit leaves no
    residual degrees of freedom to build intervals from."""


def _full_rank(x: pd.DataFrame) -> bool:
    """Whether a design matrix separates all its columns (its rank is its width)."""
    return np.linalg.matrix_rank(x.to_numpy(dtype=float)) >= x.shape[1]


def _check_rank(x: pd.DataFrame, design: Design, per_patient: bool, who: str = "") -> None:
    # statsmodels would return one of infinitely many solutions with ~0 standard errors: a silently wrong answer
    s, a = design.schedule, design.analysis
    if _full_rank(x):
        if len(x) > x.shape[1]:
            return
        # full rank, but nothing left to estimate the noise from: the intervals would be NaN
        fit = f"{who}'s own fit" if who else "the fit"
        more = f"set trial.schedule.cycles > {s.cycles}"
        if per_patient or a.unit == "day":  # per-patient fits are checked on the daily rows they fall back to
            more = "lengthen trial.schedule.block_days / baseline_days beyond trial.analysis.skip_days + 1 or " + more
        else:
            more += " or trial.analysis.unit=day"
        raise NotIdentifiable(f"{fit} has no residual degrees of freedom ({len(x)} rows for {x.shape[1]} "
                              f"parameters); {more}")
    order = s.order_text
    if not a.trend:  # not reachable with a validated schedule; kept so no fit is ever silently arbitrary
        raise NotIdentifiable(f"the design cannot separate the treatments (trial.schedule.order={order}); give "
                              "every treatment and the reference analysed days")
    common = x.drop(columns=[c for c in x.columns if ":patient[" in c])
    if _by_patient(design, per_patient) and _full_rank(common):
        # the common-effects fit would be identifiable: what is missing is a repeated treatment within a patient
        # (refused in the config by design._check_repeats; reached only by a Design built in code)
        raise NotIdentifiable(
            f"trial.analysis.effects=by_patient cannot separate each patient's own effects from the study-day trend "
            f"(no patient's blocks repeat a treatment: trial.schedule.order={order}, cycles={s.cycles}); set "
            f"trial.schedule.cycles >= 2 or trial.analysis.effects=common")
    if per_patient:
        raise NotIdentifiable(
            f"{who}'s own fit cannot separate the treatments from the study-day trend (one analysed day per "
            f"treatment); lengthen trial.schedule.block_days / baseline_days beyond trial.analysis.skip_days + 1, "
            f"set trial.schedule.cycles >= 2, or trial.analysis.trend=false")
    raise NotIdentifiable(
        f"the design cannot separate the treatments from the study-day trend (every patient's blocks come in the same "
        f"order: trial.schedule.order={order}, trial.schedule.cycles={s.cycles}); set trial.schedule.cycles >= 2, "
        f"or order: randomised with more patients, or trial.analysis.trend=false")


def check_identifiable(table: pd.DataFrame, design: Design) -> None:
    """A one-line NotIdentifiable (UserError) when the pooled or a per-patient fit of this simulated table could not
    separate the effects or would have no residual df; run on the simulated table before any image is drawn."""
    a = design.analysis
    _check_rank(_design_matrix(analysed_rows(table, "true_severity", a.unit), design, False), design, False)
    if a.unit == "day" and a.trend:
        # daily rows are full rank whenever blocks last several days, but then the trend is told from the treatments
        # only by the drift inside each block (noise, onset, carry-over): the blocks themselves must separate them
        blocks = _design_matrix(analysed_rows(table, "true_severity", "block"), design, False)
        if not _full_rank(blocks):
            _check_rank(blocks, design, False)
    for pid, rows in table.groupby("patient_id", sort=True):
        _check_rank(_design_matrix(analysed_rows(rows, "true_severity", "day"), design, True), design, True, pid)


def _patient_unit(table: pd.DataFrame, outcome: str, design: Design) -> str:
    """The unit of one patient's own fit: the analysis' unit, unless it is `block` and the patient has too few
    blocks for the model (fewer than its parameters + 1, e.g. one cycle with the trend term): then daily rows,
    with the analysis' cov (nonrobust: independent days; hac: Newey-West; cluster: nonrobust, one patient being
    one cluster); the report names the unit and cov."""
    if design.analysis.unit == "day":
        return "day"
    x = _design_matrix(analysed_rows(table, outcome, "block"), design, True)
    return "block" if _full_rank(x) and len(x) > x.shape[1] else "day"


def estimate_effects(table: pd.DataFrame, outcome: str, design: Design, truth: dict[str, float] | None = None,
                     rel_se: float = 0.0, per_patient: bool = False) -> pd.DataFrame:
    """One row per treatment and per pairwise contrast: estimate, se, low, high (1 - alpha interval), df, days
    (analysed days of the compared treatments), unit (block | day), truth, bias, covered. `table` needs
    patient_id, day, block, treatment, analysed and the outcome column. per_patient: one patient's own fit, on
    block means like the pooled one where the patient has enough blocks (daily rows of an autocorrelated series
    would give intervals that are too narrow: 0.73-0.77 coverage of 95% at AR 0.5, docs/trials.md), with
    nonrobust standard errors for `cluster` (one patient is one cluster) and for block means."""
    a = design.analysis
    if per_patient:
        unit = _patient_unit(table, outcome, design)
        cov = "nonrobust" if a.cov == "cluster" or unit == "block" else a.cov
    else:
        unit, cov = a.unit, a.cov
    rows = analysed_rows(table, outcome, unit)
    x = _design_matrix(rows, design, per_patient)
    _check_rank(x, design, per_patient, str(rows["patient_id"].iloc[0]) if per_patient and len(rows) else "")
    groups = pd.factorize(rows["patient_id"])[0]
    if cov == "cluster" and groups.max(initial=0) < 1:  # a Design built in code past the config's refusal
        raise NotIdentifiable("cov=cluster needs at least 2 patients (t with patients - 1 df); use cov=nonrobust")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' small-sample notes (a rank-deficient design is refused above)
        days = rows["days"] if "days" in rows else pd.Series(1, index=rows.index)
        res = _fit(rows[outcome].to_numpy(dtype=float), x, groups, cov, a.hac_lags, days.to_numpy(dtype=float))
    vcov, params, names = np.asarray(res.cov_params()), np.asarray(res.params), list(x.columns)
    # cluster: t with patients - 1 df (statsmodels' df_resid_inference, what its conf_int uses), not n - k
    df = getattr(res, "df_resid_inference", None)
    df = float(res.df_resid if df is None else df)
    q = stats.t.ppf(1 - a.alpha / 2, df) if res.use_t else stats.norm.ppf(1 - a.alpha / 2)
    ks = design.treatments
    contrasts = [(k, {k: 1.0}) for k in ks]
    contrasts += [(f"{ks[i]} - {ks[j]}", {ks[i]: 1.0, ks[j]: -1.0})
                  for i in range(len(ks)) for j in range(i + 1, len(ks))]
    out = []
    for label, weights in contrasts:
        w = effect_weights(names, weights, sorted(rows["patient_id"].unique()), _by_patient(design, per_patient))
        est = float(w @ params)
        se = float(np.sqrt(max(w @ vcov @ w, 0.0) + (est * rel_se) ** 2))
        t = None if truth is None else float(sum(v * truth[k] for k, v in weights.items()))
        low, high = est - q * se, est + q * se
        out.append({"effect": label, "outcome": outcome, "estimate": est, "se": se, "low": low, "high": high,
                    "df": df, "days": int(days[rows["treatment"].isin(list(weights))].sum()), "unit": unit,
                    "cov": cov,
                    "truth": t, "bias": None if t is None else est - t,
                    "covered": None if t is None else bool(low <= t <= high)})
    return pd.DataFrame(out)


def effect_weights(names: list[str], weights: dict[str, float], patients: list[str], by_patient: bool) -> np.ndarray:
    """The linear combination of the fit's parameters that estimates sum_k weights[k] * effect_k. With
    treatment-by-patient terms, effect_k is the mean over the patients of each one's own effect: the first
    patient's (the dummy) plus 1/P of every other patient's deviation."""
    w = np.zeros(len(names))
    for k, v in weights.items():
        w[names.index(_column(k))] = v
        if by_patient:
            for pid in patients[1:]:
                w[names.index(_interaction(k, pid))] = v / len(patients)
    return w


# a run-in bias is warned about above this share of the largest true effect, or above this many of the effect's
# standard errors (coverage depends on bias / se: 0.25 se costs ~1 point of a 95% interval's coverage) ...
RUNIN_BIAS_SHARE = 0.05
RUNIN_BIAS_SE = 0.25
# ... and never below this share of the scale's range (the table's 4 decimals leave residues of ~1e-5)
RUNIN_BIAS_FLOOR = 1e-3
# analysed days at the scale's bounds above this share are warned about (clipping pulls effects towards 0)
CLIPPED_SHARE = 0.05


def steady_course(table: pd.DataFrame, patients: dict) -> np.ndarray:
    """Each day's b_i + g_i t + d_ik (k the day's treatment): the course with no onset and no carry-over, on the
    table's 4 decimals (t is the 0-based study day, `day` - 1)."""
    p = [patients[pid] for pid in table["patient_id"]]
    values = [q.baseline + q.trend * (day - 1) + q.effects.get(k, 0.0)
              for q, day, k in zip(p, table["day"], table["treatment"])]
    return np.round(np.asarray(values, dtype=float), 4)


BLOCK_AR_CORRELATION = 0.1  # noise correlation across the gap between two blocks' analysed days, at most


def design_checks(table: pd.DataFrame, design: Design, patients: dict) -> tuple[pd.DataFrame, list[str]]:
    """(one row per effect, warnings) of a simulated trial, before any image is drawn.

    `runin_bias`: the analysis of the noise-free, unclipped course (`expected_severity`) minus the same analysis of
    the steady-state course (`steady_course`): exactly the onset and carry-over left after `skip_days`, for this
    draw of orders (the analysis is linear in the outcome, so drifts and baselines cancel). `se`: the effect's
    standard error on this draw's true severities, and `runin_bias_se` the ratio. `model_gap`: the steady-state
    course's estimate minus the truth (the patients' mean effect): per-patient drifts that one slope cannot
    follow, or (effects=common) effects that differ between patients weighed unequally by the trend term; part of
    the sampling error the intervals face, not a run-in matter, so not warned about, except without the trend term
    (trial.analysis.trend=false) where patients drift (trial.severity.trend): the reference block always comes
    first, so a drift shared by the patients is a bias of every draw, not sampling error.

    Warnings: a run-in bias above RUNIN_BIAS_SHARE of the largest effect or RUNIN_BIAS_SE standard errors (never
    below RUNIN_BIAS_FLOOR of the scale); patients whose own fit falls back to daily rows (unit: block, too few
    blocks); more than CLIPPED_SHARE of the analysed days at the scale's bounds."""
    truth = true_effects(design, patients)
    rows = table.assign(steady_severity=steady_course(table, patients))
    with_runin = estimate_effects(rows, "expected_severity", design, truth)
    steady = estimate_effects(rows, "steady_severity", design, truth)
    observed = estimate_effects(rows, "true_severity", design, truth)
    out = pd.DataFrame({"effect": with_runin["effect"], "truth": with_runin["truth"],
                        "runin_bias": with_runin["estimate"] - steady["estimate"],
                        "model_gap": steady["estimate"] - steady["truth"], "se": observed["se"]})
    out["runin_bias_se"] = out["runin_bias"] / out["se"].where(out["se"] > 0)
    s, a, notes = design.model, design.analysis, []
    largest = float(out["truth"].abs().max()) if len(out) else 0.0
    floor = RUNIN_BIAS_FLOOR * (s.high - s.low)

    def beyond(column):  # rows whose |value| passes the floor and a share of the largest effect or of its se
        v = out[column].abs()
        return out[(v > floor) & ((v > RUNIN_BIAS_SHARE * largest) | (v > RUNIN_BIAS_SE * out["se"]))]

    big = beyond("runin_bias")
    if len(big):
        slowest = max(max(t.tau, t.tau_off) for t in s.treatments.values())
        notes.append(
            f"trial.analysis.skip_days={a.skip_days} leaves the estimates off the steady state (run-in bias, "
            "noise-free: " + ", ".join(f"{r.effect} {r.runin_bias:+.3f} of {r.truth:+.3f}, {r.runin_bias_se:.2f} se"
                                       for r in big.itertuples())
            + f"); the slowest time constant is {slowest:g} days: set skip_days (and block_days) to about "
            f"{4 * slowest:g}+ days, or read the estimates as the analysed days' mean, not the steady state")
    drift = beyond("model_gap")
    if not a.trend and (s.trend_mean != 0 or s.trend_sd != 0) and len(drift):
        what = ("a bias of every draw that the intervals do not cover" if s.trend_mean != 0 else
                "spread (the patients' drifts, mean 0) that the intervals do not cover")
        notes.append(
            "trial.analysis.trend=false while the patients drift (trial.severity.trend mean "
            f"{s.trend_mean:g}, sd {s.trend_sd:g} per day): the reference block always comes first, so the drift "
            "lands in the effects (noise-free: " + ", ".join(f"{r.effect} {r.model_gap:+.3f} of {r.truth:+.3f}"
                                                            for r in drift.itertuples())
            + f"), {what}; set trial.analysis.trend=true")
    if a.unit == "block":
        fallback = [pid for pid, r in table.groupby("patient_id", sort=True)
                    if _patient_unit(r, "true_severity", design) == "day"]
        if fallback:
            how = ("with Newey-West standard errors (cov=hac)" if a.cov == "hac" else
                   "and assume independent days (too narrow if days are autocorrelated)")
            blocks = analysed_rows(table[table["patient_id"] == fallback[0]], "true_severity", "block")
            x = _design_matrix(blocks, design, True)
            # with the trend term, blocks that cannot separate it leave the trend told from the treatments only by
            # the drift inside each block (onset, carry-over): the weakness the pooled fit refuses on daily rows
            trend = (" and tell the study-day trend from the treatments only by the drift inside each block (onset "
                     "and carry-over included), so they can be biased" if a.trend and not _full_rank(x) else "")
            # block means a patient needs: more than the model's parameters (residual degrees of freedom)
            reference = int((blocks["treatment"] == design.reference).sum())
            per_cycle = max(1, (len(blocks) - reference) // max(1, design.schedule.cycles))
            cycles = max(design.schedule.cycles + 1, (x.shape[1] - reference) // per_cycle + 1)
            notes.append(f"{', '.join(fallback)} have too few blocks for the model on block means ({len(blocks)} "
                         f"for {x.shape[1]} parameters): their own intervals use daily rows {how}{trend}; set "
                         f"trial.schedule.cycles >= {cycles} for per-patient intervals from block means")
    if a.unit == "day" and a.trend:
        # each patient's own fit on daily rows is full rank with one order, the trend then told from the treatments
        # only by the drift inside blocks: what the pooled fit refuses, said for the patients' fits
        weak = [pid for pid, r in table.groupby("patient_id", sort=True)
                if not _full_rank(_design_matrix(analysed_rows(r, "true_severity", "block"), design, True))]
        if weak:
            notes.append(f"{', '.join(weak)}: their blocks alone cannot separate the study-day trend from the "
                         "treatments, so their own fits on daily rows tell them apart only by the drift inside each "
                         "block (onset and carry-over included) and can be biased; set trial.schedule.cycles >= 2")
    if a.unit == "day" and s.noise_ar != 0:
        # daily rows with correlated noise: the 300-trial coverage table (docs/trials.md) is the evidence, measured
        # at AR +0.5 for nonrobust and hac alone (negative AR widens nominal intervals instead: still not nominal)
        measured = {"nonrobust": "at AR 0.5 they covered 0.76-0.79 of 95%",
                    "hac": "at AR 0.5 they covered 0.84-0.88 of 95% with Newey-West"}.get(
            a.cov, "their coverage under this setting was not measured")
        notes.append(f"trial.severity.noise.ar={s.noise_ar:g} correlates neighbouring days, and the intervals on daily "
                     f"rows (trial.analysis.unit=day, cov={a.cov}) need not hold their nominal level ({measured}); "
                     "use trial.analysis.unit=block")
    # days between neighbouring blocks' analysed windows: no washout follows the baseline (every design has one,
    # longer than skip_days), so the baseline and the first block are the nearest pair whatever the washout
    gap = a.skip_days + 1
    if a.unit == "block" and abs(s.noise_ar) ** gap > BLOCK_AR_CORRELATION:
        # block means are independent only once the noise has forgotten the last block: here neighbouring windows
        # still share ar^gap of it, and the intervals (independent block means) were not measured under this
        notes.append(f"trial.severity.noise.ar={s.noise_ar:g} still correlates neighbouring blocks' analysed days "
                     f"{gap} days apart ({abs(s.noise_ar) ** gap:.2f} > {BLOCK_AR_CORRELATION}): the block means are "
                     "not independent, and the intervals need not hold their nominal level; raise "
                     "trial.analysis.skip_days")
    kept = table.loc[table["analysed"] & (table["treatment"] != WASHOUT), "true_severity"]
    at_bounds = float(((kept <= s.low) | (kept >= s.high)).mean()) if len(kept) else 0.0
    if at_bounds > CLIPPED_SHARE:
        notes.append(f"{100 * at_bounds:.0f}% of the analysed days sit at the scale's bounds [{s.low:g}, {s.high:g}]: "
                     "clipping pulls the estimates towards 0 (trial.severity.baseline.mean and the effects leave "
                     "too little room)")
    return out, notes


def patient_effects(table: pd.DataFrame, outcome: str, design: Design, rel_se: float = 0.0,
                    truths: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """estimate_effects per patient (its own N-of-1 result); `truths` = {patient_id: {treatment: effect}}."""
    frames = []
    for pid, rows in table.groupby("patient_id", sort=True):
        est = estimate_effects(rows, outcome, design, None if truths is None else truths[pid], rel_se,
                               per_patient=True)
        frames.append(est.assign(patient_id=pid))
    return pd.concat(frames, ignore_index=True)


def measured_column(true_values, groups, design: Design, model, rng: np.random.Generator):
    """Simulated calibrated readings of images at these true severities (trial scale) and the calibration used:
    raw readings from the measurement model, then a calibration refitted on a redrawn calibration set."""
    raw = model.measure(to_condition(true_values, design.scale), groups, rng)
    cal = model.recalibrated(rng)
    return from_condition(cal.to_true(raw), design.scale), cal


def coverage_study(design: Design, n_trials: int, seed: int, measurement=None, progress: bool = False
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate `n_trials` trials of `design` (no images), estimate every effect from the true severities and,
    with a measurement model (measurement.MeasurementModel), from simulated calibrated readings.

    Returns (one row per trial x outcome x effect, a summary per outcome x effect: mean truth and estimate, bias with
    its Monte-Carlo se, rmse, coverage of the 1 - alpha interval with its Monte-Carlo se, mean interval width, and
    `skipped`: simulated trials left out because their draw could not be analysed, e.g. a randomised single cycle
    in which every patient drew the same order; such a trial would be refused, so the study is conditional on it
    being analysable; `skipped_calibration`: of those, the draws whose refitted calibration line fails the rule
    calibration=auto falls back to raw readings by (measurement.calibration_problem): such a trial's measured
    estimates would not be on the true scale, so the study leaves them out rather than divide by a slope near 0)."""
    from tqdm.auto import tqdm

    frames, skipped, skipped_calibration = [], 0, 0
    for r in tqdm(range(n_trials), desc="coverage study", unit="trial", disable=not progress):
        trial_seed = 1_000_003 * (int(seed) + 1) + r
        table, patients = simulate(design, trial_seed)
        truth = true_effects(design, patients)
        try:
            check_identifiable(table, design)  # the rule kgface.trial refuses a trial by, block means included
            est = [estimate_effects(table, "true_severity", design, truth)]
        except NotIdentifiable:
            skipped += 1
            continue
        if measurement is not None:
            rng = np.random.default_rng([int(seed), 4, r])
            table["measured_severity"], cal = measured_column(table["true_severity"], table["patient_id"], design,
                                                              measurement, rng)
            if calibration_problem(cal):
                skipped, skipped_calibration = skipped + 1, skipped_calibration + 1
                continue
            est.append(estimate_effects(table, "measured_severity", design, truth, rel_se=cal.rel_se))
        frames.append(pd.concat(est, ignore_index=True).assign(trial=r))
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["outcome", "effect", "trial"])
    return runs, summarise(runs, skipped, skipped_calibration)


def summarise(runs: pd.DataFrame, skipped: int = 0, skipped_calibration: int = 0) -> pd.DataFrame:
    rows = []
    for (outcome, effect), g in runs.groupby(["outcome", "effect"], sort=False):
        n = len(g)
        bias = g["estimate"] - g["truth"]
        cov = g["covered"].astype(float).mean()
        rows.append({"outcome": outcome, "effect": effect, "trials": n, "truth": g["truth"].mean(),
                     "estimate": g["estimate"].mean(), "bias": bias.mean(),
                     "bias_mc_se": bias.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
                     "rmse": float(np.sqrt((bias ** 2).mean())), "coverage": cov,
                     "coverage_mc_se": float(np.sqrt(cov * (1 - cov) / n)),
                     "ci_width": (g["high"] - g["low"]).mean(), "skipped": skipped,
                     "skipped_calibration": skipped_calibration})
    out = pd.DataFrame(rows)
    # an empty summary (every draw left out) still says why: the counts are not lost with the rows
    out.attrs.update(skipped=skipped, skipped_calibration=skipped_calibration)
    return out
