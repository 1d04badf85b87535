"""Render the LLM request for a profile from the Jinja2 templates in the top-level `prompts/` folder.

KG text (names, definitions, visual wording) is untrusted: a definition copied from a web source can hold "ignore
the instructions above". Every KG value reaches the template through the `kg` filter, which turns it into a JSON
string literal (quotes, backslashes and newlines escaped) with `<`, `>` and `&` escaped too, so a value can neither
start a new line that looks like a message nor close the `<kg_data>` block it sits in.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jinja2

from kgface.cache import stable_hash
from kgface.kg.profiles import FacialProfile, disease_definition
from kgface.resources import prompts_dir

from .schema import answer_json_schema
from .wording import stage_levels

TEMPLATES = ("describe_system.j2", "describe_user.j2", "describe_retry.j2")
MAX_DEFINITION_CHARS = 1500


def kg_literal(value) -> str:
    """A KG value as an inert JSON string literal."""
    text = "unknown" if value is None else str(value)
    literal = json.dumps(" ".join(text.split()), ensure_ascii=False)
    return literal.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@functools.lru_cache(maxsize=4)
def _environment(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, autoescape=False)
    env.filters["kg"] = kg_literal
    return env


def _folder(folder: str | Path | None) -> str:
    return str(Path(folder) if folder is not None else prompts_dir())


def template_hash(folder: str | Path | None = None) -> str:
    """Hash of the template texts and the answer schema: editing either invalidates cached answers."""
    root = Path(_folder(folder))
    return stable_hash({"templates": {n: (root / n).read_text(encoding="utf-8") for n in TEMPLATES},
                        "schema": answer_json_schema()})


def _frequency(value: float | None) -> str:
    return "unknown" if value is None else f"{round(100 * value)}%"


def profile_view(profile: FacialProfile) -> dict:
    """The part of a profile the request shows; its hash keys the answer cache (provenance edits do not)."""
    definition = disease_definition(profile)[:MAX_DEFINITION_CHARS]  # PrimeKG's mondo_definition, ... too
    return {
        "disease_id": profile.disease_id,
        "name": profile.name,
        "definition": definition or "none given",
        "phenotypes": [{"hpo_id": p.hpo_id, "name": p.name, "region": p.region, "visual": p.visual,
                        "frequency": _frequency(p.frequency), "min_stage": int(p.min_stage or 0)}
                       for p in profile.phenotypes],
        "absent": [n.name for n in profile.negative_phenotypes],
    }


def profile_hash(profile: FacialProfile) -> str:
    return stable_hash({"view": profile_view(profile),
                        "stages": [vars(level) for level in stage_levels(profile.disease_id)]})


def build_messages(profile: FacialProfile, folder: str | Path | None = None) -> list[dict]:
    """The chat messages (system + user) asking for the profile's four stage descriptions."""
    env = _environment(_folder(folder))
    stages = [{"stage": i, "name": level.name, "clause": level.clause}
              for i, level in enumerate(stage_levels(profile.disease_id))]
    system = env.get_template("describe_system.j2").render(schema=json.dumps(answer_json_schema()))
    user = env.get_template("describe_user.j2").render(p=profile_view(profile), stages=stages)
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


def retry_message(error: str, folder: str | Path | None = None) -> dict:
    """The user turn that feeds a rejected answer's error back."""
    text = _environment(_folder(folder)).get_template("describe_retry.j2").render(error=error)
    return {"role": "user", "content": text.strip()}
