"""Per-disease, per-stage descriptions: ask the LLM, validate, retry with the error fed back, fall back to the
template, and cache what was valid.

Only valid LLM answers are cached (kind "llm", keyed by template hash, profile hash, backend, model and generation
parameters): a server that was down, or a model that failed the schema this time, is asked again next run. A
fallback says why in `fallback_reason` and keeps each rejected attempt's error in `errors`.
"""
from __future__ import annotations

import json
import logging

from kgface.cache import Cache, remove_path, write_json_atomic
from kgface.errors import UserError
from kgface.kg.profiles import FacialProfile

from .backends import LLMError, _setting, make_backend
from .builder import build_messages, profile_hash, retry_message, template_hash
from .schema import StageDescriptions, StageText, dump_descriptions, parse_answer, strip_thinking
from .wording import N_STAGES, negative_prompt, stage_phenotypes, template_description

log = logging.getLogger(__name__)

ANSWER_FILE = "answer.json"
# a rejected reply is fed back truncated, as garbage from a small model can be long; but never cut inside an answer
# the schema could hold (4 stages x 400 + 300 characters, ids, keys, indentation: ~4,500), which the model would
# then be told is wrong at a place it cannot see (a stage too long: 2,000 cut before stage 3)
MAX_ECHO_CHARS = 6000


def template_descriptions(profile: FacialProfile, **record) -> StageDescriptions:
    """The deterministic (`llm=none`) descriptions; `record` adds backend/fallback fields."""
    stages = [StageText(stage=s, description=template_description(profile, s),
                        phenotypes=[p.hpo_id for p in stage_phenotypes(profile, s)],
                        negative_prompt=negative_prompt(profile))
              for s in range(N_STAGES)]
    record.setdefault("backend", "none")
    return StageDescriptions(disease_id=profile.disease_id, name=profile.name, source="template", stages=stages,
                             **record)


def answer_spec(profile: FacialProfile, backend) -> dict:
    return {"template": template_hash(), "profile": profile_hash(profile), "backend": backend.name,
            "model": backend.model, "params": backend.params()}


def _cached_answer(entry, profile: FacialProfile) -> StageDescriptions | None:
    """A cached answer, checked again by today's rules (the cache key holds the schema's shape, not its validators:
    a rule added since must not let an old answer through); unreadable or now invalid = a miss, asked again."""
    try:
        data = json.loads((entry.path / ANSWER_FILE).read_text(encoding="utf-8"))
        parse_answer(str(data["raw"]), profile)
        return StageDescriptions.model_validate(data["result"])
    except PermissionError as exc:  # a file this user cannot read (a shared cache) is not a bad answer to delete
        raise UserError(f"{entry.path / ANSWER_FILE}: cannot read the cached LLM answer ({exc.strerror}); fix its "
                        "permissions or remove the folder") from None
    except (OSError, KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        log.warning("%s: the cached LLM answer %s no longer passes (%s); asking again",
                    profile.disease_id, entry.key, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        try:
            remove_path(entry.path)  # a new valid answer replaces it (an entry that exists is never overwritten)
        except OSError as err:  # a shared cache this user cannot write: still a miss, the new answer goes uncached
            log.warning("%s: cannot remove the stale cached answer %s (%s)", profile.disease_id, entry.path, err)
        return None


def describe_profile(profile: FacialProfile, backend, cache: Cache | None, max_attempts: int = 3
                     ) -> StageDescriptions:
    """One profile's descriptions from `backend` (None = template)."""
    if backend is None or profile.healthy:  # healthy is its own class, with no stages to describe
        return template_descriptions(profile)
    entry = cache.entry("llm", answer_spec(profile, backend)) if cache is not None else None
    if entry is not None and entry.exists():
        cached = _cached_answer(entry, profile)
        if cached is not None:
            # a server's answer to these very settings (its url, model and sampling key the entry) proves them as a
            # live one does: a later 400 is that request's, or a rerun would stop where the first run fell back.
            # Not llm=hf's: its key leaves out llm.device, where a first failure (out of memory) is the settings'
            if backend.name == "openai":
                backend.answered += 1
            return cached
    messages = build_messages(profile)
    errors: list[str] = []
    reason = ""
    attempts = 0
    for attempts in range(1, max(1, int(max_attempts)) + 1):
        try:
            raw = backend.complete(messages)
        except LLMError as exc:
            reason = f"backend error: {exc}"
            break
        try:
            answer = parse_answer(raw, profile)
        except ValueError as exc:
            errors.append(str(exc))
            # the answer it gave, without the thinking (a reasoning model's 2,000 characters were all <think>)
            echo = strip_thinking(raw)[:MAX_ECHO_CHARS]
            messages = messages + [{"role": "assistant", "content": echo}, retry_message(str(exc))]
            reason = f"no valid answer in {attempts} attempt(s); last error: {exc}"
            continue
        result = StageDescriptions(disease_id=profile.disease_id, name=profile.name, source="llm",
                                   backend=backend.name, model=backend.model,
                                   stages=[StageText(**s.model_dump()) for s in answer.stages],
                                   attempts=attempts, errors=errors, cache_key=entry.key if entry else None)
        if entry is not None:
            try:
                with entry.build() as tmp:
                    write_json_atomic(tmp / ANSWER_FILE, {"result": result.model_dump(mode="json"), "raw": raw,
                                                          "messages": messages})
            except OSError as exc:  # a read-only or full cache: the answer in hand is still good for this run
                log.warning("%s: cannot cache the LLM answer in %s (%s); the run goes on without it",
                            profile.disease_id, entry.path.parent, exc.strerror or type(exc).__name__)
        return result
    log.warning("%s (%s): using the template descriptions: %s", profile.disease_id, profile.name, reason)
    return template_descriptions(profile, backend=backend.name, model=backend.model, fallback_reason=reason,
                                 attempts=attempts, errors=errors)


def describe_profiles(profiles: list[FacialProfile], llm_cfg, cache: Cache | None) -> dict[str, StageDescriptions]:
    """{disease_id: StageDescriptions} for each profile, in order, with the backend `llm_cfg` names."""
    backend = make_backend(llm_cfg)
    max_attempts = _setting("max_attempts", dict(llm_cfg or {}).get("max_attempts", 3), int, 1)
    return {p.disease_id: describe_profile(p, backend, cache, max_attempts) for p in profiles}


def save_descriptions(path, descriptions: dict[str, StageDescriptions]):
    return write_json_atomic(path, dump_descriptions(descriptions))
