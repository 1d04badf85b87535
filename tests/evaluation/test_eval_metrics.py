"""Metrics on constructed cases with known answers (synthetic features; no evaluator training)."""
import numpy as np
import pytest
import torch

from kgface.evaluation import metrics as M
from kgface.evaluation.probes import CoralHead, LinearProbe, PhenotypeHeads, Standardizer


class LinearFeatures(torch.nn.Module):
    """A fixed random projection of the pixels: a stand-in CLIP image encoder for FID/KID."""

    def __init__(self, d=16):
        super().__init__()
        self.num_features = d
        self.proj = torch.randn(3 * 8 * 8, d, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return torch.nn.functional.normalize((x.float().flatten(1) / 255.0 - 0.5) @ self.proj, dim=-1)


class ModeFeatures(torch.nn.Module):
    """Unit vectors by pixel code: an image whose first pixel is c has the feature MODES[c] (+-e1, +-e2 in 8-d)."""

    MODES = torch.tensor([[1.0] + [0] * 7, [-1.0] + [0] * 7, [0, 1.0] + [0] * 6, [0, -1.0] + [0] * 6])

    def __init__(self):
        super().__init__()
        self.num_features = 8

    def forward(self, x):
        return self.MODES[x[:, 0, 0, 0].long()]


def _coded(codes, per_code):
    return torch.tensor(np.repeat(codes, per_code), dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 2, 2)


def test_kid_reads_modes_not_only_means_on_unit_features():
    """Unit-length features: with the kernel (x.y + 1)^3 the population MMD^2 of half the modes dropped at an
    unchanged mean (real on +-e1, +-e2; generated on +-e1) is 2.5 + 4 - 2 x 2.5 = 1.5, of disjoint supports
    (+-e1 vs +-e2) 4 + 4 - 2 x 1 = 6. torchmetrics' default scale 1/d made them 1.5 / d^2 and 6 / d^2 (a
    near-linear kernel): 0.023 and 0.094 on these 8-d features, 9e-5 and 4e-4 on the evaluator's 128-d ones."""
    real = _coded([0, 1, 2, 3], 40)
    dropped = M.clip_fid_kid(real, _coded([0, 1], 80), ModeFeatures(), subsets=40)["kid"]
    disjoint = M.clip_fid_kid(_coded([0, 1], 80), _coded([2, 3], 80), ModeFeatures(), subsets=40)["kid"]
    assert dropped == pytest.approx(1.5, abs=0.15) and disjoint == pytest.approx(6.0, abs=0.3)


def test_perfect_classifier_top1_is_one_and_topk_counts():
    labels = np.array([0, 1, 2, 1, 0])
    probs = np.eye(3)[labels] * 0.9 + 0.05
    assert M.topk_accuracy(probs, labels, 1) == 1.0
    wrong = np.roll(np.eye(3)[labels], 1, axis=1)
    assert M.topk_accuracy(wrong, labels, 1) == 0.0
    assert M.topk_accuracy(wrong + 0.5 * np.eye(3)[labels], labels, 2) == 1.0
    # top-3 of 3 classes (or of 2: acne vs healthy) would be 1 whatever the scores: not a measurement
    assert np.isnan(M.topk_accuracy(wrong, labels, 3)) and np.isnan(M.topk_accuracy(wrong[:, :2], labels % 2, 3))
    assert M.macro_f1(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert M.macro_f1(["a", "b"], ["b", "a"]) == 0.0


def test_per_stage_accuracy_and_stage_scores():
    acc = M.per_stage_accuracy(["a", "a", "b", "b"], ["a", "b", "b", "b"], [0, 0, 2, 2])
    assert acc == {0: 0.5, 2: 1.0}
    assert M.stage_mae([0, 1, 2, 3], [0, 1, 2, 3]) == 0.0
    assert M.stage_mae([0, 1, 2, 3], [1, 2, 3, 4]) == 1.0
    assert M.spearman([0, 1, 2, 3], [0.1, 0.5, 2.2, 2.9]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    stages = np.repeat(np.arange(4), 500)
    assert abs(M.spearman(stages, rng.permutation(stages))) < 0.1  # shuffled stages: ~0
    assert np.isnan(M.spearman([1, 1, 1], [0, 1, 2]))


def test_per_phenotype_match_counts_hits_where_expected_and_where_detected():
    detected = [{"a", "b"}, {"a"}, {"c"}, set()]
    expected = [{"a"}, {"a", "b"}, {"b"}, {"a"}]
    m = M.per_phenotype_match(detected, expected)
    # a: expected in 3 images, detected in 2 of them; detected twice, both expected
    assert m["a"] == {"expected_n": 3, "detected_n": 2, "recall": pytest.approx(2 / 3), "precision": 1.0}
    # b: expected twice, detected once where not expected
    assert m["b"]["recall"] == 0.0 and m["b"]["precision"] == 0.0
    # c: never expected: no recall, precision 0
    assert np.isnan(m["c"]["recall"]) and m["c"]["precision"] == 0.0 and m["c"]["expected_n"] == 0
    assert M.per_phenotype_match([], []) == {}
    with pytest.raises(ValueError, match="the same length"):
        M.per_phenotype_match([{"a"}], [])


def test_profile_match_and_frequency_mae():
    assert M.set_f1({"a", "b"}, {"a", "b"}) == 1.0
    assert M.set_f1(set(), set()) == 1.0
    assert M.set_f1({"a"}, {"b"}) == 0.0
    assert M.set_f1({"a", "b"}, {"a"}) == pytest.approx(2 / 3)
    assert M.profile_match_f1([{"a"}, {"b"}], [{"a"}, {"c"}]) == 0.5
    # phenotype a in 3 of 10 images (KG 0.3), b in all (KG 1.0): exact
    detected = [{"a", "b"}] * 3 + [{"b"}] * 7
    obs = M.phenotype_frequencies(detected, ["d"] * 10)
    assert obs["d"] == {"a": 0.3, "b": 1.0}
    mae, per = M.frequency_mae(obs, {"d": {"a": 0.3, "b": 1.0}})
    assert mae == pytest.approx(0.0)
    # drawing every phenotype every time is wrong: a (KG 0.3) is 0.7 off
    obs_all = M.phenotype_frequencies([{"a", "b"}] * 10, ["d"] * 10)
    assert M.frequency_mae(obs_all, {"d": {"a": 0.3, "b": 1.0}})[0] == pytest.approx(0.35)
    # a disease without observations or without expected phenotypes is skipped, not read as 0 or 1
    mae, per = M.frequency_mae(obs, {"d": {"a": 0.3, "b": 1.0}, "e": {"a": 0.5}, "f": {}})
    assert set(per) == {"d"} and mae == pytest.approx(0.0)
    assert np.isnan(M.frequency_mae(obs, {"e": {"a": 0.5}})[0])


def test_tstr_and_identity_and_memorisation():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    y = np.repeat(np.arange(3), 30)
    gen = centers[y] + rng.normal(size=(90, 8))
    real = centers[y] + rng.normal(size=(90, 8))
    assert M.tstr_top1(gen, y, real, y) > 0.95
    assert M.tstr_top1(gen, y, real, rng.permutation(y)) < 0.6
    a = rng.normal(size=(20, 8))
    assert M.identity_similarity(a, a) == pytest.approx(1.0)
    ids = np.repeat(np.arange(10), 3)
    feats = rng.normal(size=(10, 8))[ids] + 0.1 * rng.normal(size=(30, 8))
    assert M.identity_auroc(feats, ids) > 0.99
    train = rng.normal(size=(200, 8))
    holdout = rng.normal(size=(200, 8))
    copies = train[:50] + 1e-4 * rng.normal(size=(50, 8))
    assert M.memorisation_audit(copies, train, holdout)["memorisation_rate"] == 1.0
    fresh = M.memorisation_audit(rng.normal(size=(400, 8)), train, holdout)["memorisation_rate"]
    assert fresh < 0.05
    # 3% of the held-out set are exact copies of training images (photo datasets hold such duplicates): they
    # would put the 0.99 quantile at 1.0, where no copy can pass it; they are left out of the threshold, and counted
    dup_holdout = np.concatenate([holdout, train[100:106]])
    audit = M.memorisation_audit(copies, train, dup_holdout)
    assert audit["memorisation_rate"] == 1.0 and audit["holdout_duplicates"] == 6 and audit["threshold"] < 0.999
    assert audit["holdout_n"] == 200  # the fresh images the threshold is read on
    # the rule is strict: the held-out set itself, as the generated set, has its closest image exactly at the
    # quantile-1 threshold, and that is not a copy (with >= it would read 1/200)
    assert M.memorisation_audit(holdout, train, holdout, quantile=1.0)["memorisation_rate"] == 0.0


def test_fid_kid_identical_sets_near_zero_and_shift_positive():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    same = M.clip_fid_kid(real, real.clone(), LinearFeatures(), subsets=10)
    assert same["n_real"] == 64 and same["kid_subset_size"] == 32  # half the smaller set: subsets that vary
    assert same["kid_std"] > 0  # whole-set subsets made this 0 whatever the sets
    whole = M.clip_fid_kid(real, real.clone(), LinearFeatures(), subset_size=500, subsets=2)
    assert whole["kid_subset_size"] == 64 and np.isnan(whole["kid_std"])  # every subset the whole set: no spread
    assert np.isnan(M.clip_fid_kid(real[:2], real[2:4], LinearFeatures())["kid_std"])  # 2 images: the whole set
    with pytest.raises(ValueError, match="subset_size must be >= 2"):  # m(m-1) = 0: no estimate
        M.clip_fid_kid(real, real.clone(), LinearFeatures(), subset_size=1)
    shifted = (real.int() // 2 + 120).clamp(0, 255).to(torch.uint8)
    diff = M.clip_fid_kid(real, shifted, LinearFeatures(), subsets=10)
    # identical sets: FID 0; KID near 0 (its subsets of one set hold the same images, and the cross term then
    # counts an image with itself, which the within-set terms leave out: slightly negative, -0.21 against 3.98)
    assert abs(same["fid"]) < 1e-3 and abs(same["kid"]) < 0.1 * diff["kid"]
    # two independent draws of one distribution: KID's unbiased estimate of 0, inside its own spread
    other = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    twin = M.clip_fid_kid(real, other, LinearFeatures(), subsets=10)
    assert abs(twin["kid"]) < twin["kid_std"] and abs(twin["kid"]) < 0.01 * diff["kid"]
    assert diff["fid"] > 0.1 and diff["kid"] > 2.0


def test_probes_on_separable_features():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 40)
    x = np.eye(4)[y] * 3 + 0.3 * rng.normal(size=(160, 4))
    scale = Standardizer.fit(x)
    probe = LinearProbe.fit(scale(x), y, 4)
    assert (probe.proba(scale(x)).argmax(1) == y).mean() == 1.0
    def nll():
        return -np.log(probe.proba(scale(x))[np.arange(len(y)), y]).mean()

    before = nll()
    t = probe.calibrate(scale(x), y)
    assert t != 1.0 and nll() < before  # the temperature it chose fits the rows better than none
    assert (probe.proba(scale(x)).argmax(1) == y).mean() == 1.0  # ... and keeps the ranking
    sev = y + rng.uniform(-0.3, 0.3, 160)
    coral = CoralHead.fit(np.c_[sev, rng.normal(size=160)], y)
    assert (coral.stage(np.c_[sev, rng.normal(size=160)]) == y).mean() > 0.9
    assert M.spearman(y, coral.severity(np.c_[sev, np.zeros(160)])) > 0.9
    heads = PhenotypeHeads.fit(x, (x > 1.5).astype(np.float32))
    assert ((heads.proba(x) > 0.5) == (x > 1.5)).mean() > 0.98
    state = {**probe.state("p"), **coral.state("c")}
    again = LinearProbe.from_state(state, "p")
    assert np.allclose(again.proba(scale(x)), probe.proba(scale(x)))
    # a logit gap of 25 at T = 1: float32 rounded the top class to exactly 1 (1 - p tied every confident reading)
    sharp = LinearProbe(torch.zeros(2, 1), torch.tensor([25.0, 0.0]))
    p = sharp.proba(np.zeros((1, 1)))
    assert p.dtype == np.float64 and 0 < 1 - p[0, 0] < 1e-10


def test_kid_is_the_same_in_every_process_and_leaves_the_global_generator_alone():
    """torchmetrics draws KID's subsets with torch.randperm: unseeded, two runs of `kgface.evaluate` on the same
    sets gave different numbers."""
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(40, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    gen = (torch.rand(40, 3, 16, 16, generator=g) * 200).to(torch.uint8)

    class Flat(torch.nn.Module):
        num_features = 48

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x.float(), 4).flatten(1)

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append(M.clip_fid_kid(real, gen, Flat(), subset_size=10))
    assert out[0]["kid"] == out[1]["kid"] and out[0]["kid_std"] == out[1]["kid_std"]
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    M.clip_fid_kid(real, gen, Flat(), subset_size=10)
    assert torch.equal(torch.rand(3), expect)  # the caller's random stream is where it was
    other = M.clip_fid_kid(real, gen, Flat(), subset_size=10, seed=1)
    assert other["kid_std"] != out[0]["kid_std"]  # the seed does draw the subsets


def test_small_metrics_keep_their_significant_digits():
    assert M.rounded({"kid": 4.2e-5, "top1": 0.123456, "fid": 12.345678, "bad": float("nan"),
                      "n": np.int64(3), "ci": (np.float32(0.25), 0.123456)}) == {
        "kid": 4.2e-5, "top1": 0.1235, "fid": 12.3457, "bad": None, "n": 3, "ci": [0.25, 0.1235]}
    from kgface.run_report import fmt

    assert fmt(4.2e-5) == "4.2e-05" and fmt(0.12345) == "0.123" and fmt(0.0) == "0.000" and fmt(None) == "-"


def test_per_stage_cells_take_labels_and_read_numeric_text_as_the_stage():
    acc = M.per_stage_accuracy(["a", "a", "b", "b"], ["a", "b", "b", "b"], [2, "2", "unknown", 0])
    assert acc == {0: 1.0, 2: 0.5, "unknown": 1.0} and list(acc) == [0, 2, "unknown"]


def test_temperature_scaling_lowers_the_validation_nll():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 60)
    x = np.eye(3)[y] + 0.9 * rng.normal(size=(180, 3))  # overlapping classes
    y_val = np.repeat(np.arange(3), 60)
    x_val = np.eye(3)[y_val] + 0.9 * rng.normal(size=(180, 3))
    probe = LinearProbe.fit(x, y, 3, l2=1e-6)
    probe.weight.mul_(4)  # an over-confident probe: its NLL is far from the best temperature's
    probe.bias.mul_(4)

    def nll(t):
        probe.temperature = t
        return float(-np.log(probe.proba(x_val)[np.arange(len(y_val)), y_val]).mean())

    before = nll(1.0)
    t = probe.calibrate(x_val, y_val)
    assert t > 1.5 and nll(t) < before - 0.05
    grid = min(nll(g) for g in np.linspace(0.5, 20, 200))
    assert nll(t) <= grid + 1e-3  # the minimum, not just lower


def test_unit_rows_gives_cosines_and_keeps_a_zero_row_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    u = M.unit_rows(x)
    assert np.allclose(u, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    assert u[0] @ u[2] == pytest.approx(-0.6)  # the cosine of rows 0 and 2
    assert M.identity_similarity(x[[0]], 10 * x[[0]]) == pytest.approx(1.0)  # scale does not count


def test_to_uint8_passes_uint8_and_reads_float_as_zero_to_one():
    from kgface.evaluation.inputs import to_uint8
    u = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    assert to_uint8(u) is u
    f = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 2.0]])
    got = to_uint8(f)
    assert got.dtype == torch.uint8 and got.tolist() == [[0, 0, 128, 255, 255]]


def test_identity_cosines_are_the_two_ends_of_a_constructed_set():
    # two identities, each face its identity's unit vector (cosine 1 within), the identities orthogonal (0 between)
    e = np.eye(4)
    feats = np.stack([e[0], 2 * e[0], e[1], 3 * e[1]])  # length does not matter: cosines
    ends = M.identity_cosines(feats, ["a", "a", "b", "b"])
    assert ends["same"] == pytest.approx(1.0) and ends["different"] == pytest.approx(0.0)
    assert M.identity_auroc(feats, ["a", "a", "b", "b"]) == 1.0
    assert np.isnan(M.identity_cosines(feats, ["a", "b", "c", "d"])["same"])  # no pair of one identity


def test_expected_calibration_error_known_answers():
    # confident and right: 0; confident and wrong: 1
    right = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error(right, [0, 1]) == 0.0
    assert M.expected_calibration_error(right, [1, 0]) == pytest.approx(1.0)
    # 10 faces at confidence 0.8, 8 of them right: calibrated (0); at 0.9 with 8 right: 0.1 off
    p = np.tile([0.8, 0.2], (10, 1))
    labels = [0] * 8 + [1] * 2
    assert M.expected_calibration_error(p, labels) == pytest.approx(0.0, abs=1e-12)
    assert M.expected_calibration_error(np.tile([0.9, 0.1], (10, 1)), labels) == pytest.approx(0.1)
    # two bins, weighted by their share: 5 faces at 0.6 all right (0.4 off), 5 at 0.95 all right (0.05 off)
    mixed = np.array([[0.6, 0.4]] * 5 + [[0.95, 0.05]] * 5)
    assert M.expected_calibration_error(mixed, [0] * 10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
    # bins are (lower, upper]: with 5 bins a confidence of exactly 0.6 falls in (0.4, 0.6], apart from 0.61
    edge = np.array([[0.6, 0.4], [0.61, 0.39]])
    assert M.expected_calibration_error(edge, [0, 1], bins=5) == pytest.approx(0.5 * 0.4 + 0.5 * 0.61)
    with pytest.raises(ValueError, match="N > 0"):
        M.expected_calibration_error(np.zeros((0, 2)), [])


def test_phenotype_heads_keep_far_logits_apart():
    """Zero-shot heads (logit scale 100) reach logits of +-20 and beyond: in float32 a sigmoid rounds to exactly 1
    past ~17 and to 0 below ~-104, and an AUROC reads ties; the heads' probabilities are float64, where they stay
    ordered."""
    heads = PhenotypeHeads(torch.ones(1, 1), torch.zeros(1))
    p = heads.proba(np.array([[20.0], [25.0], [-110.0], [-120.0]]))[:, 0]
    assert p.dtype == np.float64 and p[0] < p[1] < 1.0 and 0.0 < p[3] < p[2]


def test_temperature_on_separable_validation_rows_stays_finite_and_in_range():
    # separable rows: the validation NLL falls for ever as T -> 0; the search is bounded to [T_MIN, T_MAX] inside
    # the loss (a clamp afterwards cannot mend a NaN), so T lands low but finite
    from kgface.evaluation.probes import T_MAX, T_MIN

    y = np.repeat(np.arange(3), 20)
    x = 2.0 * np.eye(3)[y]
    probe = LinearProbe(torch.eye(3), torch.zeros(3))  # right on every row, with moderate logits
    t = probe.calibrate(x, y)
    assert T_MIN <= t < 0.5 < T_MAX
    p = probe.proba(x)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1.0) and (p.argmax(1) == y).all()


def test_large_sets_take_the_same_pairs_and_neighbours_in_less_memory(monkeypatch):
    """identity_pairs compares identity codes, not strings (a 20k-face split's 2e8 pairs took ~20 GB), and
    nearest_cosine works in row blocks past NEAREST_BLOCK similarities: the same answers as before."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 8))
    ids = [f"person{i % 17}" for i in range(60)]
    cos, same = M.identity_pairs(feats, ids, max_pairs=200, seed=3)
    # the former computation, on the strings
    f = M.unit_rows(feats)
    names = np.asarray(ids)
    iu, ju = np.triu_indices(60, 1)
    was_same = names[iu] == names[ju]
    diff = np.random.default_rng(3).choice(np.flatnonzero(~was_same), 200, replace=False)
    pick = np.concatenate([np.flatnonzero(was_same), diff])
    assert np.array_equal(same, was_same[pick]) and np.allclose(cos, np.sum(f[iu[pick]] * f[ju[pick]], 1))
    ref = rng.normal(size=(45, 8))
    whole = M.nearest_cosine(feats, ref), M.nearest_cosine(feats, feats, exclude_self=True)
    monkeypatch.setattr(M, "NEAREST_BLOCK", 7 * 45)  # blocks of 7 rows
    blocked = M.nearest_cosine(feats, ref), M.nearest_cosine(feats, feats, exclude_self=True)
    for (a_best, a_idx), (b_best, b_idx) in zip(whole, blocked):
        assert np.array_equal(a_idx, b_idx) and np.allclose(a_best, b_best, atol=1e-12)
    assert (blocked[1][1] != np.arange(60)).all()  # itself excluded in every block
