"""What an LLM must answer (`LLMAnswer`) and what kgface keeps per disease (`StageDescriptions`, the rows of
descriptions.json).

An answer is checked as JSON (no key twice), by pydantic (shape, one sentence, stages 0..3 once each, whole-number
stages) and against the profile: every phenotype id it cites must be one of the profile's visible phenotypes, and
the stages must follow the stage scale (no phenotype at a stage without visible signs, none before its curated
earliest stage `min_stage`, at least one at each stage from 1 on, and at the last stage the profile's frequent
phenotypes, up to three: an answer may not leave out what most patients show). The error text of a failed check
goes back to the LLM on the next attempt, so messages say what to change.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from kgface.kg.profiles import FacialProfile

from .wording import FINAL_STAGE_FREQUENT, N_STAGES, frequent_phenotypes, stage_levels

DESCRIPTIONS_SCHEMA = "kgface.descriptions/1"
_HPO = re.compile(r"^HP:\d{7}$")
_THINKING = re.compile(r"<think>.*?</think>", flags=re.S | re.I)
# abbreviations whose period ends no sentence ("etc." ends one when a capitalised word follows it)
_ABBREVIATION = re.compile(r"\b(?:(?:e\.g|i\.e|approx|ca|cf|vs|incl|esp|resp|Dr|Mr|Mrs|Ms|St)\."
                           r"|etc\.(?!\s+(?-i:[A-Z])))", flags=re.I)
# a sentence end followed by the start of another sentence: after a space any word ("Red cheeks. swollen nose"),
# without one a capital ("Red cheeks.Swollen nose"); "2.5 cm" is no sentence end
_SECOND_SENTENCE = re.compile(r"[.!?][\"')\]]*(?:\s+[\"'(\[]?[^\W_]|[A-Z])|[!?][\"')\]]*[a-z]")
# an ellipsis before a lower-case word goes on with the sentence ("red cheeks... and swollen lids")
_TRAILING_OFF = re.compile(r"(?:\.{3}|\u2026)(?=\s+[a-z])")


def _collapse(value):
    """Whitespace runs as one space, before the length limits apply ("ab" plus spaces is not 10 characters)."""
    return " ".join(value.split()) if isinstance(value, str) else value


class StageText(BaseModel):
    """One stage's description as kept in descriptions.json (template or LLM)."""

    stage: int = Field(ge=0, le=N_STAGES - 1)
    description: str
    phenotypes: list[str] = Field(default_factory=list)
    negative_prompt: str = ""


class AnswerStage(StageText):
    """One stage as the LLM must write it: stricter than what kgface keeps (templates may run longer)."""

    model_config = ConfigDict(extra="forbid")

    # strict: "1" or 1.0 is not a stage (a model that writes them is not following the schema)
    stage: StrictInt = Field(ge=0, le=N_STAGES - 1, description="severity stage, 0..3")
    description: str = Field(min_length=10, max_length=400,
                             description="one sentence describing what the face looks like at this stage")
    phenotypes: list[str] = Field(default_factory=list,
                                  description="HPO ids (HP:nnnnnnn) of the profile's phenotypes this sentence shows: "
                                              "none at a stage without visible signs, none before the phenotype's "
                                              "earliest stage, at least one from stage 1 on")
    negative_prompt: str = Field(max_length=300, description="short comma-separated list of what must not appear")

    @field_validator("description", "negative_prompt", mode="before")
    @classmethod
    def _collapse_whitespace(cls, value):
        return _collapse(value)

    @field_validator("description")
    @classmethod
    def _one_sentence(cls, value: str) -> str:
        if _SECOND_SENTENCE.search(_ABBREVIATION.sub("abbr", _TRAILING_OFF.sub(",", value)).rstrip(".!?\"') ")):
            raise ValueError("must be exactly one sentence")
        return value

    @field_validator("phenotypes")
    @classmethod
    def _profile_ids(cls, value: list[str], info: ValidationInfo) -> list[str]:
        allowed = (info.context or {}).get("allowed_ids")
        twice = sorted({i for i in value if value.count(i) > 1})
        if twice:
            raise ValueError(f"cites {', '.join(twice)} more than once; cite each phenotype once")
        for hpo_id in value:
            if not _HPO.match(hpo_id):
                raise ValueError(f"{hpo_id!r} is not an HPO id of the form HP:0000000")
            if allowed is not None and hpo_id not in allowed:
                raise ValueError(f"{hpo_id} is not one of the profile's phenotypes ({', '.join(sorted(allowed))})")
        return value


class LLMAnswer(BaseModel):
    """The JSON object the LLM must return."""

    model_config = ConfigDict(extra="forbid")

    stages: list[AnswerStage] = Field(min_length=N_STAGES, max_length=N_STAGES)

    @model_validator(mode="after")
    def _stages_in_order(self) -> "LLMAnswer":
        got = [s.stage for s in self.stages]
        if got != list(range(N_STAGES)):
            raise ValueError(f"stages must be {list(range(N_STAGES))} in this order, got {got}")
        seen: dict[str, int] = {}
        for s in self.stages:  # one sentence copied to every stage says nothing about the stages
            said = " ".join(re.sub(r"[^\w\s]", " ", s.description.lower()).split())
            if said in seen:
                raise ValueError(f"stages.{s.stage}.description repeats stage {seen[said]}'s; say how the face "
                                 f"looks at stage {s.stage}")
            seen[said] = s.stage
        return self


def answer_json_schema() -> dict:
    return LLMAnswer.model_json_schema()


def strip_thinking(text: str) -> str:
    """A reply without its <think>...</think> blocks (and anything before a lone </think>)."""
    return re.split(r"</think>", _THINKING.sub("", text), flags=re.I)[-1].strip()


def extract_json(text: str) -> str:
    """The JSON object inside an LLM reply: small models wrap it in ``` fences, add a sentence around it (which
    may hold braces of its own) or think aloud first (<think>...</think>, kept by tokenizers that do not mark those
    tokens special; a chat template that opens the block in the prompt leaves only its </think>). The answer is
    the object whose "stages" key holds a list (a quoted schema's {"stages": {...}} is not one), looked for in each
    ``` fence and in the whole reply; two different such objects are refused (which one the model meant is a
    guess: the error goes back to it). Without one, everything from the first { to the last } of the first fence
    (of the reply, without one), for pydantic to say what is wrong."""
    text = strip_thinking(text)
    fences = [f.strip() for f in re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)]
    decoder = json.JSONDecoder()
    found: dict[str, str] = {}  # canonical JSON -> the text as written (one answer repeated is one answer)
    for candidate in fences + [text]:
        for brace in re.finditer(r"\{", candidate):
            try:
                obj, end = decoder.raw_decode(candidate, brace.start())
            except (ValueError, RecursionError):  # a degenerate reply nested past the decoder's depth is no answer
                continue
            if isinstance(obj, dict) and isinstance(obj.get("stages"), list):
                found.setdefault(json.dumps(obj, sort_keys=True), candidate[brace.start():end])
    if len(found) > 1:
        raise ValueError(f"the reply holds {len(found)} different JSON objects with a \"stages\" list; answer with "
                         "exactly one")
    if found:
        return next(iter(found.values()))
    text = fences[0] if fences else text
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice is an error (json keeps the last one silently)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"the key {key!r} appears twice in one JSON object; give each key once")
        seen.add(key)
    return dict(pairs)


def stage_rule_errors(profile: FacialProfile, stages: list[tuple[int, list[str]]]) -> list[str]:
    """What breaks the stage scale in [(stage, cited HPO ids)]: a phenotype at a stage whose level has no visible
    signs, a phenotype before its curated `min_stage`, a stage from 1 on citing none although the profile has a
    phenotype visible by then, or a last stage (full severity, with signs) leaving out one of the profile's frequent
    phenotypes (`frequent_phenotypes`: frequency >= 0.5 or not given, the three most frequent)."""
    levels = stage_levels(profile.disease_id)
    by_id = {p.hpo_id: p for p in profile.phenotypes}
    errors = []
    for stage, ids in stages:
        level = levels[stage]
        if not level.signs and ids:
            errors.append(f"stages.{stage}.phenotypes: stage {stage} ({level.name}: {level.clause}) shows no "
                          f"phenotype; cite none, got {', '.join(ids)}")
            continue
        early = [i for i in ids if i in by_id and int(by_id[i].min_stage or 0) > stage]
        if early:
            errors.append(f"stages.{stage}.phenotypes: " + "; ".join(
                f"{i} first shows at stage {int(by_id[i].min_stage)} (its earliest stage), not at stage {stage}"
                for i in early))
        possible = sorted(p.hpo_id for p in profile.phenotypes if int(p.min_stage or 0) <= stage)
        if stage >= 1 and level.signs and not ids and possible:
            errors.append(f"stages.{stage}.phenotypes: stage {stage} ({level.name}) shows signs; cite at least one "
                          f"of {', '.join(possible)}")
        if stage == len(levels) - 1 and level.signs:
            missing = [p.hpo_id for p in frequent_phenotypes(profile) if p.hpo_id not in ids]
            if missing:
                errors.append(f"stages.{stage}.phenotypes: stage {stage} ({level.name}) is the disease at full "
                              f"severity; describe and cite its frequent phenotypes (frequency >= 50% or unknown, the "
                              f"{FINAL_STAGE_FREQUENT} most frequent) too: {', '.join(missing)}")
    return errors


def parse_answer(text: str, profile: FacialProfile) -> LLMAnswer:
    """Validate a raw reply against the schema, the profile's ids and its stage scale; raises ValueError with a
    short message (it goes back to the LLM)."""
    allowed = {p.hpo_id for p in profile.phenotypes}
    payload = extract_json(text)
    try:
        json.loads(payload, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise ValueError(str(exc)) from None
    except (ValueError, RecursionError):
        pass  # not JSON: pydantic says where, in the words the tests and the retry prompt expect
    try:
        answer = LLMAnswer.model_validate_json(payload, context={"allowed_ids": allowed})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(_short_error(exc)) from None
    errors = stage_rule_errors(profile, [(s.stage, s.phenotypes) for s in answer.stages])
    if errors:
        raise ValueError("; ".join(errors)[:1200])
    return answer


def _short_error(exc: Exception, limit: int = 1200) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors(include_url=False):
            loc = ".".join(str(x) for x in e.get("loc", ())) or "(root)"
            parts.append(f"{loc}: {e.get('msg', '')}")
        text = "; ".join(parts)
    else:
        text = str(exc)
    return text[:limit]


class StageDescriptions(BaseModel):
    """One disease's 0..3 descriptions and where they came from (a row of descriptions.json)."""

    disease_id: str
    name: str
    source: Literal["template", "llm"]
    backend: str
    model: str = ""
    stages: list[StageText]
    fallback_reason: str | None = None  # why an LLM was asked but the template was used
    attempts: int = 0
    errors: list[str] = Field(default_factory=list)  # one per rejected attempt
    cache_key: str | None = None

    def description(self, stage: int) -> str:
        return next(s.description for s in self.stages if s.stage == stage)


def dump_descriptions(descriptions: dict[str, StageDescriptions]) -> dict:
    return {"schema": DESCRIPTIONS_SCHEMA,
            "diseases": {k: v.model_dump(mode="json") for k, v in descriptions.items()}}


def load_descriptions(source) -> dict[str, StageDescriptions]:
    """descriptions.json (a path, or its parsed content) -> {disease_id: StageDescriptions}."""
    if isinstance(source, dict):
        data, source = source, "the descriptions"  # errors name the data, not print all of it
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:  # named: called directly, the decoder's message named no file
            raise ValueError(f"{source}: not readable JSON ({exc.msg} at line {exc.lineno}); rerun python -m "
                             "kgface.describe") from None
        except UnicodeDecodeError:
            raise ValueError(f"{source}: not UTF-8 text; rerun python -m kgface.describe") from None
        except OSError as exc:
            raise ValueError(f"{source}: cannot read ({exc.strerror or type(exc).__name__})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != DESCRIPTIONS_SCHEMA or not isinstance(data.get("diseases"), dict):
        raise ValueError(f"{source}: not a descriptions file (schema {schema!r}, expected {DESCRIPTIONS_SCHEMA}, "
                         "with a 'diseases' object); rerun python -m kgface.describe")
    out = {}
    for key, row in data["diseases"].items():
        try:
            descriptions = StageDescriptions.model_validate(row)
        except ValidationError as exc:  # "1 validation error for StageDescriptions", naming no row or field
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"{source}: diseases.{key}.{where}: {first.get('msg')}; rerun python -m "
                             "kgface.describe") from None
        stages = sorted(s.stage for s in descriptions.stages)
        if descriptions.disease_id != key or stages != list(range(N_STAGES)):
            raise ValueError(f"{source}: diseases.{key} holds {descriptions.disease_id} with stages {stages}, not "
                             f"{key} with stages 0..{N_STAGES - 1}; rerun python -m kgface.describe")
        out[key] = descriptions
    return out
