"""How sure a number is: 95% intervals for the headline proportions and rank correlations, and the one-sided test
behind "KG conditioning above the text-only baseline".

The benchmark's numbers rest on a few dozen to a few hundred images (held-out diseases: 24 requests), so a point
estimate alone cannot say whether a target is met or whether one conditioning beats another. Pure functions of counts
and arrays; metrics.json carries their results as `<key>_ci95` beside each key and `baselines_comparison`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import binom, fisher_exact, rankdata

from .metrics import rounded

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
NAN_INTERVAL = [float("nan"), float("nan")]


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
    """The Wilson score interval of a proportion (95% by default): unlike p +- z*se it stays inside [0, 1] and does not
    collapse to a point at 0 or n successes (0 of 24 reads [0, 0.138]). [nan, nan] without rows."""
    n, successes = int(n), int(successes)
    if n <= 0:
        return list(NAN_INTERVAL)
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes of {n}")
    return _wilson(successes / n, n, z)


def count_of(rate: float, n: int) -> int:
    """The count behind a share of n rows as metrics.json keeps it (rounded to 4 decimals: exact below n = 10,000)."""
    return int(round(float(rate) * int(n)))


def significant(p: float | None) -> float | None:
    """A p-value as metrics.json keeps it: 4 significant digits (4 decimals would read 0.04996 as 0.05)."""
    return None if p is None else float(f"{float(p):.4g}")


def proportion_interval(p: float, n: int) -> list[float]:
    """wilson_interval of a proportion already computed over n rows."""
    if n is None or int(n) <= 0 or p is None or not np.isfinite(p):
        return list(NAN_INTERVAL)
    return wilson_interval(count_of(p, n), int(n))


def _wilson(p: float, n: float, z: float = Z95) -> list[float]:
    """The Wilson score interval of a share p over an effective count n (need not be whole)."""
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact ends at a share of 0 and 1 (centre - half is 0 there only up to rounding: 1e-17 would print as a number)
    return [0.0 if p <= 0 else max(0.0, centre - half), 1.0 if p >= 1 else min(1.0, centre + half)]


MIN_GROUPS = 5  # groups a bootstrap over faces (or draws) needs to say anything


def group_index(groups: Sequence) -> np.ndarray:
    """One whole-number group per row; a blank label (an unknown person, a row without a seed: "", None, nan, or
    a draw label ending in "|" / "|nan") is a group of its own."""
    labels = np.array(["" if g is None else str(g) for g in groups], dtype=object)
    blank = np.isin(labels, ["", "nan", "None"]) | np.array([s.endswith("|") or s.endswith("|nan")
                                                             for s in labels], dtype=bool)
    labels[blank] = [f"\x00row{i}" for i in np.flatnonzero(blank)]
    return np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)


def effective_count(hits: Sequence[bool], groups: Sequence | None) -> float:
    """How many independent rows `hits` is worth when rows of one group (a face read at several stages, a draw
    of one seed at each stage) share their outcome more than chance: n / design effect, the design effect being the
    cluster-robust variance of the share (CR1: G/(G-1) * sum over groups of (hits_g - p n_g)^2 / n^2) over the
    binomial p(1-p)/n. Kept within [n^2 / sum n_g^2, n]: rows wholly alike within their group are worth that (G
    for groups of one size; one face of 20 images beside 20 faces of one is worth ~3.8, not 21), rows no more alike
    than chance worth themselves. At a share of 0 or 1, or with one group, nothing tells how alike they are: the
    lower end."""
    hits = np.asarray(hits, bool)
    n = len(hits)
    if groups is None or n == 0:
        return float(n)
    index = group_index(groups)
    n_groups = int(index.max()) + 1
    if n_groups >= n:
        return float(n)
    n_g = np.bincount(index, minlength=n_groups).astype(float)
    floor = float(n * n / (n_g ** 2).sum())
    p = hits.mean()
    if p <= 0 or p >= 1 or n_groups < 2:
        return floor
    k_g = np.bincount(index, weights=hits.astype(float), minlength=n_groups)
    var_cr = n_groups / (n_groups - 1) * float(((k_g - p * n_g) ** 2).sum()) / (n * n)
    design = var_cr / (p * (1 - p) / n)
    return float(min(n, max(floor, n / design if design > 0 else n)))


def accuracy_interval(y_true: Sequence, y_pred: Sequence, groups: Sequence | None = None) -> list[float]:
    """wilson_interval of the share of rows whose prediction is the label; with `groups` (the face's identity,
    a generated image's seed), over the rows' effective count (`effective_count`): images of one face are
    not independent draws, and counting them as such made the interval too narrow."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    hits = y_true == y_pred
    if groups is None or len(hits) == 0:
        return wilson_interval(int(np.sum(hits)), len(hits))
    groups = list(groups)
    if len(groups) != len(hits):
        raise ValueError(f"accuracy_interval: {len(groups)} group labels for {len(hits)} rows")
    return _wilson(float(hits.mean()), effective_count(hits, groups))


def spearman_interval(true: Sequence[float], pred: Sequence[float], resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, groups: Sequence | None = None) -> list[float]:
    """Percentile bootstrap interval of the Spearman correlation (rows resampled with replacement; a resample in
    which either side is constant has no correlation and is left out: the interval is conditional on resamples that
    vary, negligible at the sizes reported). `groups` (one label per row, e.g. the face's identity): whole groups are
    resampled, since one face drawn at every stage carries the stage-severity link within itself and rows resampled
    alone ignore that. A blank label (an unknown person, a row without a seed) is a group of its own. Fewer than
    MIN_GROUPS groups holding several rows: [nan, nan], since a handful of faces cannot give an interval over faces
    (one face drew [rho, rho]). Seeded: the same rows give the same interval. [nan, nan] with fewer than 3 rows (2
    rows always rank +-1) or a constant side."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    n = len(true)
    if n < 3 or np.all(true == true[0]) or np.all(pred == pred[0]):
        return list(NAN_INTERVAL)
    rng = np.random.default_rng(seed)
    if groups is not None:
        index = group_index(groups)  # unknown: its own group
        members = [np.flatnonzero(index == g) for g in range(int(index.max()) + 1)]
        if len(members) < n and len(members) < MIN_GROUPS:
            return list(NAN_INTERVAL)
        if len(members) < n:  # some group holds several rows; each group's rows stay together
            rhos = []
            for _ in range(int(resamples)):
                rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
                a, b = rankdata(true[rows]), rankdata(pred[rows])
                a, b = a - a.mean(), b - b.mean()
                norm = np.sqrt((a * a).sum() * (b * b).sum())
                if norm > 0:
                    rhos.append(float((a * b).sum() / norm))
            if not rhos:
                return list(NAN_INTERVAL)
            tail = (1 - level) / 2 * 100
            lo, hi = np.percentile(rhos, [tail, 100 - tail])
            return [float(lo), float(hi)]
    idx = rng.integers(0, n, size=(int(resamples), n))
    # Spearman = Pearson on ranks (ties share their mean rank, as scipy.stats.spearmanr does)
    a, b = rankdata(true[idx], axis=1), rankdata(pred[idx], axis=1)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    ok = norm > 0
    if not ok.any():
        return list(NAN_INTERVAL)
    rho = (a * b).sum(1)[ok] / norm[ok]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(rho, [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_comparison(hits_a: Sequence[bool], hits_b: Sequence[bool]) -> dict:
    """Is a right more often than b on the same requests (same disease, stage and noise)? The exact McNemar (sign)
    test on the discordant pairs, one-sided: p = P(Binomial(b + c, 1/2) >= b), b = requests only a got right, c =
    only b. Draws that share their noise are paired, and Fisher's test on the two totals ignores that."""
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired_comparison: {a.shape} against {b.shape} outcomes; pair the same requests")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = float(binom.sf(only_a - 1, only_a + only_b, 0.5)) if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "n": int(len(a)), "p_greater": p}


def compare_proportions(k_a: int, n_a: int, k_b: int, n_b: int) -> dict:
    """Is a's rate above b's? The difference of the two proportions and Fisher's exact test, one-sided (alternative:
    a's rate is greater; p is not the chance that it is), exact at the small counts of held-out requests. It takes
    the images as independent draws: draws that share noise (a baselines run draws each conditioning with the same
    seeds; one face per copy across stages) are better compared pairwise (paired_comparison). p is None when either
    side has no rows."""
    k_a, n_a, k_b, n_b = int(k_a), int(n_a), int(k_b), int(n_b)
    if n_a <= 0 or n_b <= 0:
        return {"difference": None, "p_greater": None, "counts": [k_a, n_a, k_b, n_b]}
    p = fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="greater").pvalue
    return {"difference": k_a / n_a - k_b / n_b, "p_greater": float(p), "counts": [k_a, n_a, k_b, n_b]}


COMPARED = ("heldout_top1", "seen_disease_top1")  # generation.<key> with its generation.<name>_n
REQUEST = ("requested_disease", "requested_stage", "seed")  # what makes two conditionings' draws the same request


def request_hits(scores, key: str) -> dict[tuple, bool] | None:
    """{request: hit} over the rows of generation.<key> in a scores_generated.csv table (its `group` column names
    each row's key), hit = the evaluator read the requested disease. None when the table cannot pair: no group or
    seed column, or a request drawn twice."""
    if scores is None or not {"group", "pred_disease", *REQUEST} <= set(scores.columns):
        return None
    rows = scores[scores["group"] == key.replace("_top1", "")]
    keys = list(zip(*(rows[c].astype(str) for c in REQUEST)))
    if len(set(keys)) != len(keys):
        return None
    return dict(zip(keys, (rows["pred_disease"] == rows["requested_disease"]).tolist()))


def paired_rows(scores_a, scores_b, key: str) -> dict | None:
    """paired_comparison of two conditionings on the requests both drew for generation.<key> (same disease, stage
    and seed: a baselines run draws each conditioning with the same noise); None when they share none."""
    a, b = request_hits(scores_a, key), request_hits(scores_b, key)
    if not a or not b:
        return None
    both = sorted(set(a) & set(b))
    if not both:
        return None
    return paired_comparison([a[r] for r in both], [b[r] for r in both])


def compare_conditionings(per_mode: dict[str, dict], reference: str = "kg", keys: Sequence[str] = COMPARED,
                          scores: dict | None = None) -> dict:
    """The reference conditioning against each other one, on generation.<key> (counts from the key and its _n):
    {other: {key: {reference, other, difference, p_greater (the reference's rate above the other's, Fisher one-sided),
    counts [k_ref, n_ref, k_other, n_other], paired}}}. per_mode: metrics.json's `baselines` ({mode: that run's
    metrics}). scores: {mode: its scores_generated.csv as a DataFrame}; with both sides' tables, `paired` holds the
    exact McNemar test on the requests both drew (only_a = only the reference right; p_greater one-sided), else None.
    A key either side lacks (class tokens draw no held-out disease) is left out."""
    scores = scores or {}
    ref = (per_mode.get(reference) or {}).get("generation") or {}
    out: dict[str, dict] = {}
    for mode, result in per_mode.items():
        if mode == reference:
            continue
        gen = (result or {}).get("generation") or {}
        row = {}
        for key in keys:
            n_key = key.replace("_top1", "_n")
            if ref.get(key) is None or gen.get(key) is None or not ref.get(n_key) or not gen.get(n_key):
                continue
            n_r, n_o = int(ref[n_key]), int(gen[n_key])
            c = compare_proportions(count_of(ref[key], n_r), n_r, count_of(gen[key], n_o), n_o)
            paired = paired_rows(scores.get(reference), scores.get(mode), key)
            if paired:
                paired["p_greater"] = significant(paired["p_greater"])
            row[key] = {**rounded({"reference": ref[key], "other": gen[key], "difference": c["difference"],
                                   "counts": c["counts"]}),
                        "p_greater": significant(c["p_greater"]), "paired": paired}
        if row:
            out[mode] = row
    return {"reference": reference,
            "test": "Fisher's exact, one-sided (H1: the reference's rate is higher), counting images as independent "
                    "draws; paired: exact McNemar, one-sided, on the requests both drew with the same noise (a copy "
                    "keeps its face across stages, so requests are not independent either)",
            "modes": out}
