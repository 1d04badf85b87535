"""Phantom identities: the traits of one synthetic person, sampled once from `default_rng([seed, identity_id])`.

An `Identity` is everything about a face that no phenotype changes: head shape, skin tone, hair, eye colour, the
small jitters of feature positions, pose, lighting and the age group. The renderer draws the same identity the same
way under every set of effects, so two images of one identity differ only where an effect acts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGE_GROUPS = ("child", "adolescent", "adult", "older_adult")
AGE_WEIGHTS = (0.2, 0.15, 0.45, 0.2)

# Fitzpatrick-like skin types I..VI (sRGB base colours, light to dark).
SKIN_TONES = {
    1: (246, 221, 204),
    2: (236, 197, 170),
    3: (219, 170, 135),
    4: (190, 136, 98),
    5: (140, 92, 62),
    6: (92, 60, 42),
}
HAIR_STYLES = ("none", "short", "medium", "long", "curly")
HAIR_WEIGHTS = (0.08, 0.34, 0.22, 0.22, 0.14)
HAIR_COLOURS = {
    "black": (28, 24, 22),
    "dark_brown": (62, 42, 30),
    "brown": (110, 75, 48),
    "auburn": (128, 58, 32),
    "blond": (206, 170, 108),
    "grey": (170, 168, 164),
}
EYE_COLOURS = {
    "dark_brown": (58, 36, 24),
    "brown": (100, 62, 36),
    "hazel": (120, 96, 52),
    "green": (84, 118, 76),
    "blue": (72, 112, 160),
    "grey": (118, 128, 136),
}
BACKGROUNDS = ((200, 208, 216), (214, 206, 192), (186, 200, 190), (220, 220, 222), (176, 186, 204), (226, 214, 210))


@dataclass(frozen=True)
class Identity:
    """One synthetic person. Lengths are fractions of the image side; colours are sRGB 0..255 tuples."""
    seed: int
    identity_id: int
    age_group: str
    skin_type: int                     # Fitzpatrick-like I..VI as 1..6
    skin_rgb: tuple[int, int, int]
    hair_style: str                    # one of HAIR_STYLES ("none": bald or shaved)
    hair_colour: str
    hair_rgb: tuple[int, int, int]
    eye_colour: str
    iris_rgb: tuple[int, int, int]
    lip_rgb: tuple[int, int, int]
    background_rgb: tuple[int, int, int]
    clothing_rgb: tuple[int, int, int]
    # head and face shape
    head_width: float                  # cheek half-width
    head_height: float                 # crown to chin
    jaw_ratio: float                   # jaw half-width / cheek half-width
    chin_ratio: float                  # chin half-width / cheek half-width
    cranium_ratio: float               # cranium half-width / cheek half-width
    # brows
    brow_arch: float
    brow_thickness: float
    brow_tilt: float                   # lateral end up (+) or down (-)
    # features (jitter around the age group's canon)
    eye_y: float
    eye_dx: float                      # half the inter-pupil distance
    eye_w: float                       # palpebral half-width
    eye_h: float                       # palpebral half-height
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    ear_y: float
    ear_size: float
    hairline: float                    # hairline height above the brows
    # pose, scale and light (fixed per identity)
    roll_deg: float
    scale: float
    shift_x: float
    shift_y: float
    light_angle: float                 # radians; direction the light comes from in the image plane
    light_strength: float

    @property
    def key(self) -> tuple[int, int]:
        return (self.seed, self.identity_id)


def _jitter_rgb(rng: np.random.Generator, rgb, spread: float) -> tuple[int, int, int]:
    out = np.asarray(rgb, float) * (1 + rng.normal(0, spread)) + rng.normal(0, spread * 60, 3)
    return tuple(int(v) for v in np.clip(np.round(out), 0, 255))


def sample_identity(seed: int, identity_id: int, age_group: str | None = None) -> Identity:
    """Sample identity `identity_id` of the population `seed`. Pure: the same pair gives the same person."""
    rng = np.random.default_rng([int(seed), int(identity_id)])
    age = AGE_GROUPS[rng.choice(len(AGE_GROUPS), p=AGE_WEIGHTS)]
    if age_group is not None:
        if age_group not in AGE_GROUPS:
            raise ValueError(f"age_group '{age_group}' is not one of {AGE_GROUPS}")
        age = age_group
    skin_type = int(rng.integers(1, 7))
    skin = _jitter_rgb(rng, SKIN_TONES[skin_type], 0.03)

    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=HAIR_WEIGHTS)]
    if age == "child" and style == "none":
        style = "short"
    names = list(HAIR_COLOURS)
    if skin_type >= 4:  # darker skin: mostly black/dark brown hair, as in most populations
        weights = np.array([0.6, 0.3, 0.06, 0.02, 0.02, 0.0])
    else:
        weights = np.array([0.2, 0.25, 0.25, 0.1, 0.2, 0.0])
    if age == "older_adult":
        weights = weights * 0.4
        weights[-1] = 0.6
    hair_colour = names[rng.choice(len(names), p=weights / weights.sum())]
    hair = _jitter_rgb(rng, HAIR_COLOURS[hair_colour], 0.04)

    eyes = list(EYE_COLOURS)
    # no natural blue irides: they would read as HP:0000635 Blue irides (iris_colour_blue) without its label
    ew = np.array([0.45, 0.3, 0.1, 0.05, 0.0, 0.05]) if skin_type >= 4 else np.array([0.1, 0.25, 0.15, 0.15, 0.0, 0.1])
    eye_colour = eyes[rng.choice(len(eyes), p=ew / ew.sum())]
    iris = _jitter_rgb(rng, EYE_COLOURS[eye_colour], 0.04)
    lip_base = np.asarray(skin, float) * np.array([0.86, 0.62, 0.62]) + np.array([20, 0, 4])
    lip = _jitter_rgb(rng, lip_base, 0.03)
    background = _jitter_rgb(rng, BACKGROUNDS[rng.integers(len(BACKGROUNDS))], 0.02)
    clothing = tuple(int(v) for v in rng.integers(40, 200, 3))

    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    n = lambda sd: float(rng.normal(0, sd))  # noqa: E731
    # Age canon: children have larger eyes, a higher eye line relative to the skull and a smaller lower face.
    canon = {
        "child":       dict(eye_y=0.455, eye_w=0.046, eye_h=0.020, nose_len=0.075, mouth_y=0.600, head_h=0.56),
        "adolescent":  dict(eye_y=0.440, eye_w=0.044, eye_h=0.017, nose_len=0.088, mouth_y=0.608, head_h=0.6),
        "adult":       dict(eye_y=0.430, eye_w=0.043, eye_h=0.016, nose_len=0.095, mouth_y=0.615, head_h=0.62),
        "older_adult": dict(eye_y=0.430, eye_w=0.042, eye_h=0.014, nose_len=0.100, mouth_y=0.620, head_h=0.62),
    }[age]
    child = age == "child"
    return Identity(
        seed=int(seed), identity_id=int(identity_id), age_group=age,
        skin_type=skin_type, skin_rgb=skin, hair_style=style, hair_colour=hair_colour, hair_rgb=hair,
        eye_colour=eye_colour, iris_rgb=iris, lip_rgb=lip, background_rgb=background, clothing_rgb=clothing,
        head_width=u(0.185, 0.215) * (1.03 if child else 1.0),
        head_height=canon["head_h"] + n(0.012),
        jaw_ratio=u(0.80, 0.90) if child else u(0.72, 0.9),
        chin_ratio=u(0.32, 0.42),
        cranium_ratio=u(1.0, 1.08),
        brow_arch=u(0.008, 0.02), brow_thickness=u(0.012, 0.017) * (0.85 if child else 1.0), brow_tilt=n(0.006),
        eye_y=canon["eye_y"] + n(0.006), eye_dx=u(0.074, 0.084), eye_w=canon["eye_w"] * u(0.93, 1.07),
        eye_h=canon["eye_h"] * u(0.9, 1.1), nose_len=canon["nose_len"] * u(0.92, 1.08), nose_w=u(0.024, 0.032),
        mouth_y=canon["mouth_y"] + n(0.006), mouth_w=u(0.050, 0.062) * (0.9 if child else 1.0),
        lip_upper=u(0.008, 0.012) * (0.75 if age == "older_adult" else 1.0),
        lip_lower=u(0.011, 0.016) * (0.75 if age == "older_adult" else 1.0),
        ear_y=n(0.006), ear_size=u(0.9, 1.1), hairline=u(0.065, 0.09),
        roll_deg=n(2.0), scale=u(1.22, 1.32), shift_x=n(0.012), shift_y=n(0.01),
        light_angle=u(0, 2 * np.pi), light_strength=u(0.0, 0.12),
    )
