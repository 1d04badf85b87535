"""kgface.evaluation.intervals on known answers: Wilson intervals (closed forms at 0 and n successes, a textbook
value), the bootstrap Spearman interval (a perfect ranking, independent columns, its seed), Fisher's one-sided test
(the tea-tasting table) and the baselines' comparison built from metrics.json's counts."""
import math

import numpy as np
import pytest

from kgface.evaluation.intervals import (accuracy_interval, compare_conditionings, compare_proportions,
                                         paired_comparison, proportion_interval, spearman_interval, wilson_interval)


def test_wilson_interval_known_values():
    z2 = 1.959963984540054 ** 2
    # 0 of n: [0, z^2 / (n + z^2)]; n of n: [n / (n + z^2), 1] (the rule-of-three's Wilson form)
    assert wilson_interval(0, 24) == pytest.approx([0.0, z2 / (24 + z2)]) and wilson_interval(0, 24)[0] == 0.0
    assert wilson_interval(0, 24)[1] == pytest.approx(0.1380, abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([10 / (10 + z2), 1.0])
    # 91 of 132 (the benchmark's seen diseases at 6,000 steps): centre pulled towards 0.5, inside [0, 1]
    lo, hi = wilson_interval(91, 132)
    assert 0.60 < lo < 91 / 132 < hi < 0.77 and (lo + hi) / 2 < 91 / 132
    assert wilson_interval(40, 100) == pytest.approx([0.3094, 0.4980], abs=1e-4)  # a textbook value
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="5 successes of 4"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="-1 successes of 4"):
        wilson_interval(-1, 4)


def test_proportion_and_accuracy_intervals_agree():
    y = np.array(["a", "b", "a", "a", "c"])
    pred = np.array(["a", "b", "b", "a", "a"])  # 3 of 5
    assert accuracy_interval(y, pred) == wilson_interval(3, 5) == proportion_interval(0.6, 5)
    # metrics.json keeps rates to 4 decimals: 2 of 3 is stored as 0.6667 and must still read as 2 of 3
    assert proportion_interval(0.6667, 3) == wilson_interval(2, 3)
    assert proportion_interval(1 / 3, 3) == wilson_interval(1, 3)
    assert proportion_interval(0.6234, 1000) == wilson_interval(623, 1000)  # rounds to the nearest count
    assert all(math.isnan(x) for x in proportion_interval(float("nan"), 5) + proportion_interval(0.5, 0))


def test_spearman_interval_known_cases():
    x = np.arange(40, dtype=float)
    assert spearman_interval(x, 2 * x + 1) == pytest.approx([1.0, 1.0])  # every resample ranks perfectly
    assert spearman_interval(x, -x) == pytest.approx([-1.0, -1.0])
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=400), rng.normal(size=400)
    lo, hi = spearman_interval(a, b)
    assert lo < 0 < hi and hi - lo < 0.25  # independent columns: around 0, about +-2/sqrt(n)
    assert spearman_interval(a, b) == [lo, hi]  # seeded
    assert spearman_interval(a, b, seed=1) != [lo, hi]
    # ties (requested stages are few): one resample's rank correlation is scipy's on the same resampled rows
    from scipy.stats import spearmanr

    stages = rng.integers(0, 4, size=60).astype(float)
    read = stages + rng.normal(scale=1.5, size=60).round()
    rows = np.random.default_rng(7).integers(0, 60, size=(1, 60))[0]
    assert spearman_interval(stages, read, resamples=1, seed=7) == pytest.approx(
        [spearmanr(stages[rows], read[rows]).statistic] * 2)
    # a noisy monotone relation: the interval holds scipy's point estimate
    y = a + 0.8 * rng.normal(size=400)
    lo, hi = spearman_interval(a, y)
    assert lo < spearmanr(a, y).statistic < hi
    assert all(math.isnan(v) for v in spearman_interval([1, 2], [1, 2]) + spearman_interval(x, np.ones(40)))


def test_compare_proportions_fisher_one_sided():
    # the lady tasting tea: 3 of 4 against 1 of 4, one-sided p = 17/70
    c = compare_proportions(3, 4, 1, 4)
    assert c["p_greater"] == pytest.approx(17 / 70) and c["difference"] == pytest.approx(0.5)
    assert compare_proportions(1, 4, 3, 4)["p_greater"] == pytest.approx(1.0 - 1 / 70)  # the other way round
    assert compare_proportions(0, 24, 0, 24)["p_greater"] == pytest.approx(1.0)  # both at the floor: no evidence
    assert compare_proportions(20, 24, 2, 24)["p_greater"] < 1e-6
    assert compare_proportions(1, 0, 0, 5)["p_greater"] is None


def test_paired_comparison_counts_discordant_pairs():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 0, 1, 1, 0], bool)  # a alone right 3 times, b alone once
    c = paired_comparison(a, b)
    assert (c["only_a"], c["only_b"], c["n"]) == (3, 1, 8)
    assert c["p_greater"] == pytest.approx(5 / 16)  # P(Binomial(4, 1/2) >= 3)
    assert paired_comparison(b, a)["p_greater"] == pytest.approx(15 / 16)  # P(Binomial(4, 1/2) >= 1)
    assert paired_comparison(a, a)["p_greater"] == 1.0  # no discordant pair: no evidence either way
    # 6 of 24 against 0 of 24 on the same requests: 6 discordant pairs, p = 1/64 (Fisher on the totals: 0.011)
    assert paired_comparison([True] * 6 + [False] * 18, [False] * 24)["p_greater"] == pytest.approx(1 / 64)
    assert compare_proportions(6, 24, 0, 24)["p_greater"] == pytest.approx(0.01097, abs=1e-5)
    with pytest.raises(ValueError, match="pair the same requests"):
        paired_comparison(a, b[:4])


def test_compare_conditionings_reads_counts_from_metrics():
    per_mode = {"kg": {"generation": {"heldout_top1": 0.125, "heldout_n": 24, "seen_disease_top1": 0.6894,
                                      "seen_disease_n": 132}},
                "text": {"generation": {"heldout_top1": 0.0417, "heldout_n": 24, "seen_disease_top1": 0.75,
                                        "seen_disease_n": 132}},
                "class": {"generation": {"seen_disease_top1": 0.5, "seen_disease_n": 132}}}  # no held-out draw
    out = compare_conditionings(per_mode)
    assert out["reference"] == "kg" and set(out["modes"]) == {"text", "class"}
    held = out["modes"]["text"]["heldout_top1"]
    assert held["counts"] == [3, 24, 1, 24] and held["reference"] == 0.125 and held["other"] == 0.0417
    assert held["p_greater"] == pytest.approx(compare_proportions(3, 24, 1, 24)["p_greater"], rel=1e-3)
    assert out["modes"]["text"]["seen_disease_top1"]["counts"] == [91, 132, 99, 132]
    assert set(out["modes"]["class"]) == {"seen_disease_top1"}  # class tokens cannot draw a held-out disease
    assert compare_conditionings({"text": per_mode["text"]})["modes"] == {}  # no reference run: nothing compared
    assert held["paired"] is None  # no scores given: nothing to pair


def _scores(hits: dict, group="heldout"):
    """A scores_generated.csv table as train.generated_scores reads it (strings): {(disease, stage, seed): hit}."""
    import pandas as pd

    return pd.DataFrame([{"requested_disease": d, "requested_stage": str(s), "seed": str(seed), "group": group,
                          "pred_disease": d if hit else "healthy"} for (d, s, seed), hit in hits.items()])


def test_conditionings_are_paired_on_the_requests_both_drew():
    import pandas as pd

    from kgface.evaluation.intervals import paired_rows, request_hits

    reqs = [("ORPHA:1", s, seed) for s in (2, 3) for seed in range(12)]  # 24 held-out requests
    kg = {r: k < 6 for k, r in enumerate(reqs)}  # the first 6 right
    text = {r: k in (0, 23) for k, r in enumerate(reqs)}  # one shared hit, one of its own
    a, b = _scores(kg), _scores(text)
    assert request_hits(a, "heldout_top1")[("ORPHA:1", "2", "0")] is True and request_hits(a, "seen_disease_top1") == {}
    out = paired_rows(a, b.iloc[::-1], "heldout_top1")  # pairs by request, not by row order
    assert out == paired_comparison([kg[r] for r in reqs], [text[r] for r in reqs])
    assert (out["only_a"], out["only_b"], out["n"]) == (5, 1, 24) and out["p_greater"] == pytest.approx(7 / 64)
    assert paired_rows(a, b.iloc[:10], "heldout_top1")["n"] == 10  # only the requests both drew
    twice = pd.concat([a, a.iloc[:1]])  # a request drawn twice cannot be paired
    assert request_hits(twice, "heldout_top1") is None and paired_rows(twice, b, "heldout_top1") is None
    assert request_hits(a.drop(columns=["seed"]), "heldout_top1") is None
    assert paired_rows(a, _scores(text, group="seen_disease"), "heldout_top1") is None  # nothing shared
    per_mode = {m: {"generation": {"heldout_top1": k / 24, "heldout_n": 24}} for m, k in (("kg", 6), ("text", 2))}
    got = compare_conditionings(per_mode, scores={"kg": a, "text": b})["modes"]["text"]["heldout_top1"]
    assert got["counts"] == [6, 24, 2, 24] and got["paired"] == {**out, "p_greater": 0.1094}  # 4 significant digits
    assert got["p_greater"] == float(f"{compare_proportions(6, 24, 2, 24)['p_greater']:.4g}")
    assert compare_conditionings(per_mode, scores={"kg": a})["modes"]["text"]["heldout_top1"]["paired"] is None


def test_a_spearman_interval_by_face_resamples_whole_faces():
    """20 faces at every stage, the reading's offset shared within a face: the row bootstrap ignored the design (its
    resamples unbalance the stages within faces) and came out nearly twice the true spread of the correlation; the
    face bootstrap follows it. Groups of one row each give the row bootstrap back."""
    import numpy as np
    from scipy.stats import spearmanr

    from kgface.evaluation.intervals import spearman_interval

    rng = np.random.default_rng(0)
    face = np.repeat(np.arange(20), 4)
    stage = np.tile(np.arange(4.0), 20)

    def draw():
        return 0.3 * stage + rng.normal(0, 1.0, 20)[face] + rng.normal(0, 0.2, 80)

    true_width = 2 * 1.96 * np.std([spearmanr(stage, draw())[0] for _ in range(400)])  # ~0.21
    rows, faces = [], []
    for _ in range(5):
        pred = draw()
        for out, iv in ((rows, spearman_interval(stage, pred)), (faces, spearman_interval(stage, pred, groups=face))):
            out.append(iv[1] - iv[0])
    assert np.mean(rows) > 1.5 * true_width and 0.75 * true_width < np.mean(faces) < 1.25 * true_width
    assert spearman_interval(stage, pred, groups=np.arange(80)) == spearman_interval(stage, pred)


def test_a_spearman_interval_over_too_few_faces_is_not_given():
    """One face at every stage (kgface.generate's default seed) made every resample the same rows: [rho, rho], a
    precise-looking interval over one face. Blank labels (unknown people, rows without a seed) are their own."""
    import numpy as np

    from kgface.evaluation.intervals import spearman_interval

    stage = np.tile(np.arange(4.0), 3)
    pred = stage + np.random.default_rng(0).normal(0, 0.5, 12)
    lo, hi = spearman_interval(stage, pred, groups=np.repeat(["a", "b", "c"], 4))
    assert np.isnan(lo) and np.isnan(hi)
    assert spearman_interval(stage, pred, groups=[""] * 12) == spearman_interval(stage, pred)  # all unknown
    assert spearman_interval(stage, pred, groups=["X|"] * 12) == spearman_interval(stage, pred)  # no seed


def test_an_accuracy_interval_by_face_counts_faces_not_images():
    """Known ends: faces read at m stages that are all right or all wrong are worth one row per face (Wilson over
    the faces); a face per row, or rows whose faces are no more alike than chance, are plain Wilson; a share of 0
    or 1 says nothing about how alike a face's images are (faces, the cautious end)."""
    from kgface.evaluation.intervals import effective_count

    face = np.repeat(np.arange(10), 4)
    y = np.array(["a"] * 40)
    alike = np.where(np.repeat(np.arange(10) < 6, 4), "a", "b")  # 6 faces right at every stage, 4 wrong
    assert effective_count(alike == "a", face) == 10
    assert accuracy_interval(y, alike, groups=face) == pytest.approx(wilson_interval(6, 10))
    assert accuracy_interval(y, alike) == wilson_interval(24, 40)  # without groups: images as draws
    assert accuracy_interval(y, alike, groups=np.arange(40)) == pytest.approx(wilson_interval(24, 40))
    mixed = np.where(np.tile([True, True, False, True], 10), "a", "b")  # each face 3 of 4: no face effect
    assert effective_count(mixed == "a", face) == 40
    assert accuracy_interval(y, mixed, groups=face) == pytest.approx(wilson_interval(30, 40))
    assert accuracy_interval(y, y, groups=face) == pytest.approx(wilson_interval(10, 10))
    blank = ["", None, float("nan"), "x|"] * 10  # unknown faces are faces of their own
    assert effective_count(alike == "a", blank) == 40
    # faces of unequal size: at a share of 1 the lower end is n^2 / sum of squared sizes (one face of 20 images
    # beside 20 faces of one image is worth ~3.8 rows, not 21); with the singletons split, the estimate lies between
    # the ends; one face alone is worth one row, also at a share between 0 and 1
    sizes = np.r_[np.zeros(20, int), np.arange(1, 21)]
    assert effective_count(np.ones(40, bool), sizes) == pytest.approx(1600 / 420)
    lopsided = np.r_[np.ones(20, bool), np.arange(20) < 10]
    assert 1600 / 420 < effective_count(lopsided, sizes) < 21
    assert effective_count([True, False, True], ["s0"] * 3) == 1
    from kgface.evaluation.intervals import _wilson

    one_face = accuracy_interval(["a"] * 3, ["a", "b", "a"], groups=["s0"] * 3)
    assert one_face == pytest.approx(_wilson(2 / 3, 1))  # one row's worth: nearly the whole range
    assert one_face[0] < 0.15 < wilson_interval(2, 3)[0]  # three independent rows' interval starts at 0.21
    with pytest.raises(ValueError, match="3 group labels for 40 rows"):
        accuracy_interval(y, alike, groups=[0, 1, 2])


def test_an_accuracy_interval_by_face_covers_the_truth():
    """Faces with their own accuracy (a beta spread around 0.7), read at 4 stages each: over 300 simulated test
    sets the interval over images covered the true rate far less often than 95%; the one over faces near 95%."""
    rng = np.random.default_rng(1)
    face = np.repeat(np.arange(30), 4)
    y = np.array(["a"] * 120)
    covered = {"images": 0, "faces": 0}
    for _ in range(300):
        p_face = rng.beta(1.4, 0.6, 30)  # mean 0.7, faces differ a lot
        hits = rng.random(120) < p_face[face]
        pred = np.where(hits, "a", "b")
        for name, iv in (("images", accuracy_interval(y, pred)), ("faces", accuracy_interval(y, pred, groups=face))):
            covered[name] += iv[0] <= 0.7 <= iv[1]
    assert covered["images"] / 300 < 0.85 and 0.90 <= covered["faces"] / 300 <= 0.99
