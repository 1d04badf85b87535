"""Conditioning on the phenotypes a face shows (`trainer.observed_phenotypes`), instead of on its disease's profile.

A disease's KG profile says which phenotypes occur and how often; one face shows a subset of them. Trained on the
profile alone, the generator sees one phenotype set per disease (11 on the benchmark panel) and learns a code per
disease, which it cannot recombine for a disease it never saw. With observed phenotypes:
- training: every disease face is conditioned on its disease's profile cut down to exactly the phenotypes it shows
  (the manifest's `phenotypes` column; phantom labels are known by construction), each at frequency 1, so the
  encoder meets thousands of sets;
- drawing: each request's profile is cut down to a set drawn from the KG frequencies (`drawn_profile`), seeded by
  the request's seed, so one seed across stages is one individual whose signs grow, and a set of images shows each
  phenotype about as often as the KG says.
"""
from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np

from ..errors import UserError
from ..kg import FacialProfile
from ..prompts.wording import stage_levels, stage_of


def observed_phenotypes_of(cfg) -> bool:
    """A run config's trainer.observed_phenotypes (missing in runs made before it = false): training reads it, and
    so does every loaded run, whose requests then draw their phenotype sets."""
    return bool(cfg.trainer.get("observed_phenotypes", False))


def with_phenotypes(profile: FacialProfile, hpo_ids) -> FacialProfile:
    """The profile cut down to `hpo_ids` (in its own order), each at frequency 1: "this face shows these". It keeps
    the disease's id (its stage ladder and name are the disease's), so several such profiles share one id."""
    keep = set(hpo_ids)
    shown = [dataclasses.replace(p, frequency=1.0, frequency_raw="") for p in profile.phenotypes if p.hpo_id in keep]
    return dataclasses.replace(profile, phenotypes=shown)


def drawn_profile(profile: FacialProfile, seed: int, severity: float, unknown_frequency: float = 0.5) -> FacialProfile:
    """One individual's phenotypes, drawn from the profile: each present with its KG frequency (unknown =
    `unknown_frequency`) from a generator seeded by (seed, disease), so the set does not depend on the stage; at the
    stage stage_of(severity) only those whose `min_stage` is reached show, and stage 0 shows none unless the
    disease's stage ladder has signs at stage 0 (acne grade 0 is mild acne). A custom phenotype set (kgface.generate
    mode=compose: every phenotype given by the user, with an intensity) is drawn as given."""
    if profile.healthy or (profile.phenotypes and all(p.provenance == "custom" for p in profile.phenotypes)):
        return profile
    # all 64 bits of the seed (32 drew one set for seeds 2^32 apart, under different noise); the same below 2^32
    rng = np.random.default_rng([int(seed) % (1 << 64), zlib.crc32(profile.disease_id.encode())])
    stage = stage_of(severity)
    shows = stage > 0 or stage_levels(profile.disease_id)[0].signs
    present = []
    for p in sorted(profile.phenotypes, key=lambda x: x.hpo_id):
        freq = unknown_frequency if p.frequency is None else float(p.frequency)
        if rng.random() < freq and shows and stage >= int(p.min_stage or 0):
            present.append(p.hpo_id)
    return with_phenotypes(profile, present)


def observed_profiles(manifest, rows, profiles) -> tuple[list[int], list[FacialProfile]]:
    """For manifest `rows` (dicts with disease, phenotypes, path), the index of each row's observed-set profile in
    the returned list (one profile per distinct (disease, phenotype set); healthy faces share the healthy profile).
    A phenotype outside its disease's profile, or a row without a readable `phenotypes` label, is an error."""
    by_id = {p.disease_id: p for p in profiles}
    index: dict[tuple, int] = {}
    out: list[FacialProfile] = []
    rows_index = []
    for r in rows:
        prof = by_id[r["disease"]]
        try:
            labels = json.loads(r.get("phenotypes") or "{}")
            shown = sorted(h for h, v in labels.items() if float(v) > 0)  # intensity 0 = not shown (as the evaluator)
        except (json.JSONDecodeError, TypeError, AttributeError, ValueError):
            raise UserError(f"{manifest}: {r.get('path')}: its phenotypes column is not a JSON object; "
                            "trainer.observed_phenotypes=true needs per-image phenotype labels") from None
        unknown = sorted(set(shown) - {p.hpo_id for p in prof.phenotypes})
        if unknown:
            raise UserError(f"{manifest}: {r.get('path')} shows {unknown}, which are not in the profile of "
                            f"{r['disease']}; rebuild the dataset for this panel or set "
                            "trainer.observed_phenotypes=false")
        key = (r["disease"], tuple(shown)) if not prof.healthy else ("healthy", ())
        if key not in index:
            index[key] = len(out)
            out.append(prof if prof.healthy else with_phenotypes(prof, shown))
        rows_index.append(index[key])
    if not any(prof.phenotypes for prof in out):
        raise UserError(f"{manifest}: no training image has phenotype labels (the phenotypes column); "
                        "trainer.observed_phenotypes=true needs them (data=phantom has them), or set it to false")
    return rows_index, out
