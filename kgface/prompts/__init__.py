"""Prompt wording for the whole project: LLM requests, training prompts, evaluator captions, zero-shot prompts.

`wording` holds every sentence and the stage scale, `builder` renders the LLM request from the Jinja2 templates in
the top-level `prompts/` folder, `schema` validates answers, `backends` talks to an LLM, `descriptions` ties them
together with the cache. See docs/prompts.md.
"""
from .backends import HFBackend, LLMError, OpenAIBackend, make_backend
from .builder import build_messages, kg_literal, profile_hash, template_hash
from .descriptions import describe_profile, describe_profiles, save_descriptions, template_descriptions
from .schema import AnswerStage, LLMAnswer, StageDescriptions, StageText, load_descriptions, parse_answer
from .wording import (N_STAGES, NEUTRAL_PROMPT, STAGE_SCALES, StageLevel, caption, healthy_prompts, negative_prompt,
                      phenotype_caption, phenotype_prompts, stage_levels, stage_phenotypes, stage_scale, template_description,
                      training_prompt, zero_shot_prompts)

__all__ = [
    "HFBackend", "LLMError", "OpenAIBackend", "make_backend", "build_messages", "kg_literal", "profile_hash",
    "template_hash", "describe_profile", "describe_profiles", "save_descriptions", "template_descriptions",
    "AnswerStage", "LLMAnswer", "StageDescriptions", "StageText", "load_descriptions", "parse_answer", "N_STAGES",
    "NEUTRAL_PROMPT", "STAGE_SCALES", "StageLevel", "caption", "healthy_prompts", "negative_prompt",
    "phenotype_caption", "phenotype_prompts", "stage_levels", "stage_phenotypes", "stage_scale", "template_description",
    "training_prompt", "zero_shot_prompts",
]
