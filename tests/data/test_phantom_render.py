"""Phantom renderer: every effect changes the image where it should, determinism, identity persistence, sizes."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from kgface.data.phantom import (AGE_GROUPS, EFFECTS, all_effect_keys, parse_effect_key, region_boxes, region_mask,
                                 render_face, render_labels, sample_identity)
from kgface.data.phantom.effects import effect_key, effects_for_terms, load_phantom_effects
from kgface.data.phantom.render import LABELS

KG_DATA = Path(__file__).resolve().parents[2] / "kg_data"
# An adult with light skin and one with dark skin, both with short hair so the ears and temples show.
IDENTITIES = [sample_identity(0, 9), sample_identity(0, 5)]
ALL_KEYS = all_effect_keys()


def _arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


@pytest.fixture(scope="module", params=range(len(IDENTITIES)), ids=["light_adult", "dark_adult"])
def identity_and_base(request):
    ident = IDENTITIES[request.param]
    assert ident.hair_style == "short" and ident.age_group == "adult"
    return ident, _arr(render_face(ident))


@pytest.mark.parametrize("key", ALL_KEYS)
def test_effect_changes_its_region_only(identity_and_base, key):
    ident, base = identity_and_base
    eff, _ = parse_effect_key(key)
    diff = np.abs(_arr(render_face(ident, {key: 1.0})) - base).sum(axis=2)
    inside = region_mask(ident, eff.regions, [None, {key: 1.0}], size=64)
    assert diff.sum() > 100, f"{key} barely changes the image (sum |diff| = {diff.sum():.0f})"
    share = diff[inside].sum() / diff.sum()
    assert share > 0.97, f"{key}: only {share:.1%} of the change lies in its regions {eff.regions}"
    half = np.abs(_arr(render_face(ident, {key: 0.5})) - base).sum(axis=2).sum()
    assert 0 < half, f"{key} at intensity 0.5 changes nothing"


@pytest.mark.parametrize("key", ALL_KEYS)
def test_intensity_zero_is_the_healthy_face(key):
    ident = IDENTITIES[0]
    assert render_face(ident, {key: 0.0}).tobytes() == render_face(ident).tobytes()


def test_every_region_has_boxes():
    from kgface.data.phantom.effects import REGIONS

    boxes = region_boxes(IDENTITIES[0], size=64)
    assert set(boxes) == set(REGIONS)  # every region, not only those returned
    for name, rects in boxes.items():
        assert rects and all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in rects), name


# ------------------------------------------------------------------ measurements on the label map (256 px)
def _mask_axis_angle(mask: np.ndarray) -> float:
    """Principal-axis angle of a mask, radians, positive when the axis rises to the right (image y points down)."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs - xs.mean(), ys - ys.mean()]))
    vals, vecs = np.linalg.eigh(cov)
    vx, vy = vecs[:, np.argmax(vals)]
    if vx < 0:
        vx, vy = -vx, -vy
    return math.atan2(-vy, vx)


def _eye_masks(labels: np.ndarray):
    eye = (labels == LABELS["sclera"]) | (labels == LABELS["iris"])
    ys, xs = np.nonzero(eye)
    mid = (xs.min() + xs.max()) / 2
    cols = np.arange(labels.shape[1])[None, :]
    return eye & (cols < mid), eye & (cols >= mid)


def _eye_tilt(labels) -> float:
    """Mean palpebral tilt, + = lateral corners up; the identity's head roll cancels between the two eyes."""
    left, right = _eye_masks(labels)
    return (_mask_axis_angle(right) - _mask_axis_angle(left)) / 2


def test_eye_tilt_measured_from_the_eye_masks():
    ident = IDENTITIES[0]
    tilt = {d: _eye_tilt(render_labels(ident, {f"eye_slant[direction={d}]": 1.0} if d else {}, 256))
            for d in (-1, 0, 1)}
    assert tilt[1] > tilt[0] + math.radians(10)
    assert tilt[-1] < tilt[0] - math.radians(10)
    assert tilt[1] > math.radians(10) and tilt[-1] < -math.radians(8)


def _eye_distance(labels) -> float:
    left, right = _eye_masks(labels)
    return float(np.nonzero(right)[1].mean() - np.nonzero(left)[1].mean())


def test_hypertelorism_and_hypotelorism_move_the_eye_centroids():
    ident = IDENTITIES[1]
    base = _eye_distance(render_labels(ident, size=256))
    wide = _eye_distance(render_labels(ident, {"eye_spacing[direction=1]": 1.0}, 256))
    narrow = _eye_distance(render_labels(ident, {"eye_spacing[direction=-1]": 1.0}, 256))
    assert wide / base == pytest.approx(1.30, abs=0.05)
    assert narrow / base == pytest.approx(0.78, abs=0.05)


def _width(mask) -> int:
    xs = np.nonzero(mask)[1]
    return int(xs.max() - xs.min() + 1)


def test_mouth_width_follows_intensity():
    ident = IDENTITIES[0]
    widths = [_width(render_labels(ident, {"mouth_width[direction=1]": t}, 256) == LABELS["lips"])
              for t in (0.0, 0.5, 1.0)]
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] / widths[0] == pytest.approx(1.4, abs=0.07)


def test_ptosis_hides_and_proptosis_shows_more_eye():
    ident = IDENTITIES[0]

    def eye_area(effects):
        lab = render_labels(ident, effects, 256)
        return int(((lab == LABELS["sclera"]) | (lab == LABELS["iris"])).sum())

    base = eye_area({})
    assert eye_area({"ptosis": 1.0}) < 0.75 * base
    assert eye_area({"proptosis": 1.0}) > 1.4 * base


def test_erythema_reddens_the_cheeks_and_pallor_lightens_the_skin():
    for ident in IDENTITIES:
        x0, y0, x1, y1 = region_boxes(ident, size=64)["cheeks"][0]
        skin = render_labels(ident, size=64) == LABELS["skin"]
        cheek_skin = np.zeros_like(skin)
        cheek_skin[y0:y1, x0:x1] = skin[y0:y1, x0:x1]

        def redness(img):
            a = _arr(img)
            return float((a[..., 0] - a[..., 1])[cheek_skin].mean())

        assert redness(render_face(ident, {"erythema[pattern=central]": 1.0})) > redness(render_face(ident)) + 5
        assert redness(render_face(ident, {"erythema[pattern=diffuse]": 1.0})) > redness(render_face(ident)) + 8

        def luma(img):
            a = _arr(img)
            return float((0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2])[skin].mean())

        assert luma(render_face(ident, {"pallor": 1.0})) > luma(render_face(ident)) + 10
        assert luma(render_face(ident, {"hyperpigmentation": 1.0})) < luma(render_face(ident)) - 10


def test_low_set_ears_move_down():
    ident = IDENTITIES[0]
    base = region_boxes(ident, size=256)["ears"][0]
    low = region_boxes(ident, {"ear_height[direction=1]": 1.0}, 256)["ears"][0]
    assert low[1] > base[1] + 8


# ------------------------------------------------------------------ determinism and identity
def test_render_is_deterministic_per_seed():
    effects = {"eye_slant[direction=1]": 0.7, "acne": 0.5, "telangiectasia": 0.4, "hypopigmented_patches": 0.6}
    a = render_face(sample_identity(3, 17), effects)
    b = render_face(sample_identity(3, 17), effects)
    assert a.tobytes() == b.tobytes()
    assert sample_identity(3, 17) == sample_identity(3, 17)
    assert render_face(sample_identity(4, 17), effects).tobytes() != a.tobytes()


def test_identity_persists_outside_the_affected_regions():
    ident = IDENTITIES[0]
    eyes = {"eye_slant[direction=1]": 1.0, "epicanthus": 1.0}
    mouth = {"vermilion[direction=1]": 1.0, "downturned_mouth": 1.0}
    a, b = _arr(render_face(ident, eyes)), _arr(render_face(ident, mouth))
    touched = region_mask(ident, ("eyes", "mouth"), [None, eyes, mouth], 64)
    assert np.array_equal(a[~touched], b[~touched])
    assert not np.array_equal(a[touched], b[touched])


def test_identities_differ_and_cover_the_trait_ranges():
    people = [sample_identity(0, i) for i in range(200)]
    assert {p.age_group for p in people} == set(AGE_GROUPS)
    assert {p.skin_type for p in people} == {1, 2, 3, 4, 5, 6}
    assert "none" in {p.hair_style for p in people} and len({p.hair_colour for p in people}) >= 5
    assert len({p.eye_colour for p in people}) >= 5
    imgs = [_arr(render_face(p)) for p in people[:6]]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5


def test_age_group_changes_proportions():
    adult = sample_identity(0, 9)
    child = sample_identity(0, 9, age_group="child")
    assert child.eye_w / child.head_width > adult.eye_w / adult.head_width
    a = region_boxes(adult, size=256)
    c = region_boxes(child, size=256)
    lower = lambda b: (b["lower_face"][0][3] - b["eyes"][0][1]) / (b["face"][0][2] - b["face"][0][0])  # noqa: E731
    assert lower(c) < lower(a)
    with pytest.raises(ValueError, match="age_group 'toddler' is not one of"):
        sample_identity(0, 1, age_group="toddler")


@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_sizes(size):
    img = render_face(IDENTITIES[0], {"acne": 0.5, "synophrys": 1.0}, size=size,
                      supersample=2 if size == 512 else 4)
    assert img.size == (size, size) and img.mode == "RGB"
    assert render_labels(IDENTITIES[0], size=size).shape == (size, size)


def test_bad_inputs_are_refused():
    with pytest.raises(KeyError, match="unknown phantom effect"):
        render_face(IDENTITIES[0], {"glowing_eyes": 1.0})
    with pytest.raises(ValueError, match="outside"):
        render_face(IDENTITIES[0], {"ptosis": 1.5})


# ------------------------------------------------------------------ the HPO -> effect table
def test_table_maps_enough_terms_to_valid_effects():
    table = load_phantom_effects(KG_DATA / "phantom_effects.csv")
    assert len(table) >= 40
    used = {parse_effect_key(e.key)[0].name for e in table.values()}
    assert used == set(EFFECTS), f"effects with no HPO term: {set(EFFECTS) - used}"
    for entry in table.values():
        assert entry.key in ALL_KEYS, f"{entry.hpo_id}: {entry.key} is not a tested catalogue variant"
    effects, unmapped = effects_for_terms({"HP:0000582": 0.4, "HP:0000218": 1.0, "HP:0007665": 0.3,
                                           "HP:0000527": 0.8}, table)
    assert effects == {"eye_slant[direction=1]": 0.4, "eyelashes[direction=1]": 0.8}
    assert unmapped == ["HP:0000218"]  # High palate: not visible, reported rather than ignored


def test_effect_key_round_trip():
    key = effect_key("vermilion", {"lip": "lower", "direction": 1})
    assert key == "vermilion[direction=1,lip=lower]"
    assert parse_effect_key(key)[1] == {"direction": 1, "lip": "lower"}


def test_bald_and_curly_hair_render():
    for style in ("none", "curly", "long", "medium"):
        ident = dataclasses.replace(IDENTITIES[0], hair_style=style)
        img = render_face(ident, {"sparse_hair": 0.5})
        assert img.size == (64, 64)
        hair = (render_labels(ident, {"sparse_hair": 0.5}) == LABELS["hair"]).any()
        assert hair == (style != "none"), style  # bald draws no hair; thinned hair (0.5) still shows
