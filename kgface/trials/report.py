"""The trial's figures and report.md: daily series with image thumbnails along them, the effect estimates from true
and from image-measured severities, the calibration of the instrument, the coverage study, a GIF per patient."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..evaluation.report import md_text
from .schedule import WASHOUT

TREATMENT_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
REFERENCE_COLOUR = "#E5E5E5"
WASHOUT_COLOUR = "#F7F7F7"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(treatments, reference: str) -> dict[str, str]:
    out = {t: TREATMENT_COLOURS[i % len(TREATMENT_COLOURS)] for i, t in enumerate(treatments)}
    return {reference: REFERENCE_COLOUR, WASHOUT: WASHOUT_COLOUR, **out}


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.permute(1, 2, 0).numpy()


def thumbnail_days(rows: pd.DataFrame, most: int = 12) -> list[int]:
    """Row positions (within one patient's rows) to show as thumbnails: the last day of every block, thinned to at
    most `most`, always with the first day."""
    last = rows.reset_index(drop=True).groupby("block").tail(1).index.tolist()
    picks = [0] + last
    if len(picks) > most:
        picks = [picks[int(round(i))] for i in np.linspace(0, len(picks) - 1, most)]
    return sorted(set(picks))


MEASURED = "measured from the image"


def measured_groups(rows: pd.DataFrame) -> list[tuple[str, np.ndarray, str]]:
    """(legend label, row mask, marker) of the measured dots: analysed days, the run-in days each block's start
    drops, washout days (untreated gaps, never analysed): a washout day is not labelled run-in."""
    washout = (rows["treatment"] == WASHOUT).to_numpy()
    kept = rows["analysed"].to_numpy(dtype=bool)
    return [(MEASURED, kept, "o"), ("measured (run-in, not analysed)", ~kept & ~washout, "o"),
            ("measured (washout, not analysed)", washout & ~kept, "s")]


MAX_SERIES_PANELS = 24  # series.png's patients: at 3.4 in and 110 dpi each, ~176 would pass Agg's 65,536-px limit


def series_patients(table: pd.DataFrame) -> list[str]:
    """The patients series.png draws: the first MAX_SERIES_PANELS (all rows stay in trial.csv and the GIFs)."""
    return list(dict.fromkeys(table["patient_id"]))[:MAX_SERIES_PANELS]


def plot_series(table: pd.DataFrame, images: dict[str, torch.Tensor], baselines: dict[str, torch.Tensor],
                treatments, reference: str, path: Path, measured: str = "measured_severity") -> Path:
    """One panel per patient: the blocks shaded by treatment, the true daily severity (line), the noise-free course
    (dashed), the image-measured severity (dots) and, above it, thumbnails of that day's image."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    colours = _colours(treatments, reference)
    patients = series_patients(table)
    fig, axes = plt.subplots(len(patients), 1, figsize=(12, 3.4 * len(patients) + 0.6), squeeze=False)
    for ax, pid in zip(axes[:, 0], patients):
        rows = table[table["patient_id"] == pid].reset_index(drop=True)
        for _, b in rows.groupby("block"):
            ax.axvspan(b["day"].min() - 0.5, b["day"].max() + 0.5, color=colours.get(b["treatment"].iloc[0], "white"),
                       alpha=0.35, lw=0)
            ax.text((b["day"].min() + b["day"].max()) / 2, 0.97, b["treatment"].iloc[0], ha="center",
                    va="top", fontsize=8, transform=ax.get_xaxis_transform())
        ax.plot(rows["day"], rows["expected_severity"], "k--", lw=1, label="model (no noise)")
        ax.plot(rows["day"], rows["true_severity"], "k-", lw=1.5, label="true severity")
        if measured in rows:
            for label, keep, style in measured_groups(rows):
                if keep.any():
                    ax.plot(rows["day"][keep], rows[measured][keep], style, color="#C44E52", ms=3.5, zorder=3,
                            label=label, **({} if label == MEASURED else {"mfc": "none"}))
        ax.set_xlim(rows["day"].min() - 0.5, rows["day"].max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("severity")
        ax.text(0.005, 0.03, f"{pid} ({rows['identity'].iloc[0]})", transform=ax.transAxes, fontsize=8,
                va="bottom", zorder=1, bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 1})
        side = images[pid].shape[-1]
        zoom = 44.0 / side
        for k in thumbnail_days(rows):
            box = OffsetImage(_hwc(images[pid][k]), zoom=zoom)
            ax.add_artist(AnnotationBbox(box, (rows["day"][k], 1.0), xycoords=("data", "axes fraction"),
                                         box_alignment=(0.5, -0.05), frameon=True, pad=0.1, annotation_clip=False))
        if pid in baselines:
            ax.add_artist(AnnotationBbox(OffsetImage(_hwc(baselines[pid]), zoom=zoom), (-0.06, 1.0),
                                         xycoords="axes fraction", box_alignment=(0.5, -0.05), frameon=True,
                                         pad=0.1, annotation_clip=False))
            ax.text(-0.06, 1.0, "baseline\nphoto", transform=ax.transAxes, ha="center", va="top", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("study day")
    fig.tight_layout(h_pad=5.0, rect=(0.05, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_effects(estimates: pd.DataFrame, path: Path, off_scale: tuple[str, ...] = ()) -> Path:
    """Each effect's estimate and interval from true and from measured severities, with the simulated truth (not
    beside an outcome in `off_scale`, raw readings on another scale, labelled so)."""
    plt = _plt()
    effects = list(dict.fromkeys(estimates["effect"]))
    outcomes = list(dict.fromkeys(estimates["outcome"]))
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.7 * len(effects) * len(outcomes)))
    y, ticks, labels = 0, [], []
    for effect in effects:
        for j, outcome in enumerate(outcomes):
            r = estimates[(estimates["effect"] == effect) & (estimates["outcome"] == outcome)].iloc[0]
            colour = "k" if outcome == "true_severity" else "#C44E52"
            ax.errorbar(r["estimate"], y, xerr=[[r["estimate"] - r["low"]], [r["high"] - r["estimate"]]], fmt="o",
                        color=colour, capsize=3)
            if r["truth"] is not None and not pd.isna(r["truth"]) and outcome not in off_scale:
                ax.plot([r["truth"]], [y], "|", color="#55A868", ms=16, mew=2)
            ticks.append(y)
            raw = ", raw units" if outcome in off_scale else ""
            labels.append(f"{effect}  ({outcome.replace('_severity', '')}{raw})")
            y -= 1
        y -= 0.5
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("effect (vs the reference; contrasts A - B as named; green bar = simulated truth)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibration_line(calset: pd.DataFrame, cal) -> tuple[np.ndarray, str]:
    """Where to draw the applied line and its legend: the line is fitted on the diseased images alone (true > 0),
    so it is drawn over their range, not through the healthy points it never saw; a refused calibration's line
    (through every image) over all of them."""
    from .measurement import diseased_rows

    fitted = diseased_rows(calset)["true"]
    within = len(fitted) > 0 and cal.n == len(fitted)
    if not within:
        fitted = calset["true"]
    xs = np.linspace(float(fitted.min()), float(fitted.max()), 20) if len(fitted) else np.linspace(0, 3, 20)
    return xs, (f"raw = {cal.intercept:.2f} + {cal.slope:.2f} true (R^2 {cal.r2:.2f}; fitted on the {cal.n} "
                + ("diseased images, true > 0)" if within else "images)"))


def plot_calibration(calset: pd.DataFrame, cal, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for disease, g in calset.groupby("disease"):
        ax.plot(g["true"], g["raw"], "o", ms=4, alpha=0.7, label=disease)
    xs, label = calibration_line(calset, cal)
    ax.plot(xs, cal.intercept + cal.slope * xs, "k-", lw=1, label=label)
    ax.plot(xs, xs, ":", color="grey", lw=1, label="identity")
    ax.set_xlabel("true severity (calibration image)")
    ax.set_ylabel("evaluator severity (raw)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def patient_gif(images: torch.Tensor, labels: list[str], path: Path, duration_ms: int = 250) -> Path:
    """The patient's days as an animated GIF, each frame labelled (day, treatment, severity)."""
    from PIL import Image, ImageDraw

    side = max(images.shape[-1], 96)
    frames = []
    for img, label in zip(images, labels):
        frame = Image.new("RGB", (side, side + 14), "white")
        frame.paste(Image.fromarray(_hwc(img)).resize((side, side)), (0, 0))
        ImageDraw.Draw(frame).text((2, side + 1), label, fill="black")
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    # text from the data (a treatment name, a patient id) made safe in a table cell, as the evaluation report does
    return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else md_text(v)


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def randomisation_note(schedule: dict, trend: bool = True) -> str:
    """What the design randomises: the reference block always comes first (a before/after comparison); only
    order=randomised with two or more treatments makes the contrasts between treatments randomised ones."""
    note = ("The reference block comes first and is not randomised: effects against it are before/after "
            + ("comparisons that rest on the trend term" if trend else
               "comparisons that assume no drift over the study (trial.analysis.trend=false: no trend term)"))
    if schedule["order"] == "randomised" and len(schedule["treatments"]) > 1:
        return note + "; contrasts between treatments (A - B) are the randomised ones."
    if len(schedule["treatments"]) > 1:
        order = schedule["order"] if isinstance(schedule["order"], str) else "[" + ", ".join(schedule["order"]) + "]"
        return (note + f"; so are the contrasts between treatments: every patient follows one fixed order "
                f"(order={order}), and period effects are not balanced by randomisation.")
    return note + "."


def effects_table(estimates: pd.DataFrame, alpha: float, off_scale: tuple[str, ...] = ()) -> str:
    """One line per effect: truth, then the estimate [interval] and bias from true and from measured severities;
    an outcome in `off_scale` (raw readings, not on the truth's scale) has no bias (a dash)."""
    level = f"{100 * (1 - alpha):g}%"
    outcomes = list(dict.fromkeys(estimates["outcome"]))
    head = ["effect", "simulated truth"]
    for o in outcomes:
        head += [f"{o}: estimate [{level} CI]", f"{o}: bias"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for effect in dict.fromkeys(estimates["effect"]):
        rows = estimates[estimates["effect"] == effect]
        cells = [md_text(effect), _fmt(rows["truth"].iloc[0])]
        for o in outcomes:
            r = rows[rows["outcome"] == o].iloc[0]
            cells += [f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]",
                      "-" if o in off_scale else _fmt(r["bias"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_caveat(measurement: dict) -> str | None:
    """Why the measured estimates are not on the true scale (raw readings), or None when they are calibrated."""
    if measurement.get("problem"):
        return f"{measurement['problem']}; the analysis used the raw readings (calibration auto fell back)"
    if measurement.get("calibration_mode") == "none":
        return "calibration=none; the analysis used the evaluator's raw readings"
    return None


def recovery(estimates: pd.DataFrame, off_scale: tuple[str, ...] = ()) -> str:
    """One line per outcome: for each effect, whether the interval holds the truth and whether it excludes 0; for
    an outcome in `off_scale` (raw readings, not on the truth's scale) only the latter."""
    lines = []
    for outcome, g in estimates.groupby("outcome", sort=False):
        parts = [(f"{md_text(r.effect)}: " if outcome in off_scale else
                  f"{md_text(r.effect)}: truth {'inside' if r.covered else 'outside'} the interval, ")
                 + f"{'distinguished from' if r.low > 0 or r.high < 0 else 'not distinguished from'} no effect"
                 for r in g.itertuples()]
        lines.append(f"- From `{outcome}`: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _effects_vary(design: dict) -> bool:
    """Whether patients' effects differ (some treatment's sd > 0): only then does a trial's sample-mean truth differ
    from the population mean a clustered interval aims at."""
    treatments = (design.get("severity") or {}).get("treatments", {})
    return any(float((t or {}).get("sd") or 0) > 0 for t in treatments.values())


def write_report(path: Path, summary: dict, estimates: pd.DataFrame, per_patient: pd.DataFrame,
                 study: pd.DataFrame | None, figures: dict[str, str]) -> Path:
    """report.md: the set-up, the effects from true and measured severities, per-patient results, the instrument's
    calibration, the coverage study and the figures; `summary` is trial.json's content."""
    d, a = summary["design"], summary["design"]["analysis"]
    m = summary["measurement"]
    caveat = measured_caveat(m)
    shown_note = ("" if int(d["patients"]) <= MAX_SERIES_PANELS else
                  f" The first {MAX_SERIES_PANELS} of {d['patients']} patients are drawn (one figure of all would "
                  "pass matplotlib's size limit); every patient is in trial.csv.")
    order = d["schedule"]["order"]
    order = "[" + ", ".join(map(str, order)) + "]" if isinstance(order, (list, tuple)) else order
    fitted = "block means weighted by their days" if a["unit"] == "block" else "daily rows"
    lines = [f"# N-of-1 trial: {md_text(summary['disease']['name'])} ({md_text(summary['disease']['id'])})", "",
             f"Run `{summary['run']}`; {d['patients']} patients x {summary['days_per_patient']} days = "
             f"{summary['images']} images; seed {summary['seed']}; scale `{d['scale']}`.", "",
             "## Design", "",
             f"- Schedule: {d['schedule']['reference']} {d['schedule']['baseline_days']} days, then "
             f"{d['schedule']['cycles']} cycle(s) of {', '.join(d['schedule']['treatments'])} "
             f"(order `{order}`), {d['schedule']['block_days']} days per block, "
             f"{d['schedule']['washout_days']} washout days between treatment blocks.",
             f"- Severity model (kgface/trials/severity.py): baseline ~ N({d['severity']['baseline_mean']}, "
             f"{d['severity']['baseline_sd']}), drift ~ N({d['severity']['trend_mean']}, {d['severity']['trend_sd']})"
             f" per day, noise sd {d['severity']['noise_sd']} (AR {d['severity']['noise_ar']}).",
             "- Treatments: " + "; ".join(f"{k}: effect {t['effect']} (sd {t['sd']}), tau {t['tau']} d, "
                                          f"tau_off {t['tau_off']} d" for k, t in d['severity']['treatments'].items()),
             f"- Images: SDEdit of each patient's baseline face, strength {summary['images_settings']['strength']}, "
             f"one noise per patient, mask {md_text(summary['images_settings']['mask'])}, "
             f"{summary['images_settings']['steps']} steps, guidance {summary['images_settings']['guidance']}.",
             f"- Analysis (kgface/trials/analysis.py): least squares ({fitted}), unit "
             f"`{a['unit']}`, patient intercepts, "
             + ("treatment-by-patient terms (`effects: by_patient`: the estimates are the patients' mean effects), "
                if a.get("effects") == "by_patient" else "one effect per treatment for every patient (`effects: "
                "common`), ") +
             f"{'a linear study-day term, ' if a['trend'] else ''}SE `{a['cov']}`, the first {a['skip_days']} "
             f"days of every block left out; {100 * (1 - a['alpha']):g}% intervals.",
             "- Run-in bias (the onset and carry-over left after the skipped days, noise-free, in the effects' "
             "standard errors): " + (", ".join(f"{md_text(r['effect'])} {r['runin_bias']:+.3f} "
                                               f"({_fmt(r['runin_bias_se'], 2)} se)"
                                               for r in summary["runin_bias"])
                                     if summary.get("runin_bias") else "not computed") + ".", ""]
    for note in summary.get("design_warnings") or []:
        lines += [f"**Design warning**: {md_text(note)}.", ""]
    lines += ["## Effects", "",
             "Steady-state differences from the reference; the truth is the mean of the simulated patients' own "
             "effects. `true_severity`: the simulated daily severities (a sanity check of the analysis); "
             "`measured_severity`: the evaluator's reading of each day's image"
             + (", uncalibrated." if caveat else ", calibrated to the true scale.")
             + " " + randomisation_note(d["schedule"], bool(a.get("trend", True))), "",
             effects_table(estimates, a["alpha"], ("measured_severity",) if caveat else ()), "",
             recovery(estimates, ("measured_severity",) if caveat else ()), ""]
    if caveat:
        lines += [f"**The measured estimates are not on the true scale**: {md_text(caveat)}, so their bias and whether "
                  "their intervals hold the truth are not meaningful.", ""]
    lines += [f"![effects]({figures['effects']})", "", "## Daily series", "",
              "Lines: true severity (solid) and the model's noise-free course (dashed); dots: severity measured "
              "from that day's image (open circles: run-in days, open squares: washout days, neither analysed). "
              "Thumbnails: the image on the first day and on the last day of every block (at most 12 a patient, "
              "evenly thinned); left, the baseline photo." + shown_note, "", f"![series]({figures['series']})", ""]
    if figures["gifs"]:
        lines += ["One GIF per patient (each frame: day, treatment and the true severity): "
                  + ", ".join(f"[{p}]({g})" for p, g in figures["gifs"].items()), ""]
    lines += [
              "## Per patient", "",
              "Each patient's own estimates: estimate [interval] from true / measured, fitted to the patient's "
              "block means (`unit` block; df = blocks - parameters, few: wide intervals are what one patient's "
              "blocks support) or, with too few blocks or `unit: day`, to its daily rows (`unit` day; with `cov` "
              "nonrobust those intervals assume independent days and are too narrow for autocorrelated ones, "
              "with hac they are Newey-West).", "",
              _table(per_patient, ["patient_id", "effect", "unit", "cov", "df", "truth", "true_estimate", "true_low",
                                   "true_high", "measured_estimate", "measured_low", "measured_high"]), "",
              "## Measurement", "",
              f"- Evaluator: {md_text(m['evaluator'])}.",
              f"- Calibration ({m['calibration_mode']}): {md_text(m['calibration_set'])}: "
              + (", ".join(f"{k} {v}" for k, v in m["calibration"].items()) if m.get("calibration") else "none")
              + (f" (fitted, not applied: {md_text(m['problem'])})" if m.get("calibration") and m.get("problem")
                 else "") + ".",
              f"- On this trial's images: correlation of measured and true severity {_fmt(m['trial_correlation'])}, "
              f"mean absolute error {_fmt(m['trial_mae'])} "
              + ("(raw readings against the true scale: not an error of the instrument alone)." if caveat
                 else "(scale units).") + "", ""]
    if "calibration" in figures:
        lines += [f"![calibration]({figures['calibration']})", ""]
    lines += ["## Coverage study", ""]
    if study is None or study.empty:
        lines += [summary.get("study_note", "Not run (trial.analysis.study_trials=0)."), ""]
    else:
        s = summary["study"]
        lines += [f"{s['trials']} trials of this design simulated without images (seed {s['seed']}); "
                  + ("the measured severities come from the measurement model fitted on the calibration set's "
                     "diseased images (raw = "
                     "a + b true + patient offset + resampled residual, the calibration refitted per trial: "
                     "kgface/trials/measurement.py). It checks the analysis under the instrument's measured noise; "
                     "it does not contain the generator's own errors, which the trial above shows."
                     if not summary.get("study_note") else summary["study_note"]), "",
                  "Each simulated trial's truth is the mean effect of the patients it drew (a sample mean)"
                  + ("; `cov: cluster` aims at the population's mean effect, so where patients' effects vary (a "
                     "treatment's sd > 0) its coverage against this truth can read above nominal"
                     if a["cov"] == "cluster" and _effects_vary(d) else "") + ".", "",
                  _table(study, ["outcome", "effect", "trials", "truth", "estimate", "bias", "bias_mc_se", "rmse",
                                 "coverage", "coverage_mc_se", "ci_width"]), ""]
        skipped = int(study["skipped"].iloc[0]) if "skipped" in study else 0
        by_line = int(study["skipped_calibration"].iloc[0]) if "skipped_calibration" in study else 0
        if skipped - by_line:
            lines += [f"{skipped - by_line} simulated trials could not be analysed (not identifiable, e.g. every "
                      "patient's blocks in one order with the trend term, or no residual degrees of freedom) and "
                      "are left out, as such a trial would be refused.", ""]
        if by_line:
            lines += [f"{by_line} simulated trials drew a calibration line too flat to apply (the rule that makes "
                      "calibration=auto keep raw readings) and are left out: the study is conditional on a usable "
                      "line.", ""]
    lines += ["## Files", "", "- `trial.csv`, `trial.parquet`: one row per patient-day (columns in docs/trials.md).",
              "- `patients.csv`: each patient's baseline face, drawn parameters and image seed.",
              f"- `effects.csv`, `patient_effects.csv`{'' if study is None or study.empty else ', `study.csv`'}: "
              "the tables above; `trial.json`: everything as data.",
              "- `images/<patient>/`: the daily images; `baselines/`: the baseline faces"
              + ("; `gifs/`: one animation per patient." if figures["gifs"] else "."), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------- writing
def plain(obj):
    """JSON-ready: numpy scalars and arrays, tuples and NaN (-> None) made plain."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def design_dict(design) -> dict:
    d = dataclasses.asdict(design)
    d["severity"] = d.pop("model")
    d["start_date"] = design.start_date.isoformat()
    return plain(d)


def _pil(img: torch.Tensor):
    from PIL import Image

    return Image.fromarray(img.permute(1, 2, 0).numpy())


# What a trial writes into OUT: replaced as a whole on every run (anything else in OUT, e.g. Hydra's .hydra/, stays)
MANAGED = ("trial.csv", "trial.parquet", "trial.json", "report.md", "series.png", "effects.png", "calibration.png",
           "patients.csv", "effects.csv", "patient_effects.csv", "study.csv", "images", "baselines", "gifs")


def write_outputs(out_dir: Path, table: pd.DataFrame, images: dict, baselines: dict, tables: dict,
                  summary: dict, draw, gifs: bool) -> Path:
    """Write into a staging folder, then move it in: trial.csv last, so it only names files that exist.
    A previous trial's outputs in OUT (MANAGED) are removed first, its trial.csv before anything else: a rerun never
    leaves the old table naming new images, nor old patients' images, GIFs, study.csv or calibration.png that this
    run does not write. `images` / `baselines`: per patient; `tables`: name -> DataFrame (None: skipped);
    `draw(folder)` writes the figures and report.md."""
    from ..cache import atomic_path, move_in, staging_folder, write_json_atomic

    with staging_folder(out_dir, ".trial-") as staging:
        for pid, imgs in images.items():
            (staging / "images" / pid).mkdir(parents=True)
            rows = table[table["patient_id"] == pid]
            for rel, img in zip(rows["image"], imgs):
                _pil(img).save(staging / rel)
            (staging / "baselines").mkdir(exist_ok=True)
            _pil(baselines[pid]).save(staging / "baselines" / f"{pid}.png")
            if gifs:
                (staging / "gifs").mkdir(exist_ok=True)
                labels = [f"{pid} d{d} {t} true {s:.2f}" for d, t, s in
                          zip(rows["day"], rows["treatment"], rows["true_severity"])]
                patient_gif(imgs, labels, staging / "gifs" / f"{pid}.gif")
        for name, df in tables.items():
            if df is not None:
                df.to_csv(staging / f"{name}.csv", index=False)
        table.to_parquet(staging / "trial.parquet", index=False)
        draw(staging)
        write_json_atomic(staging / "trial.json", plain(summary))
        move_in(staging, out_dir, MANAGED)  # trial.csv first: from here until the new one lands, OUT has no table
        with atomic_path(out_dir / "trial.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, date_format="%Y-%m-%d")
        return out_dir / "trial.csv"
