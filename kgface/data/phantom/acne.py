"""Acne severity for the phantom: one monotone map between continuous severity and lesion count, and fixed lesion sites.

Grades follow Hayashi et al. 2008 (J Dermatol 35:255-260) as used by ACNE04 (Wu et al., ICCV 2019): a half face with
<= 5 lesions is grade 0 (mild), 6-20 grade 1 (moderate), 21-50 grade 2 (severe), > 50 grade 3 (very severe). The phantom
draws the whole face but keeps the same bins.

Continuous severity s in [0, 3] maps to a count through the piecewise-linear curve

    s:      0     0.5    1.5    2.5    3.0
    count:  0     5.5    20.5   50.5   LESION_CAP (80)

rounded half up, so grade g owns exactly the severities [g - 0.5, g + 0.5) (clipped to [0, 3]) and the grade midpoints
s = 1, 2 give 13 and 36 lesions. Counts above 50 are capped at LESION_CAP: "> 50" has no upper bound in the scale.
An effect intensity i in [0, 1] is severity 3 i.

Lesion sites are an ordered list fixed per identity; a count n uses the first n, so a milder image's lesions are a
subset of a more severe one's. Each site has a type fixed by the grade at which it first appears (the supplement's
`min_stage`: comedones from grade 0, papules from 1, pustules from 2, nodules/cysts at 3).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

GRADE_UPPER = (5, 20, 50)           # the largest count of grades 0, 1, 2; grade 3 is > 50
GRADE_NAMES = ("mild", "moderate", "severe", "very severe")
LESION_CAP = 80
MAX_SEVERITY = 3.0
_ANCHOR_S = (0.0, 0.5, 1.5, 2.5, 3.0)
_ANCHOR_N = (0.0, 5.5, 20.5, 50.5, float(LESION_CAP))

LESION_TYPES = ("comedo", "papule", "pustule", "nodule")
# Grade at which each type may first appear (kg_data/supplement_edges.csv min_stage for HP:0025249, HP:0200034,
# HP:0200039, HP:0033188) and the mix of types among sites first used at each grade.
TYPE_MIN_GRADE = {"comedo": 0, "papule": 1, "pustule": 2, "nodule": 3}
TYPE_MIX = {
    0: {"comedo": 1.0},
    1: {"comedo": 0.4, "papule": 0.6},
    2: {"comedo": 0.25, "papule": 0.45, "pustule": 0.3},
    3: {"comedo": 0.15, "papule": 0.35, "pustule": 0.3, "nodule": 0.2},
}
AREAS = ("forehead", "left_cheek", "right_cheek", "chin")
AREA_WEIGHTS = (0.25, 0.3, 0.3, 0.15)


def grade_from_count(count: int) -> int:
    """Hayashi grade 0-3 of a lesion count."""
    if count < 0:
        raise ValueError(f"lesion count must be >= 0, got {count}")
    for grade, upper in enumerate(GRADE_UPPER):
        if count <= upper:
            return grade
    return 3


def count_from_severity(severity: float) -> int:
    """Lesion count of a continuous severity in [0, 3] (monotone non-decreasing; see the module docstring)."""
    s = min(max(float(severity), 0.0), MAX_SEVERITY)
    return int(math.floor(float(np.interp(s, _ANCHOR_S, _ANCHOR_N)) + 0.5))


def severity_from_count(count: int) -> float:
    """The inverse map: the continuous severity whose curve value equals `count` (capped at LESION_CAP)."""
    n = min(max(float(count), 0.0), float(LESION_CAP))
    return float(np.interp(n, _ANCHOR_N, _ANCHOR_S))


def grade_from_severity(severity: float) -> int:
    return grade_from_count(count_from_severity(severity))


def count_from_intensity(intensity: float) -> int:
    """Effect intensity i in [0, 1] is severity 3 i."""
    return count_from_severity(MAX_SEVERITY * min(max(float(intensity), 0.0), 1.0))


@dataclass(frozen=True)
class LesionSite:
    rank: int            # position in the fixed order: count n draws ranks 0..n-1
    area: str            # one of AREAS
    u: float             # position in the area's unit disk (x, to the image right)
    v: float             # (y, down)
    kind: str            # one of LESION_TYPES
    size: float          # radius multiplier, about 0.8..1.2


@functools.lru_cache(maxsize=4096)
def lesion_sites(seed: int, identity_id: int, cap: int = LESION_CAP) -> tuple[LesionSite, ...]:
    """The ordered lesion sites of one identity (pure function of seed and identity id; cached)."""
    rng = np.random.default_rng([int(seed), int(identity_id), 7])
    areas = rng.choice(len(AREAS), size=cap, p=AREA_WEIGHTS)
    radius = np.sqrt(rng.uniform(size=(cap, 12)))
    angle = rng.uniform(0, 2 * np.pi, size=(cap, 12))
    candidates = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
    kind_draw = rng.uniform(size=cap)
    sizes = rng.uniform(0.8, 1.2, size=cap)
    placed: dict[int, list] = {a: [] for a in range(len(AREAS))}
    sites = []
    for rank in range(cap):
        area, cand = int(areas[rank]), candidates[rank]
        if placed[area]:  # best of 12 candidates: the one farthest from the lesions already in this area
            d = np.linalg.norm(cand[:, None, :] - np.asarray(placed[area])[None], axis=-1).min(axis=1)
            u, v = cand[int(np.argmax(d))]
        else:
            u, v = cand[0]
        placed[area].append((u, v))
        mix = TYPE_MIX[grade_from_count(rank + 1)]
        cumulative = np.cumsum(list(mix.values())) / sum(mix.values())
        kind = list(mix)[min(int(np.searchsorted(cumulative, kind_draw[rank], side="right")), len(mix) - 1)]
        sites.append(LesionSite(rank, AREAS[area], float(u), float(v), kind, float(sizes[rank])))
    return tuple(sites)


def restrict_types(sites, types: set[str] | None) -> list[LesionSite]:
    """Draw only `types` (None: the natural mix). Sites of another type take an allowed type chosen by rank."""
    if not types:
        return list(sites)
    allowed = sorted(types, key=LESION_TYPES.index)
    return [s if s.kind in types else LesionSite(s.rank, s.area, s.u, s.v, allowed[s.rank % len(allowed)], s.size)
            for s in sites]
