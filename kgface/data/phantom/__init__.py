"""Procedural phantom faces whose phenotypes are known by construction (the Shepp-Logan idea for faces)."""
from .acne import count_from_severity, grade_from_count, severity_from_count
from .effects import EFFECTS, all_effect_keys, effect_key, parse_effect_key
from .identity import AGE_GROUPS, Identity, sample_identity
from .render import region_boxes, region_mask, render_face, render_labels

__all__ = ["AGE_GROUPS", "EFFECTS", "Identity", "all_effect_keys", "count_from_severity", "effect_key",
           "grade_from_count", "parse_effect_key", "region_boxes", "region_mask", "render_face", "render_labels",
           "sample_identity", "severity_from_count"]
