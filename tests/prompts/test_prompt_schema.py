"""The answer schema: shape, one sentence per stage, ids from the profile only."""
import json

import pytest

from kgface.prompts import load_descriptions, parse_answer, save_descriptions, template_descriptions


def answer(ids=("HP:0000582",), n=4, description="A face with upward-slanting eyes."):
    return {"stages": [{"stage": s, "description": description, "phenotypes": list(ids) if s else [],
                        "negative_prompt": "blurry"} for s in range(n)]}


def test_valid_answer_and_fenced_reply(down):
    parsed = parse_answer(json.dumps(answer()), down)
    assert [s.stage for s in parsed.stages] == [0, 1, 2, 3]
    fenced = "Here you go:\n```json\n" + json.dumps(answer()) + "\n```\nHope this helps."
    assert parse_answer(fenced, down) == parsed


@pytest.mark.parametrize("reply, message", [
    ("not json at all", "Invalid JSON"),
    (json.dumps(answer(ids=["HP:0000316"])), "HP:0000316 is not one of the profile's phenotypes"),
    (json.dumps(answer(ids=["upslanted eyes"])), "is not an HPO id"),
    (json.dumps(answer(n=3)), "at least 4 items"),
    (json.dumps(answer(description="A face. It has eyes.")), "exactly one sentence"),
    (json.dumps({"stages": answer()["stages"][::-1]}), "in this order"),
])
def test_rejected_answers_say_why(down, reply, message):
    with pytest.raises(ValueError, match=message):
        parse_answer(reply, down)


def test_descriptions_json_round_trip(tmp_path, down, acne):
    descs = {p.disease_id: template_descriptions(p) for p in (down, acne)}
    path = save_descriptions(tmp_path / "descriptions.json", descs)
    assert load_descriptions(path) == descs
    with pytest.raises(ValueError, match="not a descriptions file"):
        load_descriptions({"schema": "other"})
