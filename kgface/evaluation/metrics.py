"""Metrics as pure functions of labels, predictions and features (numpy in, floats/dicts out).

Nothing here trains the evaluator or reads files; FID/KID take the feature extractor as a parameter
(`feature=` of torchmetrics), the CLIP image encoder by default (Inception weights cannot be downloaded here).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, roc_auc_score

from ..errors import UserError


def rounded(obj):
    """metrics.json's numbers: floats to 4 decimals, but 4 significant digits below 0.01 (a KID of 4e-5 must not read
    0.0); NaN and inf to None (JSON has neither); numpy scalars to Python ones; dicts, lists and tuples throughout."""
    if isinstance(obj, dict):
        return {str(k): rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        if not np.isfinite(obj):
            return None
        return float(f"{float(obj):.4g}") if abs(obj) < 0.01 else round(float(obj), 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def topk_accuracy(probs: np.ndarray, labels: Sequence[int], k: int = 1) -> float:
    """Share of rows whose true label is among the k highest scores; NaN when there are no rows, or k > 1 and no
    more classes than k (every row would count, a number that measures nothing)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(labels) == 0 or (k > 1 and probs.ndim == 2 and probs.shape[1] <= k):
        return float("nan")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties go to the first class, as in the evaluator
    return float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Macro-averaged F1 over the classes present in y_true."""
    if len(y_true) == 0:
        return float("nan")
    return float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def per_stage_accuracy(y_true: Sequence, y_pred: Sequence, stages: Sequence) -> dict:
    """Accuracy of y_pred within each stage; a stage may also be a label such as "unknown" (after the numbers)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cells = [int(s) if not isinstance(s, str) or s.strip().isdigit() else s for s in stages]  # "2" is stage 2
    keys = sorted(set(cells), key=lambda s: (isinstance(s, str), str(s) if isinstance(s, str) else s))
    return {k: accuracy(y_true[[c == k for c in cells]], y_pred[[c == k for c in cells]]) for k in keys}


def stage_mae(true: Sequence[float], pred: Sequence[float]) -> float:
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    return float(np.mean(np.abs(true - pred))) if len(true) else float("nan")


def spearman(true: Sequence[float], pred: Sequence[float]) -> float:
    """Spearman rank correlation (nan when either side is constant or empty)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    if len(true) < 2 or np.all(true == true[0]) or np.all(pred == pred[0]):
        return float("nan")
    return float(spearmanr(true, pred).statistic)


def set_f1(detected: Iterable[str], expected: Iterable[str]) -> float:
    """F1 between two sets; both empty = 1 (nothing expected, nothing found)."""
    d, e = set(detected), set(expected)
    if not d and not e:
        return 1.0
    tp = len(d & e)
    return 2 * tp / (len(d) + len(e))


def profile_match_f1(detected: Sequence[Iterable[str]], expected: Sequence[Iterable[str]]) -> float:
    """Mean per-image F1 between detected and expected phenotype sets."""
    if len(detected) != len(expected):
        raise ValueError("detected and expected must have the same length")
    return float(np.mean([set_f1(d, e) for d, e in zip(detected, expected)])) if len(detected) else float("nan")


def per_phenotype_match(detected: Sequence[Iterable[str]], expected: Sequence[Iterable[str]]) -> dict[str, dict]:
    """Per phenotype over a set of images, the profile match read phenotype by phenotype: `recall`, the share of the
    images expecting it in which it was detected; `precision`, the share of the images it was detected in that
    expected it (NaN where the denominator is 0), with both counts."""
    if len(detected) != len(expected):
        raise ValueError("detected and expected must have the same length")
    pairs = [(set(d), set(e)) for d, e in zip(detected, expected)]
    out = {}
    for h in sorted(set().union(*[d | e for d, e in pairs]) if pairs else []):
        n_exp = sum(h in e for _, e in pairs)
        n_det = sum(h in d for d, _ in pairs)
        both = sum(h in d and h in e for d, e in pairs)
        out[h] = {"expected_n": n_exp, "detected_n": n_det,
                  "recall": both / n_exp if n_exp else float("nan"),
                  "precision": both / n_det if n_det else float("nan")}
    return out


def phenotype_frequencies(detected: Sequence[Iterable[str]], diseases: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per disease: the share of its images in which each phenotype was detected."""
    out: dict[str, dict[str, float]] = {}
    diseases = list(diseases)
    for d in dict.fromkeys(diseases):
        rows = [set(x) for x, dd in zip(detected, diseases) if dd == d]
        terms = set().union(*rows) if rows else set()
        out[d] = {h: sum(h in r for r in rows) / len(rows) for h in sorted(terms)}
    return out


def frequency_mae(observed: dict[str, dict[str, float]], expected: dict[str, dict[str, float]]
                  ) -> tuple[float, dict[str, float]]:
    """Per disease, the MAE between observed and expected phenotype frequencies over the expected phenotypes
    (an expected phenotype never observed counts as frequency 0); returns (mean over diseases, per disease).

    Drawing every phenotype every time scores badly: a phenotype of KG frequency 0.3 shown in all images is 0.7 off.
    """
    per = {}
    for d, exp in expected.items():
        if d not in observed or not exp:
            continue
        obs = observed[d]
        per[d] = float(np.mean([abs(obs.get(h, 0.0) - f) for h, f in exp.items()]))
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


def tstr_predictions(train_features: np.ndarray, train_labels: Sequence, test_features: np.ndarray,
                     l2: float = 1e-2) -> np.ndarray | None:
    """Train-on-synthetic-test-on-real: a linear probe fitted on one set (generated features), its label for each
    row of another (real test features); None without training or test rows."""
    from .probes import LinearProbe, Standardizer

    classes = sorted(set(map(str, train_labels)))
    if not len(train_labels) or not len(test_features):
        return None
    if len(classes) == 1:
        return np.asarray([classes[0]] * len(test_features))
    index = {c: i for i, c in enumerate(classes)}
    scale = Standardizer.fit(train_features)
    probe = LinearProbe.fit(scale(train_features), [index[str(c)] for c in train_labels], len(classes), l2=l2)
    return np.asarray(classes)[probe.proba(scale(test_features)).argmax(1)]


def tstr_top1(train_features: np.ndarray, train_labels: Sequence, test_features: np.ndarray,
              test_labels: Sequence, l2: float = 1e-2) -> float:
    """The share of `tstr_predictions` that are the test labels; labels the probe never saw count as errors."""
    pred = tstr_predictions(train_features, train_labels, test_features, l2) if len(test_labels) else None
    return float("nan") if pred is None else accuracy([str(t) for t in test_labels], pred)


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC; nan when only one class is present."""
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), so a dot product of rows is their cosine."""
    x = np.asarray(x, float)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def identity_similarity(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Mean cosine between paired rows (e.g. a source image and its transformation)."""
    a = np.asarray(features_a, float)
    b = np.asarray(features_b, float)
    a = unit_rows(a)
    b = unit_rows(b)
    return float(np.mean(np.sum(a * b, 1))) if len(a) else float("nan")


def identity_pairs(features: np.ndarray, identities: Sequence[str], max_pairs: int = 20000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(feature cosine, same identity?) of every same-identity pair and a random sample of `max_pairs`
    different-identity ones (`seed`); empty arrays when either kind is missing."""
    f = unit_rows(np.asarray(features, float))
    # identities as integer codes: the pair arrays of a 20k-face photo test split hold 2e8 pairs, whose strings
    # (ids[iu], ids[ju]) took ~20 GB; the codes, a tenth of it (the same pairs, the same sample)
    codes = np.unique(np.asarray([str(i) for i in identities]), return_inverse=True)[1].reshape(-1).astype(np.int32)
    iu, ju = np.triu_indices(len(codes), 1)
    same = codes[iu] == codes[ju]
    if same.sum() == 0 or (~same).sum() == 0:
        return np.zeros(0), np.zeros(0, bool)
    rng = np.random.default_rng(seed)
    diff = np.flatnonzero(~same)
    if len(diff) > max_pairs:
        diff = rng.choice(diff, max_pairs, replace=False)
    pick = np.concatenate([np.flatnonzero(same), diff])
    return np.sum(f[iu[pick]] * f[ju[pick]], 1), same[pick]


def identity_auroc(features: np.ndarray, identities: Sequence[str], max_pairs: int = 20000, seed: int = 0) -> float:
    """AUROC of feature cosine separating same-identity from different-identity pairs (all same pairs, a random
    sample of different ones)."""
    cos, same = identity_pairs(features, identities, max_pairs, seed)
    return auroc(same.astype(int), cos) if len(cos) else float("nan")


def identity_cosines(features: np.ndarray, identities: Sequence[str], max_pairs: int = 20000, seed: int = 0
                     ) -> dict[str, float]:
    """Mean feature cosine of same-identity and of different-identity pairs (the pairs of identity_auroc): the two
    ends a transformation's identity_similarity is read between (a source and its edit share an identity)."""
    cos, same = identity_pairs(features, identities, max_pairs, seed)
    if not len(cos):
        return {"same": float("nan"), "different": float("nan")}
    return {"same": float(cos[same].mean()), "different": float(cos[~same].mean())}


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017): the |accuracy - confidence| gap of
    equal-width confidence bins, weighted by their share of the images. 0 for a calibrated probe."""
    p = np.asarray(probs, float)
    y = np.asarray(labels, int)
    if p.ndim != 2 or len(p) != len(y) or not len(y):
        raise ValueError("expected_calibration_error: probs [N, C] and N labels, N > 0")
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bin k holds (edge_k, edge_k+1]
    return float(sum(abs(hit[which == k].mean() - conf[which == k].mean()) * (which == k).mean()
                     for k in range(bins) if (which == k).any()))


def nearest_cosine(query: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: (highest cosine to a reference row, its index)."""
    q = np.asarray(query, float)
    r = np.asarray(reference, float)
    q = unit_rows(q)
    r = unit_rows(r)
    if len(q) * len(r) > NEAREST_BLOCK:  # 20k test x 160k train faces: a 25 GB matrix at once; in row blocks
        rows = max(1, NEAREST_BLOCK // max(1, len(r)))
        best, idx = np.empty(len(q)), np.empty(len(q), int)
        for s in range(0, len(q), rows):
            sim = q[s:s + rows] @ r.T
            if exclude_self:
                k = np.arange(s, min(s + rows, len(q), len(r)))  # as fill_diagonal: the square part
                sim[k - s, k] = -np.inf
            idx[s:s + rows] = sim.argmax(1)
            best[s:s + rows] = sim[np.arange(len(sim)), idx[s:s + rows]]
        return best, idx
    sim = q @ r.T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    idx = sim.argmax(1)
    return sim[np.arange(len(q)), idx], idx


NEAREST_BLOCK = 1 << 26  # similarities held at once (512 MB of float64); smaller sets take the one-matrix path


# a held-out real image this close to a training image (feature cosine) is a copy of it, not a fresh image
DUPLICATE_GAP = 1e-6


def memorisation_audit(generated: np.ndarray, train: np.ndarray, real_holdout: np.ndarray,
                       quantile: float = 0.99) -> dict:
    """Nearest training image of each generated image by feature cosine.

    The near-duplicate threshold is the `quantile` of real held-out images' nearest-train cosine: a fresh real image
    is that close to a training image only 1% of the time (quantile 0.99). memorisation_rate = share of generated
    images closer than that; about 1 - quantile for a generator that does not copy. Held-out images that are copies
    of a training image (cosine >= 1 - DUPLICATE_GAP: photo datasets hold such duplicates) are left out of the
    threshold's sample and counted (`holdout_duplicates`): 2% of them would put a 0.99 quantile at 1.0, and no copy
    could then exceed it. Only exact copies are caught; re-encoded near-duplicates (cosine ~0.999) still count.
    With few held-out images (`holdout_n`) the quantile sits near their largest cosine, and a generator that does not
    copy reads up to about 1 / holdout_n (below 100 of them) rather than 1 - quantile.
    """
    if len(generated) == 0 or len(train) == 0 or len(real_holdout) == 0:
        raise ValueError("memorisation audit needs generated, training and held-out real features")
    real_nn, _ = nearest_cosine(real_holdout, train)
    fresh = real_nn < 1.0 - DUPLICATE_GAP
    if not fresh.any():
        raise UserError("memorisation audit: every face that sets the threshold is a copy of a training image "
                        "(feature cosine >= 1 - 1e-6): that split repeats the training images; fix the split")
    threshold = float(np.quantile(real_nn[fresh], quantile))
    gen_nn, idx = nearest_cosine(generated, train)
    return {"memorisation_rate": float(np.mean(gen_nn > threshold)), "threshold": threshold,
            "quantile": quantile, "holdout_duplicates": int((~fresh).sum()), "holdout_n": int(fresh.sum()),
            "nearest_cosine": gen_nn,
            "nearest_index": idx}


KID_GAMMA = 1.0  # the polynomial kernel's scale for unit-length features (see clip_fid_kid)


def clip_fid_kid(real_images, generated_images, feature, subset_size: int | None = None,
                 subsets: int = 50, seed: int = 0) -> dict:
    """FID and KID (torchmetrics) with `feature` (a module: uint8 NCHW images -> features, with `num_features`) as
    the feature extractor. Returns fid, kid (mean), kid_std and n_real / n_generated.

    KID's subset size is `subset_size` (at most the smaller set), else half the smaller set (at most 1,000): subsets
    as large as a whole set would be that set every time, and kid_std would then say nothing about sampling. FID on
    d-dimensional features is biased and unstable unless n is several times d; lead with KID for small sets.
    KID's subsets are drawn with `seed` (torch's global generator, saved and restored): the same sets give the same
    number in every process. KID's kernel is (x.y + 1)^3 (gamma 1, not torchmetrics' default 1/d): the features are
    unit vectors, so x.y is a cosine, and with 1/d the kernel would be nearly linear in it, reading almost only the
    difference of the means (half the modes dropped at an unchanged mean would barely register).
    """
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real = torch.as_tensor(real_images)
    gen = torch.as_tensor(generated_images)
    n_r, n_g = len(real), len(gen)
    if n_r < 2 or n_g < 2:
        raise UserError(f"FID/KID need at least 2 real and 2 generated images (got {n_r} real, {n_g} generated); "
                        "score a larger set")
    if subset_size is not None and subset_size < 2:
        raise ValueError(f"KID subset_size must be >= 2 (got {subset_size}): its unbiased estimate divides by m(m-1)")
    # with 2 images in a set a subset is the whole set, and kid_std would be 0 by construction (null below)
    size = min(n_r, n_g, subset_size) if subset_size else max(2, min(n_r, n_g, 2000) // 2)
    fid = FrechetInceptionDistance(feature=feature, reset_real_features=True)
    kid = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=size, reset_real_features=True,
                                  gamma=KID_GAMMA)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(gen, real=False)
    fid_value = float(fid.compute())
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets with torch.randperm
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    # a subset that is a whole set is drawn the same every time: its spread is 0 by construction, not a measurement
    whole = size >= min(n_r, n_g)
    return {"fid": max(fid_value, 0.0) if math.isfinite(fid_value) else fid_value, "kid": float(kid_mean),
            "kid_std": float("nan") if whole else float(kid_std), "n_real": n_r, "n_generated": n_g,
            "kid_subset_size": size}
