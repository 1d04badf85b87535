"""Frequencies of disease->phenotype annotations as numbers in [0, 1].

HPO writes them in four forms: a frequency term (HP:0040280..HP:0040285), a fraction `n/m`, a percentage `x%`, or
nothing (unknown -> NaN). A frequency term stands for a range; we use its midpoint (Obligate = 1, Excluded = 0).
"""
from __future__ import annotations

import math
import re

FREQUENCY_TERMS = {
    "HP:0040280": 1.0,    # Obligate, 100%
    "HP:0040281": 0.895,  # Very frequent, 80-99%
    "HP:0040282": 0.545,  # Frequent, 30-79%
    "HP:0040283": 0.17,   # Occasional, 5-29%
    "HP:0040284": 0.025,  # Very rare, 1-4%
    "HP:0040285": 0.0,    # Excluded, 0%
}
_FRACTION = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_frequency(raw) -> float:
    """Return the frequency in [0, 1], or NaN when unknown. Raises ValueError (with the reason) on bad text."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return math.nan
    text = str(raw).strip()
    if not text:
        return math.nan
    if text in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text]
    m = _FRACTION.match(text)
    if m:
        n, d = int(m.group(1)), int(m.group(2))
        if d == 0:
            raise ValueError(f"fraction '{text}' has a zero denominator")
        if n > d:
            raise ValueError(f"fraction '{text}' is above 1")
        return n / d
    m = _PERCENT.match(text)
    if m:
        value = float(m.group(1)) / 100.0
        if value > 1.0:
            raise ValueError(f"percentage '{text}' is above 100%")
        return value
    raise ValueError(f"'{text}' is not an HPO frequency term, n/m fraction or percentage")
