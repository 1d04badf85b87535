"""The evaluation report: OUT/metrics.json, OUT/report.md and OUT/report.html with matplotlib PNGs
(confusion matrix, stage scatter, per-phenotype AUROC bars, grids of best and worst cases)."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_path, save_figure_atomic, write_json_atomic, write_text_atomic
from ..data.manifest import stage_known
from .evaluator import ScoredSet
from .inputs import HEALTHY, load_images
from .validity import generated_headline_rows, headline_rows, transform_rows


def _subset(scored: ScoredSet, mask: np.ndarray) -> ScoredSet:
    """The rows of a scored set under `mask` (table, features and images alike)."""
    m = np.asarray(mask, bool)
    images = None if scored.images is None else scored.images[np.flatnonzero(m)]
    return ScoredSet(scored.table[m].reset_index(drop=True), scored.features[m], images)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def md_text(value) -> str:
    """Text from the data (a manifest path, a disease name, a note quoting them) made safe in a Markdown line or
    table cell: a `|` ended the cell, and `<...>` passed through as HTML."""
    return str(value).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def cell_text(share: float) -> str:
    """A confusion cell's share in two decimals without the leading zero (.87), "1" for a share that rounds to 1
    (0.996 was cut to ".00" from "1.00")."""
    text = f"{share:.2f}"
    return "1" if text == "1.00" else text.lstrip("0")


def plot_confusion(table: pd.DataFrame, classes: list[str], names: dict, path: Path, label: str = "disease",
                   title: str = "") -> Path:
    plt = _plt()
    ci = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)))
    for t, p in zip(table[label], table["pred_disease"]):
        if t in ci:
            m[ci[t], ci[p]] += 1
    m = m / m.sum(1, keepdims=True).clip(1)
    fig, ax = plt.subplots(figsize=(0.45 * len(classes) + 3, 0.45 * len(classes) + 2.5))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ticks = [names.get(c, c)[:22] for c in classes]
    ax.set_xticks(range(len(classes)), ticks, rotation=70, fontsize=7, ha="right")
    ax.set_yticks(range(len(classes)), ticks, fontsize=7)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j] >= 0.05:
                ax.text(j, i, cell_text(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true" if label == "disease" else "requested")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_stage_scatter(table: pd.DataFrame, path: Path, stage: str = "stage", title: str = "") -> Path:
    plt = _plt()
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    x = table[stage].to_numpy(float)
    ax.scatter(x + rng.uniform(-0.15, 0.15, len(x)), table["severity_pred"], s=8, alpha=0.5)
    ax.plot([0, 3], [0, 3], "k--", lw=0.8)
    ax.set_xlabel({"stage": "true stage", "requested_severity": "requested severity (stage_spearman's x)"}.get(
        stage, "requested stage"))
    ax.set_ylabel("measured severity (CORAL head)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def _bars_with_marks(items: list[tuple[str, float]], labels: list[str], bar_label: str, marks, xlabel: str,
                     xmin: float, path: Path, target: float | None = None) -> Path:
    """One horizontal bar per (key, value) in `items`, with `marks`: [(values by key, label, scatter style)] drawn
    over them (a missing or null value is not drawn)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.16 * len(items) + 1.2))
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], height=0.7, label=bar_label)
    for values, label, style in marks:
        if values:
            dots = [values.get(k) for k, _ in items]  # metrics.json writes NaN as null
            ax.scatter([np.nan if v is None else v for v in dots], y, label=label, **style)
    if target is not None:
        ax.axvline(target, color="k", ls="--", lw=0.8)
    ax.set_yticks(y, labels, fontsize=5)
    ax.set_xlim(xmin, 1.0)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_phenotype_bars(aurocs: dict[str, float], names: dict[str, str], path: Path,
                        ceiling: dict[str, float] | None = None, isolated: dict[str, float] | None = None) -> Path:
    items = sorted(aurocs.items(), key=lambda kv: kv[1])
    return _bars_with_marks(items, [f"{h} {names.get(h, '')[:28]}" for h, _ in items], "real test (stage 3)",
                            [(ceiling, "after VAE round trip", {"color": "red", "s": 8}),
                             (isolated, "drawn alone on a healthy face", {"color": "orange", "marker": "x", "s": 10})],
                            "AUROC of the phenotype head at full intensity", 0.0, path,
                            target=0.9)


def plot_phenotype_match(match: dict[str, dict], names: dict[str, str], path: Path,
                         real: dict[str, dict] | None = None) -> Path:
    """Per phenotype expected in the generated images: the share in which it was detected (bars, n beside), and
    the same share on real faces against their own phenotypes (dots): the profile match read phenotype by
    phenotype."""
    expected = sorted(((h, m) for h, m in match.items() if m["expected_n"]), key=lambda kv: kv[1]["recall"])
    real_recall = {h: (m or {}).get("recall") for h, m in (real or {}).items()}
    return _bars_with_marks([(h, m["recall"]) for h, m in expected],
                            [f"{h} {names.get(h, '')[:24]} (n {m['expected_n']})" for h, m in expected],
                            "generated: detected where expected",
                            [(real_recall, "real faces, their own phenotypes", {"color": "red", "s": 8})],
                            "detected where expected (share of the images expecting it)", 0.0, path)


def image_grid(images, captions: list[str], path: Path, cols: int = 8) -> Path:
    plt = _plt()
    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55))
    for k, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(np.asarray(images[k]).transpose(1, 2, 0))
            ax.set_title(captions[k], fontsize=5)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def _stage_cell(t, i: int, label: str, known) -> str:
    """A grid caption's stage: the requested one for generated rows; a real row's grade, or ? where its stage is a
    placeholder (an ungraded photo: `known`, manifest.stage_known of the table, is false)."""
    if label != "disease":
        return str(int(t["requested_stage"].iloc[i]))
    return str(int(t["stage"].iloc[i])) if known[i] else "?"


def best_worst(scored, label: str, classes: list[str], names: dict, out_dir: Path, prefix: str, k: int = 8
               ) -> list[Path]:
    """Two grids: the k images with the highest and the lowest probability of their true / requested class."""
    t = scored.table
    if scored.images is None or not len(t):
        return []
    p = np.array([t.loc[i, f"p_{c}"] if f"p_{c}" in t else np.nan for i, c in enumerate(t[label])], dtype=float)
    order = np.argsort(p)
    known = stage_known(t)
    paths = []
    for name, idx in (("best", order[::-1][:k]), ("worst", order[:k])):
        caps = [f"{names.get(t[label].iloc[i], t[label].iloc[i])[:14]} s{_stage_cell(t, i, label, known)}\n"
                f"-> {names.get(t['pred_disease'].iloc[i], t['pred_disease'].iloc[i])[:14]} {p[i]:.2f}" for i in idx]
        paths.append(image_grid(scored.images[list(idx)], caps, out_dir / f"{prefix}_{name}.png"))
    return paths


def nearest_pairs(scored, names: dict, path: Path, threshold: float | None, k: int = 8) -> Path | None:
    """The memorisation audit's evidence: the k generated images closest to a training image, each beside that
    training image, with their cosine (a copy sits at ~1; `threshold` is the real-to-real near-duplicate cosine)."""
    t = scored.table
    if scored.images is None or "nearest_train_path" not in t or not len(t):
        return None
    idx = np.argsort(-t["nearest_train_cosine"].to_numpy(float))[:k]
    train = load_images([str(t["nearest_train_path"].iloc[i]) for i in idx], size=tuple(scored.images.shape[-2:]),
                        fit=True)  # a run's training faces may be of another size than the set it judges
    images, caps = [], []
    for j, i in enumerate(idx):
        cos = float(t["nearest_train_cosine"].iloc[i])
        copy = bool(t["nearest_train_copy"].iloc[i]) if "nearest_train_copy" in t \
            else threshold is not None and cos > threshold
        flag = " copy?" if copy else ""
        images += [scored.images[i], train[j]]
        caps += [f"generated\n{names.get(t['requested_disease'].iloc[i], t['requested_disease'].iloc[i])[:14]}",
                 f"nearest train\ncos {cos:.3f}{flag}"]
    return image_grid(images, caps, path, cols=8)


SCORE_FILES = {"real": "scores_real.csv", "generated": "scores_generated.csv"}
OWN_FILES = ("metrics.json", "report.md", "report.html", "confusion_real.png", "stage_real.png", "phenotypes_real.png", "real_best.png",
             "real_worst.png", "confusion_generated.png", "stage_generated.png", "phenotype_match_generated.png",
             "generated_best.png", "generated_worst.png", "memorisation_nearest.png",
             *SCORE_FILES.values())  # what write_report writes


def write_scores(table: pd.DataFrame, headline: np.ndarray, path: Path) -> Path:
    """One row per scored image: its manifest columns (paths as the manifest wrote them), `headline` (a row of the
    top-1 keys: stages 2-3, healthy and ungraded photos, no transformations) and every score (pred_disease,
    pred_prob, p_<class>, severity_pred, stage_pred, ph_<HPO id>, detected; generated rows: requested_stage holds the
    stage bin of the requested severity, requested_severity the severity itself), so a number of metrics.json can be
    recomputed, an image looked up, or two runs' draws of the same request paired. Lists are joined by ';'."""
    t = table.drop(columns=[c for c in ("abspath", "headline") if c in table.columns]).copy()  # ours, not a manifest's
    t.insert(min(len(t.columns), 1), "headline", np.asarray(headline, bool))
    for c in ("top3", "detected"):
        if c in t.columns:
            t[c] = [";".join(map(str, v)) for v in t[c]]
    for c in t.columns:  # the manifest's dict cells (phenotypes) as the manifest writes them, JSON, not Python's repr
        if t[c].map(lambda v: isinstance(v, dict)).any():
            t[c] = [json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in t[c]]
    with atomic_path(path) as tmp:
        t.to_csv(tmp, index=False, float_format="%.6g")
    return path


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("phenotype_auroc", "vae_ceiling_phenotype_auroc",
                                             "phenotype_auroc_isolated",
                                             "phenotype_match", "real_phenotype_match"):  # per phenotype: plotted
            out += _flat(v, key + ".")
        elif isinstance(v, list) and k.endswith("_ci95"):  # a 95% interval beside its number
            out.append((key, "[" + ", ".join("-" if x is None else f"{x:.3f}" for x in v) + "]"))
        elif isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (str, int, float)) for x in v):
            # short lists say what a number was read on (frequency_mae_stages, ..._read_at_stages_2_3)
            out.append((key, ", ".join(str(x) for x in v)))
        elif not isinstance(v, (dict, list)):
            out.append((key, v))
    return out


def figure_line(caption: str, name: str) -> str:
    """A figure as report.md shows it; report_figures reads these lines back."""
    return f"![{caption}]({name})"


def report_figures(folder: Path) -> list[tuple[str, str]]:
    """(caption, file name) of the figures of the evaluation report in `folder`, in its order (its figure_line lines
    whose file is there; a train run's report shows them so); without report.md, every PNG there by name."""
    import re

    report = Path(folder) / "report.md"
    if not report.is_file():
        return [(png.stem, png.name) for png in sorted(Path(folder).glob("*.png"))]
    found = re.findall(r"^!\[(.*)\]\(([^()/]+\.png)\)$", report.read_text(encoding="utf-8"), flags=re.M)
    return [(caption, name) for caption, name in found if (Path(folder) / name).is_file()]


def write_report(out_dir, metrics: dict, scored: dict | None = None, evaluator=None, profiles=None,
                 notes: list[str] | None = None, title: str = "kgface evaluation", grid_cases: int = 8,
                 extra_figures: list[tuple[str, Path]] | None = None) -> dict[str, Path]:
    """Write OUT/metrics.json, the figures and OUT/report.md + OUT/report.html.

    scored: evaluate_sets(..., return_scored=True)'s second value ({"real": ScoredSet, "generated": ScoredSet}).
    evaluator / profiles give class and phenotype names; grid_cases: images per best / worst grid (and pairs in
    the memorisation grid); extra_figures: (caption, PNG in out_dir) pairs shown after the report's own figures (the
    learned profiles' plot). Returns the written paths by name.
    """
    grid_cases = int(grid_cases)
    if grid_cases < 1:
        raise ValueError(f"report.grid_cases={grid_cases}: must be at least 1")
    out = Path(out_dir)
    extra = [(cap, Path(p)) for cap, p in extra_figures or []]
    for _, p in extra:  # checked before any figure is drawn
        if p.parent.resolve() != out.resolve():  # the pages link figures by file name
            raise ValueError(f"extra figure {p}: not in the report's folder {out}")
        if not p.is_file():
            raise ValueError(f"extra figure {p}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    # a report written again into the same folder: an earlier report's figure this one does not draw (no headline
    # rows, no generated set) would be shown as if it were this one's, and its metrics.json would vouch for a report
    # that fails midway
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)
    scored = scored or {}
    names = dict(evaluator.names) if evaluator is not None else {}
    ph_names = {}
    for p in (profiles.values() if isinstance(profiles, dict) else profiles or []):
        names.setdefault(p.disease_id, p.name)
        ph_names.update({x.hpo_id: x.name for x in p.phenotypes})
    paths: dict[str, Path] = {}
    figs: list[tuple[str, Path]] = []
    if evaluator is not None and "real" in scored:
        t = scored["real"].table
        head = headline_rows(t)  # the rows of real_top1: stage 0 looks healthy by construction
        paths["scores_real"] = write_scores(t, head, out / SCORE_FILES["real"])
        if head.any():
            figs.append(("Real test images, stages 2-3, healthy and ungraded photos (the rows of real_top1): "
                         "disease confusion",
                         plot_confusion(t[head], evaluator.classes, names, out / "confusion_real.png")))
        graded = t[stage_known(t)]  # an ungraded photo's stage is a placeholder, left out as the metrics do
        if len(graded):
            figs.append(("Real test images: true stage vs measured severity",
                         plot_stage_scatter(graded, out / "stage_real.png")))
        auc = metrics.get("evaluator", {}).get("phenotype_auroc") or {}
        if auc:
            figs.append(("Per-phenotype AUROC at full intensity (dashed: the 0.9 target)",
                         plot_phenotype_bars(auc, ph_names, out / "phenotypes_real.png",
                                             metrics["evaluator"].get("vae_ceiling_phenotype_auroc"),
                                             metrics["evaluator"].get("phenotype_auroc_isolated"))))
        for p in best_worst(_subset(scored["real"], head), "disease", evaluator.classes, names, out, "real",
                            k=grid_cases):
            figs.append((f"Real test images, stages 2-3, healthy and ungraded, {p.stem.split('_')[-1]} cases "
                         "(each: true class and stage, -> the predicted class, then the probability of the true "
                         "class)", p))
    if evaluator is not None and "generated" in scored:
        t = scored["generated"].table
        head = generated_headline_rows(t)
        paths["scores_generated"] = write_scores(t, head, out / SCORE_FILES["generated"])
        if head.any():
            figs.append(("Generated images, requests for stages 2-3 and healthy faces, no transformations (the rows "
                         "of generation.seen_top1 and heldout_top1): requested vs measured disease",
                         plot_confusion(t[head], evaluator.classes, names, out / "confusion_generated.png",
                                        label="requested_disease")))
        dis = t[~transform_rows(t) & (t["requested_disease"] != HEALTHY).to_numpy()]  # stage_spearman's rows
        if len(dis):
            figs.append(("Generated images, diseased requests, no transformations: requested severity vs "
                         "measured severity",
                         plot_stage_scatter(dis, out / "stage_generated.png",
                                            stage="requested_severity" if "requested_severity" in dis
                                            else "requested_stage")))
        match = (metrics.get("generation") or {}).get("phenotype_match") or {}
        if any(m["expected_n"] for m in match.values()):
            real_match = (metrics.get("evaluator") or {}).get("real_phenotype_match")
            figs.append(("Generated images, diseased stages 2-3: each expected phenotype, detected in what share"
                         + (" (dots: real test faces against their own phenotypes)" if real_match else ""),
                         plot_phenotype_match(match, ph_names, out / "phenotype_match_generated.png", real_match)))
        for p in best_worst(_subset(scored["generated"], head), "requested_disease", evaluator.classes, names, out,
                            "generated", k=grid_cases):
            figs.append((f"Generated images, stages 2-3 and healthy, {p.stem.split('_')[-1]} cases (each: requested "
                         "class and stage, -> the predicted class, then the probability of the requested class)", p))
        threshold = metrics.get("memorisation_threshold")
        p = nearest_pairs(scored["generated"], names, out / "memorisation_nearest.png", threshold, k=grid_cases)
        if p is not None:
            figs.append(("Memorisation audit: the generated images closest to a training image, each beside it "
                         f"(cosine; 'copy?' above the real near-duplicate cosine {threshold})", p))
    figs += extra
    rows = _flat(metrics)
    md = [f"# {title}", ""]
    for n in notes or []:
        md.append(f"- {md_text(n)}")
    md += ["", "| metric | value |", "|---|---|"] + [f"| `{k}` | {md_text(v)} |" for k, v in rows] + [""]
    for cap, p in figs:
        md += [f"## {cap}", "", figure_line(cap, p.name), ""]
    paths["report_md"] = write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes or [])
            + "</ul>", "<table border=1 cellspacing=0 cellpadding=3><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
    body.append("</table>")
    for cap, p in figs:
        body += [f"<h2>{html.escape(cap)}</h2>", f'<img src="{html.escape(p.name)}" style="max-width:100%">']
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title></head><body>"
            + "\n".join(body) + "</body></html>\n")
    paths["report_html"] = write_text_atomic(out / "report.html", page)
    paths.update({p.stem: p for _, p in figs})
    paths["metrics"] = write_json_atomic(out / "metrics.json", metrics)  # last: its presence means the report is whole
    return paths
