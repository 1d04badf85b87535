"""The phantom's effect catalogue: named modifiers of the face geometry, each with an intensity t in [0, 1].

Code lives per EFFECT (a change to the drawing), never per disease or per HPO id; `kg_data/phantom_effects.csv` maps
HPO ids to effects. An effect may take parameters (e.g. `direction` +1/-1 so `eye_slant` serves both up- and
downslanted fissures); a parameterised effect is addressed by a key such as `eye_slant[direction=-1]`.

Every effect edits the geometry dict `g` built by `render.base_geometry` (lengths are fractions of the image side,
x measured from the face's midline, y from the image top, before the identity's pose is applied):
  face:   top, chin, cranium_w, forehead_w, cheek_w, jaw_w, chin_w, jaw_y
  brows:  brow_y, brow_arch, brow_thick, brow_tilt, brow_alpha, synophrys, brow_lateral_sparse
  eyes:   eye_y, eye_dx, eye_w, eye_h_up, eye_h_low, eye_tilt (radians, + = lateral corner up), iris_r, lid_drop,
          epicanthus, lash, edema, strabismus, lid_eversion, iris_rgb
  nose:   nose_root_y, nose_tip_y, nose_w, tip_r, bridge_w, bridge_depth, nares
  mouth:  mouth_y, mouth_w, lip_up, lip_low, corner_drop, mouth_open, tongue
  ears:   ear_cy, ear_h, ear_w, ear_out, ear_rot
  neck:   neck_w, shoulder_y, web
  hair:   hairline_y, hair_density
  skin:   skin, lip_rgb, sclera (RGB float triples), malar (cheekbone shading, 1 = normal), bossing, brow_ridge,
          wrinkles, hirsute, erythema, telangiectasia, hypopigment, nodules, acne (intensity), acne_types (set)
Each effect names the face regions it may change (`render.region_boxes` draws them from the same geometry).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

REGIONS = ("forehead", "brows", "eyes", "nose", "mouth", "cheeks", "lower_face", "ears", "neck", "hair", "face",
           "skin")


@dataclass(frozen=True)
class Effect:
    name: str
    regions: tuple[str, ...]
    apply: Callable[..., None]      # apply(g, t, **params) edits g in place
    doc: str
    variants: tuple[dict, ...] = field(default=({},))   # the parameter sets the catalogue supports (and tests)


EFFECTS: dict[str, Effect] = {}


def effect(name: str, regions: tuple[str, ...], doc: str, variants: tuple[dict, ...] = ({},)):
    def register(fn):
        for r in regions:
            assert r in REGIONS, r
        EFFECTS[name] = Effect(name, regions, fn, doc, variants)
        return fn
    return register


UP_DOWN = ({"direction": 1}, {"direction": -1})


def _lerp(a, b, t):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _scale_signed(d: int, t: float, up: float, down: float) -> float:
    """Multiplier 1 + up*t for direction +1, 1 - down*t for direction -1."""
    return 1.0 + up * t if d > 0 else 1.0 - down * t


# ---------------------------------------------------------------- eyes
@effect("eye_slant", ("eyes",), "palpebral fissure tilt: lateral corner up (+1) or down (-1), up to 17 degrees",
        UP_DOWN)
def _eye_slant(g, t, direction=1):
    g["eye_tilt"] += direction * 0.30 * t


@effect("eye_spacing", ("eyes", "brows", "nose"), "inter-eye distance up to +30% (+1) or -22% (-1); brows follow",
        UP_DOWN)
def _eye_spacing(g, t, direction=1):
    g["eye_dx"] *= _scale_signed(direction, t, 0.30, 0.22)


@effect("epicanthus", ("eyes",), "skin fold over the inner canthus, growing from the corner")
def _epicanthus(g, t):
    g["epicanthus"] = max(g["epicanthus"], t)


@effect("ptosis", ("eyes",), "upper lid drops over the iris (up to 60% of the fissure height)")
def _ptosis(g, t):
    g["lid_drop"] = max(g["lid_drop"], 0.6 * t)


@effect("proptosis", ("eyes",), "wider fissure with sclera visible above and below the iris (up to +75%)")
def _proptosis(g, t):
    g["eye_h_up"] *= 1 + 0.75 * t
    g["eye_h_low"] *= 1 + 0.75 * t


@effect("palpebral_length", ("eyes",), "palpebral fissure length +30% (+1) or -35% (-1, blepharophimosis)", UP_DOWN)
def _palpebral_length(g, t, direction=1):
    g["eye_w"] *= _scale_signed(direction, t, 0.30, 0.35)


@effect("periorbital_edema", ("eyes", "cheeks"), "puffy, darker swelling under and over the eyes")
def _edema(g, t):
    g["edema"] = max(g["edema"], t)


@effect("eyelashes", ("eyes",), "lash line: long lashes (+1) or lashes thinning to none (-1)", UP_DOWN)
def _eyelashes(g, t, direction=1):
    g["lash"] = g["lash"] + t if direction > 0 else g["lash"] * (1 - t)


@effect("strabismus", ("eyes",), "one eye (image right) turns inwards, by up to 45% of the fissure half-length")
def _strabismus(g, t):
    g["strabismus"] = max(g["strabismus"], t)


@effect("lower_lid_eversion", ("eyes",), "lateral third of the lower lids turns out, showing red conjunctiva")
def _lid_eversion(g, t):
    g["lid_eversion"] = max(g["lid_eversion"], t)


@effect("iris_colour_blue", ("eyes",), "irides turn blue")
def _blue_irides(g, t):
    g["iris_rgb"] = _lerp(g["iris_rgb"], (78.0, 126.0, 184.0), t)


# ---------------------------------------------------------------- brows
@effect("synophrys", ("brows",), "brows meet over the nasal root")
def _synophrys(g, t):
    g["synophrys"] = max(g["synophrys"], t)


@effect("eyebrow_thickness", ("brows",), "brows up to 2.2x thicker (+1) or fading to absent (-1)", UP_DOWN)
def _brow_thickness(g, t, direction=1):
    if direction > 0:
        g["brow_thick"] *= 1 + 1.2 * t
    else:
        g["brow_alpha"] *= 1 - t


@effect("eyebrow_arch", ("brows",), "highly arched brows: arch height up by 0.03 of the image")
def _brow_arch(g, t):
    g["brow_arch"] += 0.03 * t


@effect("supraorbital_ridges", ("brows", "eyes"), "shadow under a prominent brow ridge")
def _ridges(g, t):
    g["brow_ridge"] = max(g["brow_ridge"], t)


@effect("sparse_lateral_eyebrow", ("brows",), "lateral third of each brow fades")
def _brow_lateral(g, t):
    g["brow_lateral_sparse"] = max(g["brow_lateral_sparse"], t)


# ---------------------------------------------------------------- nose
@effect("nasal_bridge_width", ("nose", "eyes"), "nasal bridge up to 2x wider (+1) or 45% narrower (-1)", UP_DOWN)
def _bridge_width(g, t, direction=1):
    g["bridge_w"] *= _scale_signed(direction, t, 1.0, 0.45)


@effect("nasal_bridge_depressed", ("nose", "eyes"),
        "flat nasal root: bridge shading and highlight fade, the bridge starts lower and wider")
def _bridge_depressed(g, t):
    g["bridge_depth"] *= 1 - t
    g["bridge_w"] *= 1 + 0.5 * t
    g["nose_root_y"] += 0.03 * t


@effect("nose_length", ("nose", "mouth"), "nose tip moves: longer (+1, +20%) or shorter (-1, -30%)", UP_DOWN)
def _nose_length(g, t, direction=1):
    g["nose_tip_y"] += (0.2 if direction > 0 else -0.3) * t * (g["nose_tip_y"] - g["nose_root_y"])


@effect("nose_width", ("nose",), "alae up to 50% wider (+1) or 30% narrower (-1)", UP_DOWN)
def _nose_width(g, t, direction=1):
    g["nose_w"] *= _scale_signed(direction, t, 0.5, 0.3)


@effect("bulbous_nose", ("nose",), "rounder, larger nasal tip and alae")
def _bulbous(g, t):
    g["tip_r"] *= 1 + 1.0 * t
    g["nose_w"] *= 1 + 0.2 * t


@effect("nasal_tip", ("nose",), "anteverted nares (+1: tip up, nostrils shown) or depressed tip (-1: nostrils hidden)",
        UP_DOWN)
def _nasal_tip(g, t, direction=1):
    g["nares"] += direction * t
    g["nose_tip_y"] -= direction * 0.008 * t


# ---------------------------------------------------------------- mouth
@effect("philtrum_length", ("mouth", "lower_face"), "mouth moves away from (+1) or towards (-1) the nose", UP_DOWN)
def _philtrum(g, t, direction=1):
    g["mouth_y"] += direction * 0.45 * t * (g["mouth_y"] - g["nose_tip_y"])


@effect("mouth_width", ("mouth",), "mouth up to 40% wider (+1) or 35% narrower (-1)", UP_DOWN)
def _mouth_width(g, t, direction=1):
    g["mouth_w"] *= _scale_signed(direction, t, 0.4, 0.35)


@effect("vermilion", ("mouth",), "lip thickness up to 2x (+1) or down to 35% (-1); lip = both, upper or lower",
        ({"direction": 1}, {"direction": -1}, {"direction": 1, "lip": "lower"}))
def _vermilion(g, t, direction=1, lip="both"):
    k = _scale_signed(direction, t, 1.0, 0.65)
    if lip in ("both", "upper"):
        g["lip_up"] *= k
    if lip in ("both", "lower"):
        g["lip_low"] *= k


@effect("downturned_mouth", ("mouth",), "mouth corners drop by up to 0.018 of the image")
def _downturned(g, t):
    g["corner_drop"] += 0.018 * t


@effect("open_mouth", ("mouth",), "lips part, showing the dark mouth interior")
def _open_mouth(g, t):
    g["mouth_open"] = max(g["mouth_open"], 0.016 * t)


@effect("tongue_protrusion", ("mouth",), "mouth opens and a large tongue shows over the lower lip")
def _tongue(g, t):
    g["tongue"] = max(g["tongue"], t)
    g["mouth_open"] = max(g["mouth_open"], 0.008 * t)


# ---------------------------------------------------------------- face shape
@effect("mandible", ("lower_face", "neck", "cheeks"), "lower jaw longer and chin broader (+1, prognathia) or receding (-1)",
        UP_DOWN)
def _mandible(g, t, direction=1):
    if direction > 0:
        g["chin"] += 0.045 * t
        g["chin_w"] *= 1 + 0.45 * t
        g["jaw_w"] *= 1 + 0.05 * t
    else:
        g["chin"] -= 0.035 * t
        g["chin_w"] *= 1 - 0.3 * t


@effect("jaw_width", ("lower_face", "neck", "cheeks"), "jaw angle up to 18% wider (+1) or narrower (-1)", UP_DOWN)
def _jaw_width(g, t, direction=1):
    g["jaw_w"] *= 1 + direction * 0.18 * t


@effect("pointed_chin", ("lower_face", "neck", "cheeks"), "chin narrows to a point")
def _pointed_chin(g, t):
    g["chin_w"] *= 1 - 0.75 * t
    g["jaw_w"] *= 1 - 0.08 * t
    g["chin"] += 0.008 * t


@effect("face_length", ("lower_face", "neck", "mouth", "cheeks"), "lower face up to +0.06 longer (+1) or 0.045 shorter (-1)",
        UP_DOWN)
def _face_length(g, t, direction=1):
    g["chin"] += (0.06 if direction > 0 else -0.045) * t
    g["jaw_y"] += (0.03 if direction > 0 else -0.02) * t
    g["mouth_y"] += (0.012 if direction > 0 else -0.008) * t


@effect("face_width", ("face", "ears", "hair", "neck"), "whole face up to 15% wider (+1) or narrower (-1)", UP_DOWN)
def _face_width(g, t, direction=1):
    k = 1 + direction * 0.15 * t
    for key in ("cranium_w", "forehead_w", "cheek_w", "jaw_w", "chin_w"):
        g[key] *= k


@effect("triangular_face", ("face", "ears", "hair", "neck"), "broad forehead tapering to a narrow jaw and chin")
def _triangular(g, t):
    g["cranium_w"] *= 1 + 0.07 * t
    g["forehead_w"] *= 1 + 0.07 * t
    g["jaw_w"] *= 1 - 0.22 * t
    g["chin_w"] *= 1 - 0.45 * t


@effect("round_face", ("face", "ears", "hair", "neck"), "moon face: jaw as wide as the cheeks, full cheeks, round chin")
def _round_face(g, t):
    g["cheek_w"] *= 1 + 0.07 * t
    g["jaw_w"] += (g["cheek_w"] * 0.97 - g["jaw_w"]) * t
    g["chin_w"] *= 1 + 0.35 * t
    g["chin"] -= 0.008 * t


@effect("coarse_features", ("face",), "heavier brows, brow ridge, broad nose and tip, thick lips, broad jaw")
def _coarse(g, t):
    g["brow_thick"] *= 1 + 0.6 * t
    g["brow_ridge"] = max(g["brow_ridge"], t)
    g["nose_w"] *= 1 + 0.35 * t
    g["tip_r"] *= 1 + 0.5 * t
    g["lip_up"] *= 1 + 0.5 * t
    g["lip_low"] *= 1 + 0.5 * t
    g["jaw_w"] *= 1 + 0.08 * t
    g["mouth_w"] *= 1 + 0.1 * t


@effect("frontal_bossing", ("forehead",), "bulging forehead: taller, wider vault with two frontal highlights")
def _bossing(g, t):
    g["bossing"] = max(g["bossing"], t)
    g["top"] -= 0.02 * t
    g["forehead_w"] *= 1 + 0.06 * t


@effect("forehead_height", ("forehead", "hair"), "hairline and vault up (+1, high forehead) or hairline down (-1)",
        UP_DOWN)
def _forehead_height(g, t, direction=1):
    if direction > 0:
        g["hairline_y"] -= 0.035 * t
        g["top"] -= 0.03 * t
    else:
        g["hairline_y"] += 0.03 * t


@effect("forehead_width", ("forehead", "hair"), "temples up to 12% wider")
def _forehead_width(g, t):
    g["forehead_w"] *= 1 + 0.12 * t


@effect("malar", ("cheeks",), "cheekbone highlight and shadow: prominent (+1, x2.2) or flat (-1, none)", UP_DOWN)
def _malar(g, t, direction=1):
    g["malar"] *= 1 + 1.2 * t if direction > 0 else 1 - t


# ---------------------------------------------------------------- ears
@effect("ear_height", ("ears",), "ears set lower (+1, up to 0.05 of the image) or higher (-1)", UP_DOWN)
def _ear_height(g, t, direction=1):
    g["ear_cy"] += direction * 0.05 * t


@effect("ear_size", ("ears",), "ears up to 45% larger (+1) or smaller (-1, microtia)", UP_DOWN)
def _ear_size(g, t, direction=1):
    k = 1 + direction * 0.45 * t
    g["ear_h"] *= k
    g["ear_w"] *= k


@effect("ear_protrusion", ("ears",), "ears stand out from the head")
def _ear_out(g, t):
    g["ear_out"] += 0.03 * t
    g["ear_w"] *= 1 + 0.35 * t


@effect("ear_rotation", ("ears",), "ears tilted back (posterior rotation, up to 25 degrees)")
def _ear_rot(g, t):
    g["ear_rot"] += 0.45 * t


@effect("ear_roundness", ("ears",), "rounder ears: width approaches height")
def _ear_round(g, t):
    g["ear_w"] *= 1 + 0.6 * t
    g["ear_h"] *= 1 - 0.15 * t


# ---------------------------------------------------------------- neck
@effect("short_neck", ("neck",), "shoulders rise towards the chin (by up to 0.07 of the image)")
def _short_neck(g, t):
    g["shoulder_y"] -= 0.07 * t


@effect("neck_width", ("neck",), "neck up to 45% broader")
def _neck_width(g, t):
    g["neck_w"] *= 1 + 0.45 * t


@effect("webbed_neck", ("neck", "ears"), "skin webs from behind the ears to the shoulders")
def _webbed(g, t):
    g["web"] = max(g["web"], t)


# ---------------------------------------------------------------- skin colour and texture
def _luma(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


@effect("pallor", ("skin", "mouth"), "skin and lips lighter and desaturated (ashen on dark skin)")
def _pallor(g, t):
    y = _luma(g["skin"])
    pale = tuple(min(255.0, 0.5 * c + 0.5 * y + 18) for c in g["skin"])
    g["skin"] = _lerp(g["skin"], pale, 0.85 * t)
    g["lip_rgb"] = _lerp(g["lip_rgb"], tuple(0.5 * a + 0.5 * b for a, b in zip(pale, g["lip_rgb"])), t)


@effect("hyperpigmentation", ("skin",), "skin up to 30% darker and browner")
def _hyperpig(g, t):
    dark = (g["skin"][0] * 0.72, g["skin"][1] * 0.66, g["skin"][2] * 0.6)
    g["skin"] = _lerp(g["skin"], dark, t)


@effect("jaundice", ("skin", "eyes"), "skin and sclera turn yellow")
def _jaundice(g, t):
    s = g["skin"]
    g["skin"] = _lerp(s, (min(255.0, s[0] * 1.0 + 4), min(255.0, s[1] * 0.97 + 4), s[2] * 0.66), t)
    g["sclera"] = _lerp(g["sclera"], (226.0, 210.0, 110.0), t)


@effect("erythema", ("skin", "cheeks", "nose"),
        "redness: central (cheeks and nose, as in rosacea) or diffuse (whole face and neck: flushing, plethora)",
        ({"pattern": "central"}, {"pattern": "diffuse"}))
def _erythema(g, t, pattern="central"):
    if pattern == "diffuse":
        s = g["skin"]
        g["skin"] = _lerp(s, (min(255.0, s[0] * 1.0 + 8), s[1] * 0.8, s[2] * 0.8), t)
    else:
        g["erythema"] = max(g["erythema"], t)


@effect("telangiectasia", ("cheeks", "nose"), "fine red vessels on cheeks and nose; more vessels with intensity")
def _telangiectasia(g, t):
    g["telangiectasia"] = max(g["telangiectasia"], t)


@effect("hypopigmented_patches", ("skin",), "pale macules (up to 6, nested by count) on forehead and cheeks")
def _hypopig(g, t):
    g["hypopigment"] = max(g["hypopigment"], t)


@effect("skin_nodules", ("skin",), "raised skin nodules (up to 12, nested by count) on forehead, cheeks, nose and chin")
def _nodules(g, t):
    g["nodules"] = max(g["nodules"], t)


@effect("acne", ("skin",), "acne lesions: count from severity 3 t (see acne.py); type = mixed or one lesion type",
        ({}, {"type": "comedo"}, {"type": "papule"}, {"type": "pustule"}, {"type": "nodule"}))
def _acne(g, t, type="mixed"):  # noqa: A002 - the CSV's parameter name
    g["acne"] = max(g["acne"], t)
    g["acne_types"] = g["acne_types"] | {type}


@effect("hirsutism", ("lower_face", "mouth", "cheeks"), "dark facial hair on upper lip, jaw and chin")
def _hirsute(g, t):
    g["hirsute"] = max(g["hirsute"], t)


@effect("sparse_hair", ("hair", "forehead"), "scalp hair thins: less volume, skin shows through")
def _sparse_hair(g, t):
    g["hair_density"] *= 1 - 0.85 * t


@effect("wrinkles", ("face",), "forehead lines, nasolabial folds and crow's feet (prematurely aged look)")
def _wrinkles(g, t):
    g["wrinkles"] = min(1.0, g["wrinkles"] + t)


# ---------------------------------------------------------------- keys
def effect_key(name: str, params: dict | None = None) -> str:
    """`eye_slant` + {"direction": -1} -> `eye_slant[direction=-1]` (parameters sorted by name)."""
    if name not in EFFECTS:
        raise KeyError(f"unknown phantom effect '{name}'; known: {', '.join(sorted(EFFECTS))}")
    if not params:
        return name
    return name + "[" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + "]"


def parse_effect_key(key: str) -> tuple[Effect, dict]:
    """Inverse of effect_key; numbers come back as int (or float), other values as strings."""
    name, _, rest = key.partition("[")
    if name not in EFFECTS:
        raise KeyError(f"unknown phantom effect '{name}' in key '{key}'; known: {', '.join(sorted(EFFECTS))}")
    params = {}
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"bad effect key '{key}': expected name[param=value,...]")
        for item in rest[:-1].split(","):
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"bad effect key '{key}': '{item}' is not param=value")
            try:
                params[k] = int(v)
            except ValueError:
                try:
                    params[k] = float(v)
                except ValueError:
                    params[k] = v
    return EFFECTS[name], params


def all_effect_keys() -> list[str]:
    """Every (effect, variant) the catalogue supports."""
    return [effect_key(e.name, v) for e in EFFECTS.values() for v in e.variants]


def apply_effects(g: dict, effects: dict[str, float]) -> None:
    """Apply effects (key -> intensity in [0, 1]) to geometry g, in the catalogue's order (deterministic)."""
    order = {name: i for i, name in enumerate(EFFECTS)}
    parsed = []
    for key, t in effects.items():
        eff, params = parse_effect_key(key)
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"effect '{key}': intensity {t} is outside [0, 1]")
        if t > 0:
            parsed.append((order[eff.name], key, eff, params, t))
    for _, _, eff, params, t in sorted(parsed, key=lambda p: (p[0], p[1])):
        eff.apply(g, t, **params)


def params_from_json(text: str) -> dict:
    """The CSV's `params` cell: empty or a JSON object of scalars."""
    if not text or not text.strip():
        return {}
    value = json.loads(text)
    if not isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value.values()):
        raise ValueError(f"params must be a JSON object of scalars, got {text!r}")
    return value


# ---------------------------------------------------------------- the HPO -> effect table (kg_data/phantom_effects.csv)
TABLE_COLUMNS = ["hpo_id", "hpo_name", "effect", "params", "note"]


@dataclass(frozen=True)
class TermEffect:
    hpo_id: str
    hpo_name: str
    key: str              # effect key for render_face, e.g. "eye_slant[direction=-1]"
    note: str


def load_phantom_effects(path=None) -> dict[str, TermEffect]:
    """Read the HPO id -> effect table (default: kg_data/phantom_effects.csv); errors name the file and row."""
    import csv
    from pathlib import Path

    if path is None:
        from kgface.resources import kg_data_dir
        path = kg_data_dir() / "phantom_effects.csv"
    path = Path(path)
    table: dict[str, TermEffect] = {}
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: lacks columns {missing}; expected {', '.join(TABLE_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                params = params_from_json(row["params"])
                key = effect_key(row["effect"], params)
                eff, _ = parse_effect_key(key)
                if params and params not in eff.variants:
                    raise ValueError(f"params {params} are not a variant of '{eff.name}' ({list(eff.variants)})")
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: {exc}; fix the row") from None
            if row["hpo_id"] in table:
                raise ValueError(f"{path}:{line}: {row['hpo_id']} is listed twice; keep one row")
            table[row["hpo_id"]] = TermEffect(row["hpo_id"], row["hpo_name"], key, row["note"])
    return table


def effects_for_terms(intensities: dict[str, float], table: dict[str, TermEffect]
                      ) -> tuple[dict[str, float], list[str]]:
    """HPO id -> intensity  =>  (effect key -> intensity, HPO ids with no effect). Shared keys take the maximum."""
    effects: dict[str, float] = {}
    unmapped = []
    for hpo_id, t in intensities.items():
        entry = table.get(hpo_id)
        if entry is None:
            unmapped.append(hpo_id)
            continue
        effects[entry.key] = max(effects.get(entry.key, 0.0), float(t))
    return effects, unmapped


# ---------------------------------------------------------------- what one face can show
# effects drawn only through scalp hair: on a bald identity they change no pixel, so they are never labelled there
HAIR_ONLY = frozenset({"sparse_hair", "forehead_height[direction=-1]"})
# effects whose marks another effect hides: absent brows draw no synophrys, arch or lateral sparseness
HIDES = {"eyebrow_thickness[direction=-1]": frozenset({"synophrys", "eyebrow_arch", "sparse_lateral_eyebrow"})}


def shows_on(key: str, identity) -> bool:
    """Whether the effect `key` changes the face of `identity` at all."""
    return not (key in HAIR_ONLY and identity.hair_style == "none")


def _direction(key: str) -> int | None:
    eff, params = parse_effect_key(key)
    return int(params.get("direction", 1)) if any("direction" in v for v in eff.variants) else None


def conflict(key_a: str, key_b: str) -> bool:
    """Two effects that cannot both show on one face: the two directions of one effect (a wide and a narrow mouth
    multiply to neither), or one that hides the other's marks (HIDES). Other variants of one effect combine (acne
    lesion types) and one key shared by two terms is drawn once."""
    name_a, name_b = key_a.split("[")[0], key_b.split("[")[0]
    if name_a == name_b:
        return _direction(key_a) is not None and _direction(key_a) != _direction(key_b)
    return name_b in HIDES.get(key_a, ()) or name_a in HIDES.get(key_b, ())
