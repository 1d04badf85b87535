"""Acne severity <-> lesion count (Hayashi bins) and nested, fixed lesion sites."""
from __future__ import annotations

import numpy as np
import pytest

from kgface.data.phantom import render_face, render_labels, sample_identity
from kgface.data.phantom.acne import (LESION_CAP, count_from_intensity, count_from_severity, grade_from_count,
                                      grade_from_severity, lesion_sites, severity_from_count)
from kgface.data.phantom.render import LABELS

HAYASHI = {0: range(0, 6), 1: range(6, 21), 2: range(21, 51), 3: range(51, LESION_CAP + 1)}


def test_grade_from_count_follows_hayashi():
    for grade, counts in HAYASHI.items():
        assert all(grade_from_count(n) == grade for n in counts)
    assert grade_from_count(500) == 3
    with pytest.raises(ValueError, match="lesion count must be >= 0, got -1"):
        grade_from_count(-1)


@pytest.mark.parametrize("grade", [0, 1, 2, 3])
def test_counts_per_grade_land_in_the_hayashi_bin(grade):
    lo, hi = max(0.0, grade - 0.5), min(3.0, grade + 0.5)
    for s in np.linspace(lo, hi, 41)[:-1] if grade < 3 else np.linspace(lo, hi, 41):
        n = count_from_severity(s)
        assert n in HAYASHI[grade], (s, n)
        assert grade_from_severity(s) == grade


def test_mapping_is_monotone_capped_and_inverse():
    counts = [count_from_severity(s) for s in np.linspace(-1, 4, 501)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == LESION_CAP
    for n in range(LESION_CAP + 1):
        assert count_from_severity(severity_from_count(n)) == n
    assert count_from_intensity(1 / 3) == count_from_severity(1.0) == 13
    assert count_from_intensity(1.0) == LESION_CAP


def test_sites_are_fixed_per_identity_and_typed_by_first_grade():
    a, b = lesion_sites(0, 5), lesion_sites(0, 5)
    assert a == b and len(a) == LESION_CAP
    assert a != lesion_sites(0, 6)
    assert all(s.kind == "comedo" for s in a[:5])              # grade 0: comedonal only
    assert {s.kind for s in a[:20]} <= {"comedo", "papule"}    # pustules from grade 2, nodules at grade 3
    assert {s.kind for s in a[:50]} <= {"comedo", "papule", "pustule"}


def _lesion_mask(ident, **kw):
    return render_labels(ident, size=256, **kw) == LABELS["lesion"]


def test_lesions_nest_across_severities():
    ident = sample_identity(0, 9)
    masks = [_lesion_mask(ident, effects={"acne": t}) for t in (0.1, 0.3, 0.6, 1.0)]
    for milder, severer in zip(masks, masks[1:]):
        assert milder.sum() > 0
        assert not (milder & ~severer).any(), "a milder image's lesion is missing from the more severe one"
        assert severer.sum() > milder.sum()


def test_lesion_count_override_and_type_restriction():
    ident = sample_identity(0, 5)
    assert not _lesion_mask(ident, lesion_count=0).any()
    few, many = _lesion_mask(ident, lesion_count=5), _lesion_mask(ident, lesion_count=60)
    assert few.any() and not (few & ~many).any()
    comedo = np.asarray(render_face(ident, {"acne[type=comedo]": 1.0}), float)
    papule = np.asarray(render_face(ident, {"acne[type=papule]": 1.0}), float)
    lesions = _lesion_mask(ident, effects={"acne": 1.0})[::4, ::4]
    # comedones are dark, papules red: compare mean brightness and redness over lesion pixels
    assert comedo[lesions].mean() < papule[lesions].mean()
    red = lambda a: (a[..., 0] - a[..., 1])[lesions].mean()  # noqa: E731
    assert red(papule) > red(comedo)
