"""Profiles learned from samples: each visible phenotype's empirical frequency in a disease, from real images of the
disease (positives) against healthy ones (negatives), read off by the evaluator's per-phenotype heads.

For a disease d and phenotype h, with r_d = detection rate of h among d's images at full stage (stage 3) or ungraded
(stage_known false, whatever their placeholder stage: a photo set's own mix of severities; every image counts once,
so a person photographed twice counts twice), r_0 = its rate among healthy images (false
positives) and tpr = the head's hit rate on labelled images that show h at full stage, the estimate is
f = clip((r_d - r_0) / (tpr - r_0), 0, 1) (the Rogan-Gladen correction).
tpr and r_0 are measured on the scored table itself (its labelled stage-3 images, its healthy images), or taken for
every head from `rates` when given (e.g. measured on the labelled panel the evaluator was checked on). The jobs take
tpr from the real set's val split (`val_rates_table`: other faces than those learned from) where it holds labelled
stage-3 faces: measured on the learned images themselves, a phenotype one disease alone shows is learned back as its
label frequency exactly (TP / n_pos over TP / n_d), whatever the head's hit rate. A head with no
labelled image showing its phenotype gets tpr 1 (photos; kgface.evaluate's report counts them), with no healthy
images r_0 is 0, and where tpr - r_0 <= 0.05 (the head rarely fires on the phenotype, or as often on healthy faces)
the estimate is the uncorrected r_d and the entry says `"corrected": false` (the report counts those heads too).

`perturbation_check` shows it is not circular: a panel rendered with changed frequencies should be learned back as
changed, not as the KG's.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import save_figure_atomic, write_json_atomic
from ..data.manifest import stage_known
from ..kg import FacialProfile
from .evaluator import Evaluator
from .inputs import HEALTHY, presence_matrix

LEARNED_FILE = "learned_profiles.json"  # beside its plot, learned_profiles.png

MIN_TPR_GAP = 0.05  # tpr - r_0 at or below this: the correction would divide by ~0, so r_d is kept uncorrected
DISAGREEMENT = 0.3  # |learned - KG| above this is listed in the report as a finding


def detector_rates(evaluator: Evaluator, table: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """(tpr, fpr) per phenotype head on a scored, labelled table (stage-3 rows with the phenotype / healthy rows)."""
    full, y = _graded_full_stage(evaluator, table)
    healthy = table[table["disease"] == HEALTHY]
    tpr, fpr = {}, {}
    for k, h in enumerate(evaluator.phenotypes):
        hit = np.array([h in d for d in full["detected"]])
        if y[:, k].sum() > 0:
            tpr[h] = float(hit[y[:, k] > 0].mean())
        if len(healthy):
            fpr[h] = float(np.mean([h in d for d in healthy["detected"]]))
    return tpr, fpr


MIN_TPR_FACES = 5  # labelled faces behind a head's hit rate below which the report names it (1 face: 0 or 1)


def _graded_full_stage(evaluator: Evaluator, table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The graded stage-3 rows a head's hit rate is measured on (a placeholder stage 3 is no grade), and their 0/1
    phenotype matrix in the evaluator's head order."""
    full = table[(table["stage"] == 3).to_numpy() & stage_known(table)]
    return full, presence_matrix(list(full["phenotypes"]), evaluator.phenotypes)


def hit_rate_faces(evaluator: Evaluator, table: pd.DataFrame) -> dict[str, int]:
    """Per phenotype head, the labelled stage-3 faces showing it that detector_rates measures its tpr on."""
    y = _graded_full_stage(evaluator, table)[1]
    return {h: int(y[:, k].sum()) for k, h in enumerate(evaluator.phenotypes) if y[:, k].sum() > 0}


def learn_profiles(evaluator: Evaluator, table: pd.DataFrame, profiles,
                   rates: tuple[dict[str, float], dict[str, float]] | None = None, stage: int = 3) -> dict:
    """{disease: {name, n_images, phenotypes: [{hpo_id, name, kg_frequency, learned_frequency, detection_rate,
    healthy_rate, tpr, corrected}]}} for every non-healthy disease of a scored real table (see module doc).

    rates: (tpr, fpr) per phenotype measured elsewhere (e.g. detector_rates on the labelled test set); by default
    they are measured on `table` itself (its labels give tpr, its healthy rows fpr)."""
    profiles = {p.disease_id: p for p in (profiles.values() if isinstance(profiles, dict) else profiles)}
    tpr, fpr = rates if rates is not None else detector_rates(evaluator, table)
    voc = set(evaluator.phenotypes)
    # photos without a grade (stage_known=False) carry a placeholder stage: they count whatever it says, so a
    # disease's ungraded photos give its frequency at the set's own mix of severities
    known = stage_known(table)
    full = (known & (table["stage"] == stage).to_numpy()) | ~known
    out = {}
    for d in sorted(set(table["disease"]) - {HEALTHY}):
        rows = table[(table["disease"] == d).to_numpy() & full]
        if not len(rows) or d not in profiles:
            continue
        entries = []
        for p in profiles[d].phenotypes:
            if p.hpo_id not in voc:
                continue
            r_d = float(np.mean([p.hpo_id in x for x in rows["detected"]]))
            r_0 = fpr.get(p.hpo_id, 0.0)
            t = tpr.get(p.hpo_id, 1.0)
            corrected = round(t - r_0, 9) > MIN_TPR_GAP  # rounded: a gap exactly at the bound is flat
            f = (r_d - r_0) / (t - r_0) if corrected else r_d
            entries.append({"hpo_id": p.hpo_id, "name": p.name, "kg_frequency": p.frequency,
                            "learned_frequency": round(float(np.clip(f, 0, 1)), 4), "detection_rate": round(r_d, 4),
                            "healthy_rate": round(r_0, 4), "tpr": round(t, 4),
                            "corrected": bool(corrected)})
        out[d] = {"name": profiles[d].name, "n_images": int(len(rows)), "phenotypes": entries}
    return out


def compare(learned: dict, truth: dict[str, dict[str, float]]) -> dict:
    """MAE and correlation between learned frequencies and reference ones ({disease: {hpo: frequency}})."""
    a, b = [], []
    for d, entry in learned.items():
        for e in entry["phenotypes"]:
            f = truth.get(d, {}).get(e["hpo_id"])
            if f is not None:
                a.append(e["learned_frequency"])
                b.append(f)
    if not a:
        return {"n": 0}
    a, b = np.array(a), np.array(b)
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"n": int(len(a)), "mae": float(np.mean(np.abs(a - b))), "pearson": corr}


def perturb_profiles(profiles: list[FacialProfile], seed: int = 0, low: float = 0.1, high: float = 0.9
                     ) -> list[FacialProfile]:
    """Copies with each phenotype's frequency replaced by `low` or `high` (at random, roughly opposite to the KG:
    frequent ones tend to become rare), so a learned profile that only echoed the KG would fail."""
    rng = np.random.default_rng(seed)
    out = []
    for prof in profiles:
        p2 = copy.deepcopy(prof)
        for ph in p2.phenotypes:
            kg = 0.5 if ph.frequency is None else ph.frequency
            ph.frequency = low if (kg >= 0.5) ^ (rng.random() < 0.2) else high
        out.append(p2)
    return out


def perturbation_check(evaluator: Evaluator, table: pd.DataFrame, perturbed: list[FacialProfile],
                       original: list[FacialProfile], rates: tuple[dict, dict]) -> dict:
    """Learn profiles from a scored table of images rendered with `perturbed` frequencies, using detector rates
    measured on the original panel (`rates`, so no label of the perturbed images is used); compare them with the
    perturbed truth and with the original KG frequencies (recovery means: closer to the former)."""
    learned = learn_profiles(evaluator, table, perturbed, rates=rates)
    kg_of = {p.disease_id: {x.hpo_id: x.frequency for x in p.phenotypes} for p in original}
    for d, entry in learned.items():  # learn_profiles wrote the perturbed truth there; the field names the KG's
        for e in entry["phenotypes"]:
            e["perturbed_frequency"], e["kg_frequency"] = e["kg_frequency"], kg_of.get(d, {}).get(e["hpo_id"])
    truth = {p.disease_id: {x.hpo_id: x.frequency for x in p.phenotypes} for p in perturbed}
    kg = {d: {h: f for h, f in fs.items() if f is not None} for d, fs in kg_of.items()}
    # both MAEs over the same pairs: a KG phenotype without a frequency has a perturbed one but no KG one
    paired = {d: {h: f for h, f in fs.items() if h in kg.get(d, {})} for d, fs in truth.items()}
    return {"vs_perturbed": compare(learned, paired), "vs_kg": compare(learned, kg),
            "detection": specificity(learned, truth), "learned": learned}


def specificity(learned: dict, truth: dict[str, dict[str, float]]) -> dict:
    """Mean raw detection rate of a disease's phenotype where the perturbed panel draws it in most individuals
    (frequency >= 0.5) and where it draws it in few: a head that reads the phenotype fires far more often in the
    first case; one that reads a generally abnormal face fires about equally often in both."""
    drawn, absent = [], []
    for d, entry in learned.items():
        for e in entry["phenotypes"]:
            f = truth.get(d, {}).get(e["hpo_id"])
            if f is not None:
                (drawn if f >= 0.5 else absent).append(e["detection_rate"])
    return {"rate_where_drawn": float(np.mean(drawn)) if drawn else None, "n_drawn": len(drawn),
            "rate_where_absent": float(np.mean(absent)) if absent else None, "n_absent": len(absent)}


def plot_learned(learned: dict, path: str | Path) -> Path:
    """Scatter of KG frequency (x) vs learned frequency (y), one colour and marker per disease (the default cycle's
    10 colours repeated past the tenth disease: the 13-disease panel had two pairs that read as one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>Ph*"
    for k, (d, entry) in enumerate(learned.items()):
        pts = [(e["kg_frequency"], e["learned_frequency"]) for e in entry["phenotypes"] if e["kg_frequency"] is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, s=18, label=entry["name"][:24], color=colours[k % len(colours)],
                       marker=markers[k % len(markers)])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("KG frequency")
    ax.set_ylabel("learned frequency (per-phenotype heads, stage 3 or ungraded)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=6, loc="upper left", ncol=1)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def disagreements(learned: dict, threshold: float = DISAGREEMENT, show: int = 5) -> str:
    """The report's line on where the faces and the KG disagree: how many corrected estimates lie more than
    `threshold` from the KG's frequency, and the largest gaps (disease, phenotype, KG -> learned)."""
    gaps = sorted(((abs(e["learned_frequency"] - e["kg_frequency"]), entry["name"], e)
                   for entry in learned.values() for e in entry["phenotypes"]
                   if e["corrected"] and e["kg_frequency"] is not None),  # None: the KG gives no frequency
                  key=lambda g: -g[0])
    far = [g for g in gaps if g[0] > threshold]
    if not far:
        return (f"learned vs KG frequencies: none of the {len(gaps)} corrected estimates with a KG frequency lies "
                f"more than {threshold:g} from it")
    listed = "; ".join(f"{name}, {e['name']}: KG {e['kg_frequency']:.2f} -> learned {e['learned_frequency']:.2f}"
                       for _, name, e in far[:show])
    return (f"learned vs KG frequencies: {len(far)} of {len(gaps)} corrected estimates with a KG frequency lie more "
            f"than {threshold:g} from it (findings to check: the faces, the KG or the head); largest: {listed}")


def write_learned(learned: dict, out_dir: str | Path, phenotype_heads: str | None = None,
                  learned_from: str | None = None, tpr_from: str | None = None) -> Path:
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / LEARNED_FILE, {"schema": "kgface.learned_profiles/1",
                                               "method": __doc__.split("\n\n")[1].strip(),
                                               # profile.source=learned warns: a test statistic in training
                                               "learned_from": f"the test split of {learned_from}" if learned_from
                                               else "the real set's test split",
                                               # 'all': heads that also saw diseased faces (can echo the KG)
                                               "phenotype_heads": phenotype_heads,
                                               "tpr_from": tpr_from,  # None: no labelled face (tpr taken as 1)
                                               "diseases": learned})
    plot_learned(learned, (out_dir / LEARNED_FILE).with_suffix(".png"))
    return out_dir / LEARNED_FILE


def earlier_learned_note(out_dir: str | Path) -> list[str]:
    """A report that learns no profiles in a folder holding an earlier report's: those are left in place (a run's
    profile.learned may name them), but not passed off as this report's."""
    path = Path(out_dir) / LEARNED_FILE
    earlier = [p.name for p in (path, path.with_suffix(".png")) if p.is_file()]
    return [f"{' and '.join(earlier)} in this folder come from an earlier report, not from this one"] if earlier else []


def val_rates_table(evaluator: Evaluator, manifest) -> pd.DataFrame | None:
    """The real set's val faces that can give head hit rates (graded stage 3 with phenotype labels), scored; None
    when there are none (photos carry no phenotype labels)."""
    from ..data.manifest import read_manifest

    df = read_manifest(manifest)[0]
    rows = df[(df["split"] == "val").to_numpy() & (df["stage"] == 3).to_numpy() & stage_known(df)
              & np.array([bool(p) for p in df["phenotypes"]], dtype=bool)]
    return evaluator.score(rows) if len(rows) else None


def learn_and_write(evaluator: Evaluator, table: pd.DataFrame, profiles, out_dir: str | Path,
                    learned_from: str | None = None, rates_table: pd.DataFrame | None = None
                    ) -> tuple[list[str], list[tuple[str, Path]]]:
    """Profiles learned from a scored real test table, written to out_dir (learned_profiles.json + .png). Head hit
    rates (tpr) from `rates_table` (scored labelled faces not learned from: `val_rates_table`) when given, else from
    the same table's labelled stage-3 faces; false positives from the table's healthy faces.
    Returns the report's notes on how far the estimates can be trusted, and write_report's extra_figures: the plot as
    [(caption, path)], or [] when nothing was learned (no diseased stage-3 image of a profiled disease)."""
    tpr, fpr = detector_rates(evaluator, table)
    if rates_table is not None:  # the hit rates of faces not learned from replace the table's own
        tpr = detector_rates(evaluator, rates_table)[0]
    rates = (tpr, fpr)
    learned = learn_profiles(evaluator, table, profiles, rates=rates)
    if not learned:
        return ["no learned_profiles.json: no diseased real test image of a profiled disease at stage 3 "
                "(or ungraded)"] + earlier_learned_note(out_dir), []
    faces = hit_rate_faces(evaluator, rates_table if rates_table is not None else table)
    for entry in learned.values():  # how many faces each tpr rests on: one face gives 0 or 1
        for e in entry["phenotypes"]:
            e["tpr_faces"] = faces.get(e["hpo_id"], 0)
    tpr_from = (f"the val split's {len(rates_table)} labelled stage-3 faces" if rates_table is not None else
                "the same test faces' labels (a phenotype one disease alone shows is then learned back as its label "
                "frequency)" if tpr else None)
    written = write_learned(learned, out_dir, str(evaluator.cfg.get("phenotype_heads", "all")), learned_from,
                            tpr_from)
    notes = ["learned_profiles.json: phenotype frequencies learned from the real test images"
             + (f"; head hit rates (tpr) from {tpr_from}" if tpr_from else "")]
    used = {e["hpo_id"] for entry in learned.values() for e in entry["phenotypes"]}
    untested = used - set(rates[0])
    if untested:  # no labelled stage-3 face shows the phenotype: learn_profiles takes the head's tpr as 1
        which = f"all {len(used)}" if untested == used else f"{len(untested)} of {len(used)}"
        notes.append(f"{which} learned phenotypes have no labelled stage-3 face showing them: their "
                     "heads' hit rate (tpr) is taken as 1, so their learned frequencies are detection rates "
                     "corrected for healthy faces' false positives only (none where the set has no healthy "
                     "faces; lower bounds where a head misses)")
    few = sorted({(faces[h], h) for h in used & set(rates[0]) if faces.get(h, 0) < MIN_TPR_FACES})
    if few:
        notes.append(f"{len(few)} of {len(used)} learned phenotypes' head hit rates rest on fewer than "
                     f"{MIN_TPR_FACES} labelled faces (e.g. " + ", ".join(f"{h}: {n}" for n, h in few[:3])
                     + "; `tpr_faces` in the file): their corrections are coarse (one face gives a hit rate of 0 or 1)")
    flat = {e["hpo_id"] for entry in learned.values() for e in entry["phenotypes"] if not e["corrected"]}
    if flat:  # hit rate within MIN_TPR_GAP of the healthy rate: dividing by it would blow the estimate up
        notes.append(f"{len(flat)} of {len(used)} learned phenotypes' heads hit faces showing the phenotype "
                     f"at most {MIN_TPR_GAP:g} more often than healthy faces (they rarely fire on it, or fire "
                     "as often on healthy faces): their learned frequencies are uncorrected detection rates "
                     "(\"corrected\": false)")
    notes.append(disagreements(learned))
    heads = str(evaluator.cfg.get("phenotype_heads", "all"))
    if heads == "zero_shot":
        notes.append("the phenotype heads are zero-shot (evaluator.phenotype_heads=zero_shot: each phenotype's "
                     "prompts against a healthy face's, no label taught them): their probabilities are "
                     "uncalibrated, and a CLIP whose captions named a disease beside its phenotypes can echo the KG")
    elif heads != "atlas":
        notes.append("the phenotype heads also learned from diseased faces (evaluator.phenotype_heads=all): a head "
                     "can fire on its disease's look rather than on its phenotype, so these frequencies can echo "
                     "the KG (such heads fail the perturbation check, docs/evaluation.md); heads fitted on a "
                     "phenotype atlas (data.atlas.faces > 0, evaluator.phenotype_heads=atlas) follow the faces")
    return notes, [("Profiles learned from the real test images beside the KG's frequencies",
                    written.with_suffix(".png"))]
