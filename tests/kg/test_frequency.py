import math

import pytest

from kgface.kg.frequency import parse_frequency


@pytest.mark.parametrize("raw, expected", [
    ("HP:0040280", 1.0), ("HP:0040281", 0.895), ("HP:0040282", 0.545), ("HP:0040283", 0.17),
    ("HP:0040284", 0.025), ("HP:0040285", 0.0),          # HPO frequency terms (range midpoints)
    ("440/524", 440 / 524), ("0/7", 0.0), ("3/3", 1.0),   # fractions
    ("50%", 0.5), ("12.5%", 0.125), ("100%", 1.0),        # percentages
])
def test_the_four_forms(raw, expected):
    assert parse_frequency(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["", "  ", None, float("nan")])
def test_empty_is_unknown(raw):
    assert math.isnan(parse_frequency(raw))


@pytest.mark.parametrize("raw, reason", [("5/4", "above 1"), ("1/0", "zero denominator"), ("120%", "above 100%"),
                                         ("often", "not an HPO frequency"), ("HP:0000118", "not an HPO frequency")])
def test_bad_values_say_why(raw, reason):
    with pytest.raises(ValueError, match=reason):
        parse_frequency(raw)
