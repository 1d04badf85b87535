"""The run's sample grid: which noise each (disease, stage, copy) starts from."""
import pytest

from kgface.diffusion.samples import grid_requests
from kgface.kg.profiles import FacialProfile, healthy_profile


def _profiles():
    return [FacialProfile(f"D:{i}", f"disease {i}", "test") for i in range(3)] + [healthy_profile("test")]


def test_each_disease_and_copy_has_its_own_noise_shared_across_its_stages():
    stages, per_cell, seed = [0, 1, 2, 3], 2, 100
    reqs, rows = grid_requests(_profiles(), stages, per_cell, seed)
    assert len(reqs) == len(rows) == 4 * per_cell * len(stages)
    assert [r.seed for r in reqs] == [r["seed"] for r in rows]
    sick = [r for r in rows if r["disease"] != "healthy"]
    by_face = {}
    for r in sick:
        by_face.setdefault((r["disease"], r["seed"]), []).append(r["stage"])
    # 3 diseases x 2 copies = 6 faces, each drawn at every stage (a progression of one face)
    assert len(by_face) == 6 and all(v == stages for v in by_face.values())
    assert sorted(s for _, s in by_face) == list(range(seed, seed + 6))
    # healthy has no stages: 8 cells, 8 faces, none of them a sick disease's face
    healthy = [r["seed"] for r in rows if r["disease"] == "healthy"]
    assert len(set(healthy)) == 8 and not set(healthy) & {s for _, s in by_face}
    assert {r["stage"] for r in rows if r["disease"] == "healthy"} == {0}
    assert {r.severity for r, row in zip(reqs, rows) if row["disease"] == "healthy"} == {0.0}


def test_shared_noise_draws_copy_k_of_every_disease_from_one_face():
    # the validation grids' layout: a column is one face across diseases (healthy keeps its own faces)
    _, rows = grid_requests(_profiles(), [0, 3], 2, 100, shared_noise=True)
    sick = {(r["disease"], r["stage"], r["seed"]) for r in rows if r["disease"] != "healthy"}
    assert {s for _, _, s in sick} == {100, 101} and len(sick) == 3 * 2 * 2
    healthy = [r["seed"] for r in rows if r["disease"] == "healthy"]
    assert len(set(healthy)) == 4 and min(healthy) > 101


def test_a_fractional_stage_is_refused_before_anything_is_drawn():
    with pytest.raises(ValueError, match=r"samples.stages=\[0, 1.5\]"):
        grid_requests(_profiles(), [0, 1.5], 1, 0)
