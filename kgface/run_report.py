"""The report of a `kgface.train` run: `report.md` (headline numbers against the benchmark's targets, per
conditioning when `baselines=` lists several, the sample grids, the loss curves, the evaluation's figures, then every
number) and the loss plot."""
from __future__ import annotations

import json
from pathlib import Path

from .cache import save_figure_atomic, write_text_atomic


def loss_curve(losses: list[float]):
    """(steps, means, window): running means over ~1/50 of the run, each at the last step of its window (steps count
    from 1: the mean of steps 1..k sits at k; drawn from 0 the curve ran ~2% ahead of the steps)."""
    import numpy as np

    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if losses else np.zeros(0)
    return np.arange(k, k + len(smooth)), smooth, k


def plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    steps, smooth, k = loss_curve(losses)
    ax.plot(steps, smooth)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (mean of {k} steps)" if k > 1 else "loss")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


HEADLINE = [  # (metrics.json key, what it measures, target on experiment=benchmark)
    ("evaluator.real_top1", "evaluator top-1 on real test images (stages 2-3, healthy, ungraded photos)", ">= 0.95"),
    ("evaluator.real_top1_blurred", "... on the same faces blurred by evaluator.real_blur_sigma px (1: softness must "
     "not read as a disease)", ""),
    ("evaluator.oracle_top1", "the same probe on the renderer's true phenotype vectors (separability ceiling)", ""),
    ("evaluator.phenotype_auroc_summary.median", "phenotype heads, median AUROC on the test split", ""),
    ("evaluator.vae_ceiling_phenotype_auroc_summary.median",
     "... after a VAE round trip (what a generator's faces can show at most)", ""),
    ("evaluator.phenotype_auroc_isolated_summary.median",
     "phenotype heads, median AUROC with each phenotype drawn alone on a healthy face (target: each >= 0.9)", ""),
    ("vae_ceiling_top1", "evaluator top-1 of real faces after a VAE round trip (the VAE's limit for faces as "
     "varied as real ones; more typical generated faces can read higher)", ""),
    ("evaluator.vae_ceiling_top1_seen", "... on the seen diseases' faces (healthy included: generation.seen_top1's "
     "rows)", ""),
    ("evaluator.vae_ceiling_top1_heldout", "... on the held-out diseases' faces (generation.heldout_top1's rows)", ""),
    ("evaluator.vae_ceiling_top1_seen_disease", "... on the seen diseases' faces without healthy ones "
     "(generation.seen_disease_top1's rows)", ""),
    ("evaluator.real_top1_seen", "evaluator top-1 on real faces of the seen diseases + healthy (no round trip)", ""),
    ("evaluator.real_top1_heldout", "evaluator top-1 on real faces of the held-out diseases (no round trip)", ""),
    ("evaluator.real_top1_seen_disease", "evaluator top-1 on real faces of the seen diseases, no healthy ones (no "
     "round trip)", ""),
    ("evaluator.real_stage_mae", "evaluator stage MAE on real test images (graded ones, healthy included)", ""),
    ("evaluator.real_stage_mae_disease", "... on the diseased ones (the rows of generation.stage_mae)", ""),
    ("evaluator.real_ece", "expected calibration error of the disease probe on real_top1's rows (0: confidence = "
     "accuracy; a few dozen faces read above 0 even so)", ""),
    ("evaluator.real_stage_spearman_disease", "stage vs measured severity, real diseased test images", ""),
    ("evaluator.vae_ceiling_stage_spearman",
     "... after a VAE round trip (generation.stage_spearman's limit for faces as varied as real ones)", ""),
    ("generation.seen_disease_top1", "generated, diseases the generator trained on (diseased requests, stages 2-3)",
     ">= 0.90"),
    ("generation.seen_top1", "... with the requests for healthy faces among them (the rows of the seen VAE ceiling)",
     ""),
    ("generation.healthy_top1", "generated, requests for healthy faces read healthy", ""),
    ("generation.heldout_top1", "generated, held-out diseases (composed from their phenotypes)", ">= 0.60"),
    ("generation.stage_spearman", "requested severity vs measured severity (diseased requests, held-out ones "
     "among them)", ">= 0.9"),
    # the _seen rows: a conditioning that draws no held-out disease (class) is read on the seen ones alone, so the
    # pooled rows compare conditionings on different disease mixes
    ("generation.stage_spearman_seen", "... the seen diseases' requests alone (held-out diseases were drawn)", ""),
    ("generation.profile_match_f1", "detected vs expected phenotypes (held-out requests among them)", ""),
    ("generation.profile_match_f1_seen", "... the seen diseases' requests alone", ""),
    ("evaluator.real_profile_match_f1_template",
     "... real stage 2-3 faces vs the template's phenotypes (the reference for a template-conditioned generator)", ""),
    ("evaluator.real_profile_match_f1", "... real stage 2-3 faces vs their own phenotypes (not an upper bound)", ""),
    ("generation.frequency_mae", "generated phenotype frequencies vs the KG's (held-out diseases among them)", ""),
    ("generation.frequency_mae_seen", "... the seen diseases alone", ""),
    ("evaluator.real_frequency_mae", "... real stage-3 faces' (what faces drawn at the KG's frequencies read with "
     "these heads)", ""),
    ("transform.target_top1", "healthy->disease / disease->healthy transformations reach the target", ""),
    ("transform.identity_similarity", "evaluator feature cosine, source vs transformed", ""),
    ("evaluator.identity_same_cosine", "... between two real test faces of one identity (other stages)", ""),
    ("evaluator.identity_different_cosine", "... between real test faces of two identities", ""),
    ("transform.identity_distance_dlib", "dlib face-embedding distance, source vs transformed (face_identity)", ""),
    ("evaluator.identity_dlib.same_mean_distance", "dlib distance between two real faces of one identity", ""),
    ("evaluator.identity_dlib.different_mean_distance", "dlib distance between real faces of two identities", ""),
    ("transform.identity_cosine_dlib", "dlib face-embedding cosine, source vs transformed", ""),
    ("evaluator.identity_dlib.same_mean_cosine", "dlib cosine between two real faces of one identity", ""),
    ("evaluator.identity_dlib.different_mean_cosine", "dlib cosine between real faces of two identities", ""),
    ("evaluator.identity_auroc",
     "evaluator feature cosine separates same / different identity (real test faces with an identity)",
     ""),
    ("evaluator.identity_dlib.clip_auroc", "... on dlib's real pairs", ""),
    ("evaluator.identity_dlib.auroc", "dlib distance separates same / different identity (the same real pairs)", ""),
    ("tstr_top1", "probe trained on generated images, tested on real ones (the test rows real_top1 reads)", ""),
    ("tstr_top1_seen", "... on the real rows of the diseases not held out", ""),
    ("kid_clip", "KID on evaluator CLIP features (lead with KID at small n)", ""),
    ("kid_clip_std", "... its standard deviation over subsets", ""),
    ("fid_kid_n.generated", "... generated images it compares (edits of real faces left out)", ""),
    ("fid_kid_n.real", "... real images it compares", ""),
    ("fid_clip", "FID on evaluator CLIP features", ""),
    ("memorisation_rate", "generated images closer to a training image than real near-duplicates", ""),
    ("memorisation_quantile", "... whose threshold is this quantile of real test faces' nearest-training cosine (a "
     "generator that does not copy reads about 1 minus it)", ""),
    ("controls.token_swap_changed", "measured disease changes when another disease's tokens are swapped in", ""),
    ("controls.token_swap_chance", "... would change if the two images were independent draws", ""),
    ("controls.scale0_changed", "measured disease changes with the adapter at scale 0", ""),
    ("controls.scale0_chance", "... would change if the two images were independent draws", ""),
]


def metric_at(metrics: dict, dotted: str):
    """metrics["a"]["b"] for "a.b"; None where any part is missing."""
    node = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fmt(v) -> str:
    """A number as the report prints it: 3 decimals, 3 significant digits below 0.01, "-" for None."""
    if isinstance(v, float) and v != 0 and abs(v) < 0.01:  # a KID of 4e-5 must not read 0.000
        return f"{v:.3g}"
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def wall_time_line(timings: dict) -> str:
    """"Wall time: 2,557 s (42.6 min; profiles 1.9 s, ...)." from metrics.json's `timings` (seconds per stage)."""
    total = timings.get("total_s")
    if not isinstance(total, (int, float)):
        return "Wall time: not recorded."
    parts = [f"{k.removesuffix('_s')} {v:,.1f} s" for k, v in timings.items()
             if k != "total_s" and isinstance(v, (int, float))]
    return f"Wall time: {total:,.0f} s ({total / 60:.1f} min" + (f"; {', '.join(parts)})." if parts else ").")


def with_interval(value, interval) -> str:
    """A headline number with its 95% interval (the `<key>_ci95` beside it in metrics.json) when it has one."""
    if (isinstance(interval, list) and len(interval) == 2 and all(isinstance(x, float) for x in interval)
            and value is not None):
        return f"{fmt(value)} [{interval[0]:.2f}, {interval[1]:.2f}]"
    return fmt(value)


def comparison_lines(comparison: dict | None) -> list[str]:
    """The baselines' comparison (metrics.json `baselines_comparison`) as a table: the reference conditioning's rate
    against each other one's, their difference and the one-sided p that the reference's is higher (Fisher on the
    totals; paired: McNemar on the requests only one of the two got right, where both runs' scores pair)."""
    rows = [(mode, key, c) for mode, keys in ((comparison or {}).get("modes") or {}).items() for key, c in keys.items()]
    if not rows:
        return []
    ref = comparison["reference"]
    lines = [f"## `{ref}` against the other conditionings", "",
             f"{comparison['test']}; counts as correct / requests.", "",
             f"| conditioning | key | `{ref}` | other | difference | one-sided p (H1: `{ref}` higher) "
             f"| paired: only `{ref}` right / only other right; one-sided p |",
             "|---|---|---|---|---|---|---|"]
    for mode, key, c in rows:
        k_r, n_r, k_o, n_o = c["counts"]
        pr = c.get("paired")  # absent before 2026-12-05, None where the runs' scores do not pair
        paired = f"{pr['only_a']} / {pr['only_b']}; {fmt(pr['p_greater'])}" if pr else "-"
        lines.append(f"| `{mode}` | `generation.{key}` | {k_r} / {n_r} | {k_o} / {n_o} | {fmt(c['difference'])} | "
                     f"{fmt(c['p_greater'])} | {paired} |")
    return lines + [""]


def _seen_or_pooled(metrics: dict, key: str):
    """A `_seen` key, or for a conditioning that drew no held-out request (class) its pooled key, which then reads
    the seen diseases alone too."""
    value = metric_at(metrics, key)
    if value is None and key.endswith("_seen") and not metric_at(metrics, "generation.heldout_n"):
        value = metric_at(metrics, key[:-len("_seen")])
    return value


def write_run_report(out_dir: Path, metrics: dict, modes: list[str]) -> None:
    """report.md: headline numbers (per conditioning after baselines), pictures, then every number."""
    subs = {m: ("" if len(modes) == 1 else f"{m}/") for m in modes}
    per_mode = {m: (metrics if len(modes) == 1 else {**metrics, **metrics["baselines"][m]}) for m in modes}
    lines = ["# kgface training run", "",
             f"Conditioning: {', '.join(f'`{m}`' for m in modes)}. Layout and keys: docs/training.md.", "",
             "## Headline numbers", "", "| metric | " + " | ".join(modes) + " | target | what it measures |",
             "|---|" + "---|" * len(modes) + "---|---|"]
    bracketed = False
    for key, what, target in HEADLINE:
        if all(metric_at(per_mode[m], key) is None for m in modes):
            continue  # (a _seen row only where some conditioning drew held-out diseases)
        vals = [_seen_or_pooled(per_mode[m], key) for m in modes]
        shown = [with_interval(v, metric_at(per_mode[m], key + "_ci95")) for v, m in zip(vals, modes)]
        bracketed = bracketed or any(s != fmt(v) for s, v in zip(shown, vals))
        lines.append(f"| `{key}` | " + " | ".join(shown) + f" | {target} | {what} |")
    lines.append("")
    if bracketed:
        lines += ["In brackets: 95% intervals: Wilson over the effective number of faces for shares (real and "
                  "VAE-ceiling rows grouped by identity, generated ones by seed: one face is read at several "
                  "stages), a bootstrap over faces or seeds for Spearman (docs/evaluation.md).", ""]
    lines += comparison_lines(metrics.get("baselines_comparison"))
    lines += [wall_time_line(metrics.get("timings") or {}), ""]
    for m in modes:
        p = subs[m]
        lines += [f"## Samples ({m}): diseases x stages; held-out diseases were never trained on", "",
                  f"![samples {m}]({p}samples/grid.png)", ""]
        if (out_dir / p / "samples" / "transforms.png").exists():
            lines += ["Transformations of test identities (top: real input; bottom: output):", "",
                      f"![transforms {m}]({p}samples/transforms.png)", ""]
        lines += [f"Training loss ({m}), smoothed over windows of a fiftieth of the run:", "",
                  f"![loss {m}]({p}loss.png)", ""]
        ev = out_dir / p / "evaluation"
        if (ev / "report.md").is_file():  # this run's evaluation (a rerun removes the last one's first)
            lines += [f"Evaluation figures and every number: [{p}evaluation/report.md]({p}evaluation/report.md)", ""]
            from .evaluation.report import report_figures  # the evaluation report's own captions and order

            for caption, name in report_figures(ev):
                lines += [f"**{caption}**", "", f"![{caption}]({p}evaluation/{name})", ""]
    lines += ["## All numbers", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))
