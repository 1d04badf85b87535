"""Draw a phantom face: identity + effects -> geometry -> polygons at size*supersample -> box-filter downsample.

Everything is a pure function of its inputs. The pipeline:
  1. `build_geometry(identity, effects)`: the identity's base geometry (a dict of lengths and colours, see effects.py),
     edited by each effect in catalogue order.
  2. `_draw(...)`: polygons, lines and circles with PIL ImageDraw at size*supersample (anti-aliasing by drawing large),
     then `Image.reduce(supersample)`.
  3. soft layers (cheekbone shading, central erythema, oedema, bossing highlights) as Gaussian blobs in numpy at the
     output size, then the identity's lighting gradient.
`region_boxes` gives the pixel boxes of each face region from the same geometry, so tests need no hard-coded pixels;
`render_labels` draws the same scene as a label map (no anti-aliasing) for measurements and masks.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .acne import (LESION_CAP, count_from_intensity, lesion_sites, restrict_types)
from .effects import REGIONS, apply_effects
from .identity import Identity

LABELS = {"background": 0, "skin": 1, "hair": 2, "sclera": 3, "iris": 4, "brow": 5, "lips": 6, "mouth": 7,
          "nostril": 8, "clothing": 9, "lesion": 10}
_POSE_CENTRE_Y = 0.45
_N_ELLIPSE = 20
_COS = np.cos(np.linspace(0, 2 * np.pi, _N_ELLIPSE, endpoint=False))
_SIN = np.sin(np.linspace(0, 2 * np.pi, _N_ELLIPSE, endpoint=False))
_U9 = np.linspace(-1.0, 1.0, 9)
_HAIR_VOLUME = {"none": 0.0, "short": 0.012, "medium": 0.018, "long": 0.02, "curly": 0.03}
_WRINKLES_BY_AGE = {"child": 0.0, "adolescent": 0.0, "adult": 0.0, "older_adult": 0.55}


# ------------------------------------------------------------------------------------------------ geometry
def base_geometry(identity: Identity) -> dict:
    """The identity's face with no effect (keys documented in effects.py)."""
    i = identity
    eye_y = i.eye_y
    head_h = i.head_height
    above = 0.56 if i.age_group == "child" else 0.53 if i.age_group == "adolescent" else 0.5
    top = eye_y - above * head_h
    chin = top + head_h
    brow_y = eye_y - (0.040 if i.age_group == "child" else 0.043)
    cheek_w = i.head_width
    cranium_w = cheek_w * i.cranium_ratio
    nose_tip_y = eye_y + 1.3 * i.nose_len
    mouth_y = max(i.mouth_y, nose_tip_y + 0.045)
    hair_rgb = i.hair_rgb
    brow_rgb = tuple(0.75 * c + 0.25 * min(c, 60) for c in hair_rgb)
    return dict(
        top=top, chin=chin, cranium_w=cranium_w, forehead_w=cranium_w * 0.87, cheek_w=cheek_w,
        jaw_w=cheek_w * i.jaw_ratio, chin_w=cheek_w * i.chin_ratio, jaw_y=mouth_y + 0.02,
        brow_y=brow_y, brow_arch=i.brow_arch, brow_thick=i.brow_thickness, brow_tilt=i.brow_tilt, brow_alpha=1.0,
        brow_in=i.eye_w * 0.85, brow_out=i.eye_w * 1.2, synophrys=0.0, brow_lateral_sparse=0.0, brow_ridge=0.0,
        eye_y=eye_y, eye_dx=i.eye_dx, eye_w=i.eye_w, eye_h_up=i.eye_h, eye_h_low=i.eye_h * 0.72, eye_tilt=0.05,
        iris_r=i.eye_w * 0.44, lid_drop=0.0, epicanthus=0.0, lash=1.0, edema=0.0, strabismus=0.0, lid_eversion=0.0,
        iris_rgb=tuple(float(c) for c in i.iris_rgb),
        nose_root_y=brow_y + 0.012, nose_tip_y=nose_tip_y, nose_w=i.nose_w * (0.85 if i.age_group == "child" else 1),
        tip_r=i.nose_w * 0.42, bridge_w=0.011, bridge_depth=1.0, nares=0.0,
        mouth_y=mouth_y, mouth_w=i.mouth_w, lip_up=i.lip_upper, lip_low=i.lip_lower, corner_drop=0.0,
        mouth_open=0.0, tongue=0.0,
        ear_cy=(brow_y + nose_tip_y) / 2 + i.ear_y, ear_h=0.056 * i.ear_size * (0.9 if i.age_group == "child" else 1),
        ear_w=0.022 * i.ear_size, ear_out=0.0, ear_rot=0.0,
        neck_w=cheek_w * (0.6 if i.age_group == "child" else 0.56), shoulder_y=chin + (0.085 if i.age_group == "child" else 0.1),
        web=0.0,
        hairline_y=brow_y - 0.04 - i.hairline, hair_density=1.0, hair_w=cranium_w * 1.08,
        skin=tuple(float(c) for c in i.skin_rgb), lip_rgb=tuple(float(c) for c in i.lip_rgb),
        sclera=(236.0, 233.0, 226.0), hair_rgb=hair_rgb, brow_rgb=brow_rgb,
        malar=1.0, bossing=0.0, wrinkles=_WRINKLES_BY_AGE[i.age_group], hirsute=0.0,
        erythema=0.0, telangiectasia=0.0, hypopigment=0.0, nodules=0.0, acne=0.0, acne_types=frozenset(),
    )


def build_geometry(identity: Identity, effects: dict[str, float] | None = None) -> dict:
    g = base_geometry(identity)
    if effects:
        apply_effects(g, effects)
    return g


def _pose(identity: Identity, scale_px: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Affine map from face coordinates (x from the midline, y from the top) to pixels: p -> A p + b."""
    r = math.radians(identity.roll_deg)
    s = identity.scale
    m = s * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    centre = np.array([0.5 + identity.shift_x, 0.5 + identity.shift_y])
    b = centre - m @ np.array([0.0, _POSE_CENTRE_Y])
    return m * scale_px, b * scale_px, s * scale_px


# ------------------------------------------------------------------------------------------------ shapes
def _catmull_rom_closed(points: np.ndarray, n: int = 6) -> np.ndarray:
    p0, p1, p2, p3 = (np.roll(points, k, axis=0) for k in (1, 0, -1, -2))
    t = np.linspace(0, 1, n, endpoint=False)[None, :, None]
    t2, t3 = t * t, t * t * t
    out = 0.5 * ((2 * p1[:, None]) + (-p0 + p2)[:, None] * t + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t2
                 + (-p0 + 3 * p1 - 3 * p2 + p3)[:, None] * t3)
    return out.reshape(-1, 2)


def head_outline(g: dict) -> np.ndarray:
    """Closed outline starting at the chin, going up the image-right side, over the crown and down the left."""
    top, eye_y, chin = g["top"], g["eye_y"], g["chin"]
    h = eye_y - top
    right = [(g["chin_w"], chin - 0.022), (g["jaw_w"], g["jaw_y"]), (g["cheek_w"], eye_y + 0.065),
             (g["cranium_w"], eye_y - 0.025), (g["forehead_w"], eye_y - 0.55 * h), (g["cranium_w"] * 0.5, top + 0.13 * h)]
    ring = [(0.0, chin)] + right + [(0.0, top)] + [(-x, y) for x, y in reversed(right)]
    return _catmull_rom_closed(np.array(ring), 6)


def _ellipse(cx, cy, rx, ry, rot=0.0) -> np.ndarray:
    x, y = rx * _COS, ry * _SIN
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        x, y = x * c - y * s, x * s + y * c
    return np.stack([cx + x, cy + y], axis=1)


def _rgb(c) -> tuple[int, int, int]:
    return (min(255, max(0, int(c[0] + 0.5))), min(255, max(0, int(c[1] + 0.5))), min(255, max(0, int(c[2] + 0.5))))


def _mul(c, k):
    return (c[0] * k, c[1] * k, c[2] * k)


def _lerp(a, b, t):
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _lighter(c, k):
    return _lerp(c, (255.0, 250.0, 245.0), k)


class _Canvas:
    """Draws face-coordinate shapes on an image through the identity's pose; colour or label mode."""

    def __init__(self, identity: Identity, side: int, background, labels: bool):
        self.labels = labels
        self.img = Image.new("L" if labels else "RGB", (side, side), 0 if labels else background)
        self.draw = ImageDraw.Draw(self.img)
        self.a, self.b, self.px = _pose(identity, side)

    def _flat(self, xy: np.ndarray) -> list:
        return (xy @ self.a.T + self.b).ravel().tolist()

    def poly(self, xy, colour, label):
        self.draw.polygon(self._flat(np.asarray(xy, float)), fill=label if self.labels else _rgb(colour))

    def line(self, xy, colour, width):
        if not self.labels:
            self.draw.line(self._flat(np.asarray(xy, float)), fill=_rgb(colour), width=max(1, round(width * self.px)))

    def circle(self, x, y, r, colour, label):
        cx, cy = self.a @ (x, y) + self.b
        rr = r * self.px
        self.draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=label if self.labels else _rgb(colour))


# ------------------------------------------------------------------------------------------------ parts
def _hair(c: _Canvas, g: dict, identity: Identity, outline: np.ndarray, back: bool):
    style = identity.hair_style
    if style == "none" or g["hair_density"] <= 0.02:
        return
    dens = g["hair_density"]
    colour = _lerp(g["skin"], g["hair_rgb"], 0.35 + 0.65 * dens)
    vol = _HAIR_VOLUME[style] * (0.3 + 0.7 * dens)
    side_y = g["brow_y"] if (style == "short" or not back) else g["eye_y"] + 0.02
    centre = np.array([0.0, g["eye_y"]])
    arc = outline[outline[:, 1] < side_y]
    d = arc - centre
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    if style == "curly":
        ang = np.arctan2(d[:, 1], d[:, 0])
        arc = arc + d * (vol * (1 + 0.35 * np.sin(ang * 14)))[:, None]
    else:
        arc = arc + d * vol
    if back:
        if style == "short":
            return
        w = max(g["hair_w"], g["cranium_w"]) + vol
        bottom = {"medium": g["jaw_y"] + 0.03, "long": g["shoulder_y"] + 0.1, "curly": g["chin"] - 0.01}[style]
        wob = 0.012 if style == "curly" else 0.0
        pts = np.vstack([arc, [(-w, side_y), (-w - wob, bottom - 0.04), (-w * 0.8, bottom), (w * 0.8, bottom),
                               (w + wob, bottom - 0.04), (w, side_y)]])
        c.poly(pts, _mul(colour, 0.85), LABELS["hair"])
        return
    # front cap: outer arc over the crown, back along the hairline (low at the temples, high in the middle)
    x_side = float(np.abs(arc[:, 0]).max())
    xs = np.linspace(-x_side, x_side, 15)
    rise = np.abs(xs / x_side) ** 3
    hairline = np.stack([xs, g["hairline_y"] + (side_y - g["hairline_y"]) * rise], axis=1)
    c.poly(np.vstack([arc, hairline]), colour, LABELS["hair"])


def _neck_and_body(c: _Canvas, g: dict, identity: Identity):
    sy, nw = g["shoulder_y"], g["neck_w"]
    c.poly([(-0.62, 1.02), (-0.6, sy + 0.09), (-0.42, sy + 0.03), (-nw - 0.05, sy), (nw + 0.05, sy),
            (0.42, sy + 0.03), (0.6, sy + 0.09), (0.62, 1.02)], identity.clothing_rgb, LABELS["clothing"])
    neck = _mul(g["skin"], 0.86)
    c.poly([(-nw, g["jaw_y"] - 0.02), (nw, g["jaw_y"] - 0.02), (nw * 1.04, sy + 0.01), (nw * 0.5, sy + 0.035),
            (-nw * 0.5, sy + 0.035), (-nw * 1.04, sy + 0.01)], neck, LABELS["skin"])
    if g["web"] > 0:
        w = g["web"]
        for s in (-1, 1):
            c.poly([(s * g["cheek_w"] * 0.85, g["ear_cy"] + 0.02), (s * (nw + 0.13 * w), sy + 0.005),
                    (s * nw * 0.9, sy + 0.005), (s * nw * 0.9, g["jaw_y"])], neck, LABELS["skin"])


def _ears(c: _Canvas, g: dict, outline: np.ndarray):
    skin = g["skin"]
    side = outline[outline[:, 0] > 0]
    order = np.argsort(side[:, 1])
    attach = float(np.interp(g["ear_cy"], side[order, 1], side[order, 0]))
    for s in (-1, 1):
        cx = s * (attach + g["ear_w"] * 0.55 + g["ear_out"])
        rot = s * g["ear_rot"]
        c.poly(_ellipse(cx, g["ear_cy"], g["ear_w"], g["ear_h"], rot), _mul(skin, 0.95), LABELS["skin"])
        c.poly(_ellipse(cx + s * 0.002, g["ear_cy"] + 0.006, g["ear_w"] * 0.55, g["ear_h"] * 0.6, rot),
               _mul(skin, 0.76), LABELS["skin"])


def _eye_frame(g, s):
    """Local eye axes: a (lateral, along the fissure) and b (down), tilted by eye_tilt (+ = lateral corner up)."""
    th = g["eye_tilt"]
    ct, st = math.cos(th), math.sin(th)
    centre = np.array([s * g["eye_dx"], g["eye_y"]])
    ax = np.array([s * ct, -st])
    bx = np.array([s * st, ct])
    return centre, ax, bx


def _eyes(c: _Canvas, g: dict, identity: Identity):
    skin = g["skin"]
    ew, hu, hl = g["eye_w"], g["eye_h_up"], g["eye_h_low"]
    upper = -hu * (1 - g["lid_drop"]) * (1 - _U9 ** 2) ** 0.9 * (1 + 0.12 * _U9)
    lower = hl * (1 - _U9 ** 2) ** 1.1
    crease = -(hu * 1.55 + 0.004) * (1 - _U9 ** 2) ** 0.7
    a = _U9 * ew
    lash = g["lash"]
    lash_col = _lerp(_mul(skin, 0.55), (22, 18, 18), min(lash, 1.0))
    for s in (-1, 1):
        o, ax, bx = _eye_frame(g, s)
        P = lambda aa, bb: o + np.outer(aa, ax) + np.outer(bb, bx)  # noqa: E731
        up, lo = P(a, upper), P(a, lower)
        c.poly(np.vstack([up, lo[::-1]]), g["sclera"], LABELS["sclera"])
        ir = g["iris_r"]
        io = o - ax * (0.45 * ew * g["strabismus"]) if s > 0 else o  # strabismus: the image-right eye turns in
        c.circle(io[0], io[1] + 0.0005, ir, g["iris_rgb"], LABELS["iris"])
        c.circle(io[0], io[1] + 0.0005, ir * 0.45, (12, 10, 10), LABELS["iris"])
        c.circle(io[0] - ir * 0.3, io[1] - ir * 0.35, ir * 0.2, (250, 250, 250), LABELS["iris"])
        # lids cover whatever of the iris lies outside the fissure
        cover = ir * 1.4 + 0.004
        c.poly(np.vstack([up, P(a[::-1], np.full(9, -cover))]), skin, LABELS["skin"])
        c.poly(np.vstack([lo, P(a[::-1], np.full(9, cover))]), skin, LABELS["skin"])
        ev = g["lid_eversion"]
        if ev > 0:  # lateral lower lid everted: a red conjunctival strip below the lateral third
            lat = _U9[4:]
            base = hl * (1 - lat ** 2) ** 1.1
            drop = hl * 1.5 * ev * np.clip((lat - 0.1) / 0.4, 0, 1) * (1 - lat ** 2) ** 0.5
            c.poly(np.vstack([P(lat * ew, base), P(lat[::-1] * ew, (base + drop)[::-1])]), (186, 92, 96),
                   LABELS["sclera"])
        c.line(P(a * 0.9, crease), _mul(skin, 0.8), 0.0025)
        c.line(P(a, lower), _mul(skin, 0.78), 0.002)
        c.line(up, lash_col, 0.0035 * (0.6 + 0.4 * min(lash, 1.0)) * (1 + 0.9 * max(lash - 1, 0)))
        if lash > 1:
            for k in (4, 5, 6, 7):
                base = up[k]
                tipv = base + (ax * 0.25 * (k - 3) / 4 - bx) * 0.009 * (lash - 1)
                c.line([base, tipv], (22, 18, 18), 0.0022)
        e = g["epicanthus"]
        if e > 0:
            u0, l0 = -1 + 0.75 * e, -1 + 0.45 * e
            ua = np.linspace(u0, -1, 5)
            la = np.linspace(-1, l0, 5)
            fold_up = P(ua * ew, -hu * (1 - g["lid_drop"]) * (1 - ua ** 2) ** 0.9 * (1 + 0.12 * ua) - 0.001)
            tip = P(np.array([-ew * (1 + 0.3 * e)]), np.array([0.3 * hl]))
            fold_lo = P(la * ew, hl * (1 - la ** 2) ** 1.1 + 0.001)
            c.poly(np.vstack([fold_up, tip, fold_lo]), skin, LABELS["skin"])
            c.line(np.vstack([fold_up[:1], tip, fold_lo[-1:]]), _mul(skin, 0.72), 0.003)


def _brows(c: _Canvas, g: dict):
    skin = g["skin"]
    col = _lerp(skin, g["brow_rgb"], 0.92 * g["brow_alpha"])
    lat = _lerp(col, skin, 0.9 * g["brow_lateral_sparse"])
    u = np.linspace(0, 1, 9)
    th = g["brow_thick"] * (1.15 - 0.6 * u)
    y = g["brow_y"] - g["brow_arch"] * np.sin(np.pi * np.clip(u * 0.9, 0, 1)) ** 0.8 - g["brow_tilt"] * u
    inner, outer = g["eye_dx"] - g["brow_in"], g["eye_dx"] + g["brow_out"]
    for s in (-1, 1):
        x = s * (inner + (outer - inner) * u)
        top, bot = np.stack([x, y - th / 2], 1), np.stack([x, y + th / 2], 1)
        c.poly(np.vstack([top[:7], bot[6::-1]]), col, LABELS["brow"])
        c.poly(np.vstack([top[6:], bot[:5:-1]]), lat, LABELS["brow"])
    sy = g["synophrys"]
    if sy > 0:
        y0, t0 = float(y[0]), float(th[0]) * (0.5 + 0.4 * sy)
        c.poly([(-inner - 0.003, y0 - t0 / 2), (0, y0 - t0 * 0.3), (inner + 0.003, y0 - t0 / 2),
                (inner + 0.003, y0 + t0 / 2), (0, y0 + t0 * 0.4), (-inner - 0.003, y0 + t0 / 2)],
               _lerp(skin, g["brow_rgb"], 0.9 * sy * g["brow_alpha"]), LABELS["brow"])


def _nose(c: _Canvas, g: dict):
    skin = g["skin"]
    root, tip, nw, bw, depth = g["nose_root_y"], g["nose_tip_y"], g["nose_w"], g["bridge_w"], g["bridge_depth"]
    mid = root + 0.5 * (tip - root)
    shade = _mul(skin, 0.84)
    hi = _lighter(skin, 0.18)
    for s in (-1, 1):
        c.line([(s * bw, root + 0.006), (s * bw * 1.05, mid)], _lerp(skin, shade, depth), 0.0065)
        c.line([(s * bw * 1.05, mid), (s * nw * 0.6, tip - 0.02)], shade, 0.0065)
    c.line([(0, root + 0.015), (0, mid)], _lerp(skin, hi, depth), 0.006)
    c.line([(0, mid), (0, tip - g["tip_r"] * 1.4)], hi, 0.006)
    ala_r = nw * 0.42
    for s in (-1, 1):
        c.poly(_ellipse(s * nw * 0.76, tip - 0.005, ala_r, ala_r * 0.95), _mul(skin, 0.92), LABELS["skin"])
        arc = _ellipse(s * nw * 0.76, tip - 0.005, ala_r, ala_r * 0.95)
        c.line(arc[[15, 14, 13, 12, 11, 10, 9, 8, 7, 6]] if s < 0 else arc[[15, 16, 17, 18, 19, 0, 1, 2, 3, 4]],
               _mul(skin, 0.66), 0.004)
    c.poly(_ellipse(0, tip - g["tip_r"] * 0.8, g["tip_r"], g["tip_r"] * 0.9), _lighter(skin, 0.05), LABELS["skin"])
    n = g["nares"]
    if n > -0.95:
        ry = 0.005 * (1 + 1.1 * n) if n > 0 else 0.005 * (1 + n)
        rx = nw * 0.25 * (1 + 0.3 * max(n, 0.0))
        for s in (-1, 1):
            c.poly(_ellipse(s * nw * 0.38, tip + 0.0015 - 0.003 * max(n, 0.0), rx, ry, s * 0.3), _mul(skin, 0.28),
                   LABELS["nostril"])


def _mouth(c: _Canvas, g: dict):
    skin, lip = g["skin"], g["lip_rgb"]
    my, mw, cd, og = g["mouth_y"], g["mouth_w"], g["corner_drop"], g["mouth_open"]
    x = _U9 * mw
    line = my + cd * _U9 ** 2 - 0.002 * (1 - _U9 ** 2)
    env = np.sqrt(1 - _U9 ** 2)
    bow = 1 - 0.3 * np.exp(-(_U9 / 0.16) ** 2)
    up_bot = line - og / 2 * env
    up_top = up_bot - g["lip_up"] * env * bow
    lo_top = line + og / 2 * env
    lo_bot = lo_top + g["lip_low"] * (1 - _U9 ** 2) ** 0.6
    for s in (-1, 1):  # philtrum ridges
        c.line([(s * 0.0065, g["nose_tip_y"] + 0.01), (s * 0.008, float(up_top[4]) - 0.001)], _mul(skin, 0.9), 0.003)
    if og > 0:
        c.poly(np.vstack([np.stack([x, up_bot], 1), np.stack([x, lo_top], 1)[::-1]]), (70, 22, 28), LABELS["mouth"])
    c.poly(np.vstack([np.stack([x, up_top], 1), np.stack([x, up_bot], 1)[::-1]]), _mul(lip, 0.93), LABELS["lips"])
    c.poly(np.vstack([np.stack([x, lo_top], 1), np.stack([x, lo_bot], 1)[::-1]]), lip, LABELS["lips"])
    if g["tongue"] > 0:
        t = g["tongue"]
        c.poly(_ellipse(0, float(lo_top[4]) + g["lip_low"] * 0.45 * t, mw * 0.5, 0.004 + g["lip_low"] * 0.8 * t),
               (196, 86, 96), LABELS["mouth"])
    c.line(np.stack([x, line], 1) if og <= 0 else np.stack([x[[0, 8]], line[[0, 8]]], 1), _mul(lip, 0.55), 0.003)


def _wrinkles(c: _Canvas, g: dict):
    w = g["wrinkles"]
    if w <= 0:
        return
    skin = g["skin"]
    col = _lerp(skin, _mul(skin, 0.68), w)
    xs = np.linspace(-0.075, 0.075, 7)
    for k in range(3):
        y = g["brow_y"] - 0.03 - 0.016 * k
        if y > g["hairline_y"] + 0.008:
            c.line(np.stack([xs, y + 0.003 * np.cos(xs * 60 + k)], 1), col, 0.003)
    for s in (-1, 1):
        c.line([(s * g["nose_w"] * 1.25, g["nose_tip_y"] - 0.012), (s * (g["mouth_w"] * 0.9 + 0.008), g["mouth_y"] - 0.01),
                (s * (g["mouth_w"] * 1.1 + 0.004), g["mouth_y"] + 0.02)], col, 0.0035)
        ex = s * (g["eye_dx"] + g["eye_w"] * 1.2)
        for dy in (-0.008, 0.0, 0.008):
            c.line([(ex, g["eye_y"] + dy * 0.5), (ex + s * 0.016, g["eye_y"] + dy * 1.6)], col, 0.0025)


def _beard(c: _Canvas, g: dict, outline: np.ndarray):
    h = g["hirsute"]
    if h <= 0:
        return
    col = _lerp(g["skin"], g["hair_rgb"], 0.55 * h)
    y0 = g["mouth_y"] - 0.035
    low = outline[outline[:, 1] > y0]
    low = low[np.argsort(low[:, 0])]  # left to right along the jaw (the lower outline is convex)
    inner = [(g["cheek_w"] * 0.72, y0), (g["mouth_w"] * 1.15, g["mouth_y"] + 0.01),
             (g["mouth_w"] * 0.5, g["mouth_y"] + g["lip_low"] + 0.012), (0, g["mouth_y"] + g["lip_low"] + 0.014),
             (-g["mouth_w"] * 0.5, g["mouth_y"] + g["lip_low"] + 0.012), (-g["mouth_w"] * 1.15, g["mouth_y"] + 0.01),
             (-g["cheek_w"] * 0.72, y0)]
    c.poly(np.vstack([low, inner]), col, LABELS["skin"])
    my, mw = g["mouth_y"], g["mouth_w"]
    top = my - g["lip_up"] - 0.004
    c.poly([(-mw * 1.05, my + 0.002), (-mw * 0.5, top - 0.008), (0, top - 0.01), (mw * 0.5, top - 0.008),
            (mw * 1.05, my + 0.002), (mw * 0.6, top), (0, top - 0.001), (-mw * 0.6, top)], col, LABELS["skin"])


# ---------------------------------------------------------------------------------- lesions and skin marks
def area_frames(g: dict) -> dict[str, tuple[float, float, float, float]]:
    """Lesion areas as (centre x, centre y, half width, half height) in face coordinates."""
    cheek_cy = (g["eye_y"] + g["nose_tip_y"]) / 2 + 0.02
    cheek_hh = (g["mouth_y"] - g["eye_y"]) * 0.26
    chin_top = g["mouth_y"] + g["lip_low"] + 0.008
    return {
        "forehead": (0.0, (g["hairline_y"] + g["brow_y"]) / 2 - 0.004, g["forehead_w"] * 0.5,
                     (g["brow_y"] - g["hairline_y"]) * 0.3),
        "left_cheek": (-g["cheek_w"] * 0.56, cheek_cy, g["cheek_w"] * 0.24, cheek_hh),
        "right_cheek": (g["cheek_w"] * 0.56, cheek_cy, g["cheek_w"] * 0.24, cheek_hh),
        "chin": (0.0, (chin_top + g["chin"]) / 2 - 0.004, g["chin_w"] * 0.6 + 0.012, (g["chin"] - chin_top) * 0.25),
        "nose": (0.0, g["nose_tip_y"] - 0.03, g["nose_w"] * 0.5, 0.02),
    }


def _site_xy(frames, area, u, v):
    cx, cy, hw, hh = frames[area]
    return cx + u * hw, cy + v * hh


def _acne(c: _Canvas, g: dict, identity: Identity, lesion_count: int | None):
    if lesion_count is None:
        if g["acne"] <= 0:
            return
        lesion_count = count_from_intensity(g["acne"])
    n = min(int(lesion_count), LESION_CAP)
    if n <= 0:
        return
    types = None if (not g["acne_types"] or "mixed" in g["acne_types"]) else set(g["acne_types"])
    sites = restrict_types(lesion_sites(identity.seed, identity.identity_id)[:n], types)
    frames = area_frames(g)
    skin = g["skin"]
    red = _lerp(skin, (196, 58, 62), 0.75)
    for site in sites:
        x, y = _site_xy(frames, site.area, site.u, site.v)
        r = 0.0055 * site.size
        lab = LABELS["lesion"]
        if site.kind == "comedo":
            c.circle(x, y, r * 0.6, _lerp(skin, (40, 30, 26), 0.85), lab)
        elif site.kind == "papule":
            c.circle(x, y, r * 1.25, _lerp(skin, red, 0.45), lab)
            c.circle(x, y, r, red, lab)
        elif site.kind == "pustule":
            c.circle(x, y, r * 1.2, red, lab)
            c.circle(x, y, r * 0.55, (246, 240, 214), lab)
        else:  # nodule / cyst
            c.circle(x, y, r * 2.0, _lerp(skin, (150, 50, 62), 0.55), lab)
            c.circle(x, y, r * 1.5, _lerp(skin, (150, 50, 62), 0.85), lab)
            c.circle(x - r * 0.5, y - r * 0.5, r * 0.4, _lighter(red, 0.4), lab)


def _marks(identity: Identity, salt: int, n: int, areas: tuple[str, ...]) -> np.ndarray:
    """Fixed per-identity sites for skin marks (area index, u, v, size, extra), nested by count."""
    rng = np.random.default_rng([identity.seed, identity.identity_id, salt])
    out = np.empty((n, 5))
    for k in range(n):
        r, a = math.sqrt(rng.uniform()) * 0.85, rng.uniform(0, 2 * math.pi)
        out[k] = (rng.integers(len(areas)), r * math.cos(a), r * math.sin(a), rng.uniform(0.8, 1.2), rng.uniform())
    return out


_PATCH_AREAS = ("forehead", "left_cheek", "right_cheek", "chin")
_NODULE_AREAS = ("forehead", "left_cheek", "right_cheek", "chin", "nose")
_VESSEL_AREAS = ("left_cheek", "right_cheek", "nose")


def _skin_marks(c: _Canvas, g: dict, identity: Identity):
    skin = g["skin"]
    frames = area_frames(g)
    if g["hypopigment"] > 0:
        t = g["hypopigment"]
        y = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2]
        pale = tuple(min(255.0, 0.5 * ch + 0.5 * y + 32) for ch in skin)
        col = _lerp(skin, pale, 0.5 + 0.4 * t)
        for k, (ai, u, v, size, extra) in enumerate(_marks(identity, 13, 6, _PATCH_AREAS)):
            if k >= math.ceil(6 * t):
                break
            x, yy = _site_xy(frames, _PATCH_AREAS[int(ai)], u * 0.7, v * 0.7)
            r = 0.02 * size * (0.7 + 0.3 * t)
            wob = 1 + 0.18 * np.sin(np.arange(_N_ELLIPSE) * (2 * np.pi / _N_ELLIPSE) * 3 + extra * 6)
            c.poly(np.stack([x + r * wob * _COS, yy + 0.8 * r * wob * _SIN], 1), col, LABELS["skin"])
    if g["nodules"] > 0:
        t = g["nodules"]
        col = (skin[0] * 0.93, skin[1] * 0.8, skin[2] * 0.76)
        for k, (ai, u, v, size, extra) in enumerate(_marks(identity, 11, 12, _NODULE_AREAS)):
            if k >= math.ceil(12 * t):
                break
            x, yy = _site_xy(frames, _NODULE_AREAS[int(ai)], u, v)
            r = 0.011 * size
            c.circle(x, yy, r * 1.1, _mul(col, 0.8), LABELS["lesion"])
            c.circle(x, yy, r, col, LABELS["lesion"])
            c.circle(x - r * 0.35, yy - r * 0.35, r * 0.35, _lighter(col, 0.3), LABELS["lesion"])
    if g["telangiectasia"] > 0 and not c.labels:
        t = g["telangiectasia"]
        col = _lerp(skin, (186, 40, 52), 0.5 + 0.4 * t)
        rng = np.random.default_rng([identity.seed, identity.identity_id, 17])
        for k in range(16):
            ai, u, v = rng.integers(len(_VESSEL_AREAS)), rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8)
            steps = rng.normal(0, 1, (4, 2)) * 0.006 + rng.normal(0, 1, 2) * 0.004
            if k >= math.ceil(16 * t):
                continue
            x, y = _site_xy(frames, _VESSEL_AREAS[int(ai)], u, v)
            c.line(np.cumsum(np.vstack([(x, y), steps]), axis=0), col, 0.003)


# ---------------------------------------------------------------------------------- soft layers
def _soft_blobs(g: dict) -> list[tuple]:
    """(x, y, rx, ry, rgb, alpha) Gaussian blobs in face coordinates, drawn after downsampling."""
    skin = g["skin"]
    blobs = []
    m = g["malar"]
    if m > 0:
        for s in (-1, 1):
            blobs.append((s * g["cheek_w"] * 0.62, g["eye_y"] + 0.05, 0.04, 0.022, _lighter(skin, 0.3), min(0.9, 0.3 * m)))
            blobs.append((s * g["cheek_w"] * 0.72, g["eye_y"] + 0.11, 0.035, 0.02, _mul(skin, 0.8), min(0.9, 0.25 * m)))
    e = g["erythema"]
    if e > 0:
        red = (min(255.0, skin[0] * 1.02 + 25), skin[1] * 0.5, skin[2] * 0.55)
        for s in (-1, 1):
            blobs.append((s * g["cheek_w"] * 0.5, g["eye_y"] + 0.08, 0.07, 0.05, red, 0.8 * e))
        blobs.append((0.0, g["nose_tip_y"] - 0.025, 0.022, 0.035, red, 0.7 * e))
        blobs.append((0.0, g["chin"] - 0.035, 0.03, 0.018, red, 0.5 * e))
    if g["edema"] > 0:
        d = g["edema"]
        for s in (-1, 1):
            blobs.append((s * g["eye_dx"], g["eye_y"] + g["eye_h_low"] + 0.012, g["eye_w"] * 1.1, 0.012,
                          (skin[0] * 0.78 + 18, skin[1] * 0.7, skin[2] * 0.72), 0.75 * d))
            blobs.append((s * g["eye_dx"], g["eye_y"] - g["eye_h_up"] - 0.01, g["eye_w"], 0.008, _lighter(skin, 0.3), 0.5 * d))
    if g["bossing"] > 0:
        b = g["bossing"]
        for s in (-1, 1):
            blobs.append((s * 0.05, g["brow_y"] - 0.06, 0.04, 0.032, _lighter(skin, 0.45), 0.7 * b))
            blobs.append((s * g["eye_dx"], g["brow_y"] - 0.016, 0.05, 0.008, _mul(skin, 0.7), 0.5 * b))
    if g["brow_ridge"] > 0:
        for s in (-1, 1):
            blobs.append((s * g["eye_dx"], g["brow_y"] + 0.015, g["eye_w"] * 1.3, 0.008, _mul(skin, 0.65),
                          0.5 * g["brow_ridge"]))
    return blobs


def _apply_blobs(arr: np.ndarray, blobs, a: np.ndarray, b: np.ndarray, px: float):
    h, w = arr.shape[:2]
    for x, y, rx, ry, rgb, alpha in blobs:
        cx, cy = a @ (x, y) + b
        rxp, ryp = rx * px, ry * px
        x0, x1 = max(0, int(cx - 1.6 * rxp)), min(w, int(cx + 1.6 * rxp) + 2)
        y0, y1 = max(0, int(cy - 1.6 * ryp)), min(h, int(cy + 1.6 * ryp) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-2.0 * ((np.arange(x0, x1) + 0.5 - cx) / rxp) ** 2)
        gy = np.exp(-2.0 * ((np.arange(y0, y1) + 0.5 - cy) / ryp) ** 2)
        wgt = (alpha * gy[:, None] * gx[None, :])[..., None]
        sub = arr[y0:y1, x0:x1]
        sub += wgt * (np.asarray(rgb, np.float32) - sub)


def _lighting(arr: np.ndarray, identity: Identity):
    if identity.light_strength <= 0:
        return
    h, w = arr.shape[:2]
    ramp_x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    ramp_y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    k = 1 + 2 * identity.light_strength * (math.cos(identity.light_angle) * ramp_x[None, :]
                                           + math.sin(identity.light_angle) * ramp_y[:, None])
    arr *= k[..., None]


# ---------------------------------------------------------------------------------- entry points
def _draw_scene(c: _Canvas, g: dict, identity: Identity, lesion_count: int | None):
    outline = head_outline(g)
    _hair(c, g, identity, outline, back=True)
    _neck_and_body(c, g, identity)
    _ears(c, g, outline)
    c.poly(outline, g["skin"], LABELS["skin"])
    _beard(c, g, outline)
    _wrinkles(c, g)
    _nose(c, g)
    _mouth(c, g)
    _eyes(c, g, identity)
    _brows(c, g)
    _hair(c, g, identity, outline, back=False)
    _skin_marks(c, g, identity)
    _acne(c, g, identity, lesion_count)


def render_face(identity: Identity, effects: dict[str, float] | None = None, size: int = 64, supersample: int = 4,
                lesion_count: int | None = None) -> Image.Image:
    """Draw `identity` with `effects` (effect key -> intensity in [0, 1]) as a size x size RGB image.

    lesion_count overrides the acne count that the acne effects' intensity implies (see acne.py); with no acne
    effect it draws the natural lesion mix. Pure: the same inputs give byte-identical images.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    g = build_geometry(identity, effects)
    canvas = _Canvas(identity, size * supersample, identity.background_rgb, labels=False)
    _draw_scene(canvas, g, identity, lesion_count)
    img = canvas.img.reduce(supersample) if supersample > 1 else canvas.img
    blobs = _soft_blobs(g)
    if blobs or identity.light_strength > 0:
        arr = np.asarray(img, dtype=np.float32).copy()
        a, b, px = _pose(identity, size)
        _apply_blobs(arr, blobs, a, b, px)
        _lighting(arr, identity)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def render_labels(identity: Identity, effects: dict[str, float] | None = None, size: int = 64,
                  lesion_count: int | None = None) -> np.ndarray:
    """The same scene as a uint8 label map (LABELS), drawn without anti-aliasing: for masks and measurements."""
    g = build_geometry(identity, effects)
    canvas = _Canvas(identity, size, None, labels=True)
    _draw_scene(canvas, g, identity, lesion_count)
    return np.asarray(canvas.img)


def _region_rects(g: dict) -> dict[str, list[tuple[float, float, float, float]]]:
    """Face-coordinate rectangles (x0, y0, x1, y1) of each region, generous enough to hold what effects move."""
    eye_x = g["eye_dx"] + g["eye_w"] * 1.35 + 0.01
    brow_x = g["eye_dx"] + g["brow_out"] + 0.012
    ear_x0 = g["cheek_w"] * 0.9
    ear_x1 = g["cheek_w"] + g["ear_out"] + g["ear_w"] * 2.4 + 0.01
    ear_dy = max(g["ear_h"], g["ear_w"]) * 1.3 + 0.01
    face_x = max(g["cranium_w"], g["cheek_w"], g["jaw_w"], g["hair_w"]) + 0.05
    hair_bottom = g["shoulder_y"] + 0.13
    rects = {
        "forehead": [(-face_x, g["top"] - 0.06, face_x, g["eye_y"] - 0.01)],
        "brows": [(-brow_x, g["brow_y"] - g["brow_arch"] - g["brow_thick"] - 0.02, brow_x, g["brow_y"] + 0.02)],
        "eyes": [(-eye_x, g["eye_y"] - 0.04, eye_x, g["eye_y"] + 0.032)],
        "nose": [(-(g["nose_w"] * 1.3 + 0.012), g["nose_root_y"] - 0.006, g["nose_w"] * 1.3 + 0.012,
                  g["nose_tip_y"] + 0.016)],
        "mouth": [(-(g["mouth_w"] * 1.25 + 0.01), g["nose_tip_y"] + 0.004, g["mouth_w"] * 1.25 + 0.01,
                   g["mouth_y"] + g["corner_drop"] + g["lip_low"] + 0.03)],
        "cheeks": [(-face_x, g["eye_y"] - 0.035, face_x, g["mouth_y"] + 0.03)],
        "lower_face": [(-max(g["cheek_w"], g["jaw_w"]) - 0.02, g["mouth_y"] - 0.035,
                        max(g["cheek_w"], g["jaw_w"]) + 0.02, g["chin"] + 0.03)],
        "ears": [(-ear_x1, g["ear_cy"] - ear_dy, -ear_x0, g["ear_cy"] + ear_dy),
                 (ear_x0, g["ear_cy"] - ear_dy, ear_x1, g["ear_cy"] + ear_dy)],
        "neck": [(-0.7, g["jaw_y"] - 0.04, 0.7, 1.1)],
        "hair": [(-face_x - 0.03, g["top"] - 0.07, face_x + 0.03, hair_bottom)],
        "face": [(-face_x - g["ear_out"] - g["ear_w"] * 2, g["top"] - 0.07, face_x + g["ear_out"] + g["ear_w"] * 2,
                  g["chin"] + 0.04)],
    }
    rects["skin"] = rects["face"] + rects["neck"]
    return rects


def region_boxes(identity: Identity, effects: dict[str, float] | None = None, size: int = 64
                 ) -> dict[str, list[tuple[int, int, int, int]]]:
    """Pixel boxes (x0, y0, x1, y1), end-exclusive and clipped to the image, of every region in REGIONS."""
    g = build_geometry(identity, effects)
    a, b, _ = _pose(identity, size)
    out = {}
    for name, rects in _region_rects(g).items():
        boxes = []
        for x0, y0, x1, y1 in rects:
            corners = np.array([(x0, y0), (x1, y0), (x0, y1), (x1, y1)]) @ a.T + b
            lo, hi = np.floor(corners.min(0)), np.ceil(corners.max(0))
            boxes.append((int(max(0, lo[0])), int(max(0, lo[1])), int(min(size, hi[0])), int(min(size, hi[1]))))
        out[name] = boxes
    assert set(out) == set(REGIONS)
    return out


def region_mask(identity: Identity, regions, effect_sets=(None,), size: int = 64) -> np.ndarray:
    """Boolean size x size mask: the union of `regions`' boxes under each of `effect_sets`."""
    mask = np.zeros((size, size), bool)
    for effects in effect_sets:
        boxes = region_boxes(identity, effects, size)
        for r in regions:
            for x0, y0, x1, y1 in boxes[r]:
                mask[y0:y1, x0:x1] = True
    return mask
