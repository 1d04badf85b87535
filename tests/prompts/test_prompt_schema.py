"""The answer schema: shape, one sentence per stage, ids from the profile only."""
import json

import pytest

from kgface.prompts import load_descriptions, parse_answer, save_descriptions, template_descriptions
from kgface.prompts.schema import stage_rule_errors


def answer(ids=("HP:0000582", "HP:0005280"), n=4, description=None, **stages):
    """A valid answer for `down` (each stage its own sentence, its two frequent phenotypes from stage 1 on);
    s1={...} etc. override one stage's fields."""
    out = {"stages": [{"stage": s, "description": description or f"A face at stage {s} with upward-slanting eyes.",
                       "phenotypes": list(ids) if s else [],
                       "negative_prompt": "blurry"} for s in range(n)]}
    for name, fields in stages.items():
        out["stages"][int(name[1:])].update(fields)
    return out


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
    (json.dumps(answer(description="Red cheeks, papules, etc. Swollen nose.")), "exactly one sentence"),
    (json.dumps({"stages": answer()["stages"][::-1]}), "in this order"),
])
def test_rejected_answers_say_why(down, reply, message):
    with pytest.raises(ValueError, match=message):
        parse_answer(reply, down)


@pytest.mark.parametrize("reply, message", [
    # the length limit applies after whitespace is collapsed
    (json.dumps(answer(s1={"description": "ab          "})), "at least 10 characters"),
    # a second sentence starting lower-case, or with no space after the period
    (json.dumps(answer(s1={"description": "Red cheeks. swollen nose."})), "exactly one sentence"),
    (json.dumps(answer(s1={"description": "Red cheeks.Swollen nose."})), "exactly one sentence"),
    (json.dumps(answer(s1={"description": "Red cheeks! swollen nose"})), "exactly one sentence"),
    (json.dumps(answer(s1={"description": "Red cheeks. \u00d6dema of the lids."})), "exactly one sentence"),
    (json.dumps(answer(s1={"description": "Red cheeks... Swollen lids."})), "exactly one sentence"),
    # one sentence copied to every stage (up to case and punctuation), one id cited twice
    (json.dumps(answer(description="A face with upward-slanting eyes.")), "stages.1.description repeats stage 0's"),
    (json.dumps(answer(s3={"description": "a face at stage 2, with upward slanting eyes"})),
     "stages.3.description repeats stage 2's"),
    (json.dumps(answer(s2={"phenotypes": ["HP:0000582", "HP:0000582"]})), "cites HP:0000582 more than once"),
    # stages are whole JSON numbers
    (json.dumps(answer(s0={"stage": "0"})), "stages.0.stage: Input should be a valid integer"),
    (json.dumps(answer(s1={"stage": 1.0})), "stages.1.stage: Input should be a valid integer"),
    (json.dumps(answer(s1={"stage": True})), "stages.1.stage: Input should be a valid integer"),
])
def test_loose_answers_are_rejected(down, reply, message):
    with pytest.raises(ValueError, match=message):
        parse_answer(reply, down)


def test_the_answer_is_found_past_braces_and_thinking_around_it(down):
    body = json.dumps(answer())
    expected = parse_answer(body, down)
    assert parse_answer("Stages {0..3} follow: " + body + " (see {notes})", down) == expected
    assert parse_answer('<think>maybe {"stages": []} ... no</think>\n' + body, down) == expected
    assert parse_answer('{"note": "draft"} then ' + body, down) == expected
    # the answer in a later fence than a quoted schema, or unfenced before a fenced note
    fence = "```"
    assert parse_answer(f'Schema: {fence}json\n{{"type": "object"}}\n{fence}\nAnswer: {fence}json\n{body}\n{fence}',
                        down) == expected
    assert parse_answer(f'{body}\nNote: {fence}\n{{"n": 1}}\n{fence}', down) == expected
    # a chat template that opened the thinking block in the prompt: only its end is in the reply
    assert parse_answer('draft {"stages": []} ... no</think>\n' + body, down) == expected


def test_malformed_descriptions_files_are_refused_in_one_line(down, tmp_path):
    good = {"schema": "kgface.descriptions/1",
            "diseases": {down.disease_id: template_descriptions(down).model_dump(mode="json")}}
    assert list(load_descriptions(good)) == [down.disease_id]
    (tmp_path / "list.json").write_text("[]")
    for bad in (tmp_path / "list.json", {"schema": "kgface.descriptions/1"},
                {"schema": "kgface.descriptions/1", "diseases": []}):
        with pytest.raises(ValueError, match="not a descriptions file"):
            load_descriptions(bad)
    missing = json.loads(json.dumps(good))
    missing["diseases"][down.disease_id]["stages"].pop(2)
    # parsed content is named, not printed whole
    with pytest.raises(ValueError, match=r"^the descriptions: diseases\..*with stages \[0, 1, 3\], not .* stages 0..3"):
        load_descriptions(missing)
    (tmp_path / "latin1.json").write_bytes('{"schema": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.json: not UTF-8 text"):
        load_descriptions(tmp_path / "latin1.json")
    renamed = {"schema": good["schema"], "diseases": {"OMIM:000000": good["diseases"][down.disease_id]}}
    with pytest.raises(ValueError, match="diseases.OMIM:000000 holds"):
        load_descriptions(renamed)


def test_duplicate_keys_are_rejected(down):
    # json keeps the last of two equal keys: a model's first (valid-looking) stages would vanish silently
    stages = json.dumps(answer()["stages"])
    with pytest.raises(ValueError, match="the key 'stages' appears twice"):
        parse_answer('{"stages": ' + stages + ', "stages": ' + stages + '}', down)
    one = json.dumps(answer()).replace('"stage": 2,', '"stage": 2, "stage": 2,')
    with pytest.raises(ValueError, match="the key 'stage' appears twice"):
        parse_answer(one, down)


@pytest.mark.parametrize("description", [
    "A face with upward-slanting eyes, e.g. tilted outward, and a 2.5 cm wide nasal bridge.",
    "A face with upward-slanting eyes (i.e. tilted upward) at the mild stage.",
    "A face with red cheeks, papules, etc. and a swollen nose.",
    "A face with red cheeks... and swollen lids, the eyes slanting upward.",  # an ellipsis going on
    "A face with red cheeks\u2026 and swollen lids.",
    "  A face   with\nupward-slanting eyes.  ",
])
def test_one_sentence_with_abbreviations_or_decimals_is_accepted(down, description):
    parsed = parse_answer(json.dumps(answer(s1={"description": description})), down)
    assert parsed.stages[1].description == " ".join(description.split())


def test_answers_follow_the_stage_scale(down, acne):
    # stage 0 of the default scale has no visible signs: it cites nothing
    with pytest.raises(ValueError, match=r"stages.0.phenotypes: stage 0 \(earliest: no visible signs yet\) shows no "
                                         r"phenotype; cite none, got HP:0000582"):
        parse_answer(json.dumps(answer(s0={"phenotypes": ["HP:0000582"]})), down)
    # stages 1..3 show signs: each cites at least one phenotype
    with pytest.raises(ValueError, match=r"stages.2.phenotypes: stage 2 \(moderate\) shows signs; cite at least one"):
        parse_answer(json.dumps(answer(s2={"phenotypes": []})), down)
    # a phenotype not before its curated earliest stage (acne pustules: min_stage 2)
    acne_answer = {"stages": [{"stage": s, "description": f"A face at stage {s} with acne papules and comedones.",
                               "phenotypes": ["HP:0001061"], "negative_prompt": "blurry"} for s in range(4)]}
    # full severity names what most patients show: acne's three most frequent of four frequent phenotypes
    with pytest.raises(ValueError, match=r"stages.3.phenotypes: stage 3 \(.*\) is the disease at full severity; "
                                         r"describe and cite its frequent phenotypes .* too: HP:0025249, HP:0200034$"):
        parse_answer(json.dumps(acne_answer), acne)
    acne_answer["stages"][3]["phenotypes"] = ["HP:0200034", "HP:0001061", "HP:0025249"]  # any order; pustules may wait
    assert parse_answer(json.dumps(acne_answer), acne)  # acne's stage 0 has signs (at most 5 lesions)
    acne_answer["stages"][1]["phenotypes"] = ["HP:0001061", "HP:0200039"]
    with pytest.raises(ValueError, match=r"stages.1.phenotypes: HP:0200039 first shows at stage 2 \(its earliest "
                                         r"stage\), not at stage 1"):
        parse_answer(json.dumps(acne_answer), acne)
    acne_answer["stages"][1]["phenotypes"] = ["HP:0001061"]
    acne_answer["stages"][2]["phenotypes"] = ["HP:0200039"]
    assert parse_answer(json.dumps(acne_answer), acne)


def test_the_last_stage_cites_the_frequent_phenotypes(down):
    # an unknown frequency counts as frequent (the KG lists it); the rarer epicanthus (0.3) may be left out
    with pytest.raises(ValueError, match=r"stages.3.phenotypes: .* full severity; .* too: HP:0005280$"):
        parse_answer(json.dumps(answer(s3={"phenotypes": ["HP:0000582"]})), down)
    assert parse_answer(json.dumps(answer(s1={"phenotypes": ["HP:0000582"]}, s2={"phenotypes": ["HP:0005280"]})),
                        down)
    # a frequent phenotype curated to show later than stage 3 cannot be asked for there (none is: min_stage <= 3)
    down.phenotypes[1].min_stage = 3
    with pytest.raises(ValueError, match=r"HP:0005280 first shows at stage 3"):
        parse_answer(json.dumps(answer()), down)
    assert parse_answer(json.dumps(answer(s1={"phenotypes": ["HP:0000582"]}, s2={"phenotypes": ["HP:0000582"]})),
                        down)


def test_the_frequent_phenotypes_are_ranked_as_the_request_shows_them(down):
    # 84.4% and 83.6% both read "84%" in the request, whose rules send ties to the lower id: the third one the
    # last stage must cite is HP:0000286, not the (unseen) higher HP:0005280
    from kgface.prompts.builder import build_messages

    for p, f in zip(down.phenotypes, (0.9, 0.844, 0.836, 0.95)):
        p.frequency = f
    assert build_messages(down)[-1]["content"].count('"84%"') == 2
    cited = ["HP:0000463", "HP:0000582", "HP:0000286"]
    assert parse_answer(json.dumps(answer(s3={"phenotypes": cited})), down)
    with pytest.raises(ValueError, match=r"too: HP:0000286$"):
        parse_answer(json.dumps(answer(s3={"phenotypes": ["HP:0000463", "HP:0000582", "HP:0005280"]})), down)


def test_the_frequent_threshold_is_read_on_the_percent_the_request_shows(down):
    # 0.496 shows as "50%", and the rules ask for "50% or more": a model that cites it follows them (it was refused)
    from kgface.prompts.builder import build_messages
    from kgface.prompts.wording import frequent_phenotypes

    for p, f in zip(down.phenotypes, (0.9, 0.8, 0.496, 0.494)):
        p.frequency = f
    assert build_messages(down)[-1]["content"].count('"49%"') == 1
    assert [p.hpo_id for p in frequent_phenotypes(down)] == ["HP:0000582", "HP:0005280", "HP:0000286"]
    assert parse_answer(json.dumps(answer(s3={"phenotypes": ["HP:0000582", "HP:0005280", "HP:0000286"]})), down)


def test_the_template_names_the_ruled_frequent_signs_where_raw_ranking_would_cut_one():
    # eight signs all shown as "85%": the rule wants the three lowest ids, raw frequency ranks the lowest id last
    from kgface.kg.profiles import FacialProfile, Phenotype

    signs = [Phenotype(f"HP:000000{i}", f"sign {i}", "skin", f"sign {i}", 0.8500 + 0.0001 * i) for i in range(1, 9)]
    # raw: HP:0000001 is the least frequent of the eight, cut by the stage's cap of 7
    profile = FacialProfile(disease_id="ORPHA:1", name="a disease", kg="hpo", phenotypes=signs)
    d = template_descriptions(profile)
    assert "HP:0000001" in d.stages[3].phenotypes and len(d.stages[3].phenotypes) == 7
    assert stage_rule_errors(profile, [(s.stage, s.phenotypes) for s in d.stages]) == []


def test_a_reply_nested_past_the_decoders_depth_is_a_schema_error_not_a_traceback(down):
    with pytest.raises(ValueError):
        parse_answer('{"stages": ' + "[" * 100_000, down)
    from kgface.prompts.backends import _opens_whole_object

    assert not _opens_whole_object('{"stages": ' + "[" * 100_000)


def test_two_different_answers_in_one_reply_are_refused(down):
    first, second = json.dumps(answer()), json.dumps(answer(description="Another face, stage unknown, eyes up."))
    with pytest.raises(ValueError, match=r'the reply holds 2 different JSON objects with a "stages" list'):
        parse_answer(f"Draft: {first}\nFinal: {second}", down)
    # one answer written twice (fenced and again plain) is one answer; a quoted schema's "stages" is no answer
    fence = "```"
    assert parse_answer(f"{fence}json\n{first}\n{fence}\n{first}", down) == parse_answer(first, down)
    schema = json.dumps({"properties": {"stages": {"type": "array"}}})
    assert parse_answer(f"{fence}json\n{schema}\n{fence}\n{first}", down) == parse_answer(first, down)


def test_a_stage_without_any_possible_phenotype_may_cite_none(down):
    # when no phenotype can show yet (all curated later), an empty stage 1 is right, not an error
    for p in down.phenotypes:
        p.min_stage = 2
    reply = answer(s1={"phenotypes": []})
    assert parse_answer(json.dumps(reply), down).stages[1].phenotypes == []


def test_template_descriptions_follow_the_stage_rules(down, acne):
    # llm=none's answers keep the rules the LLM is held to
    for profile in (down, acne):
        d = template_descriptions(profile)
        assert stage_rule_errors(profile, [(s.stage, s.phenotypes) for s in d.stages]) == []


def test_template_descriptions_of_the_default_panel_follow_the_stage_rules():
    from kgface.config import compose
    from kgface.runtime import load_profiles

    profiles = [p for p in load_profiles(compose("describe")) if not p.healthy]
    assert len(profiles) >= 10
    for profile in profiles:
        d = template_descriptions(profile)
        assert stage_rule_errors(profile, [(s.stage, s.phenotypes) for s in d.stages]) == [], profile.disease_id


def test_descriptions_json_round_trip(tmp_path, down, acne):
    descs = {p.disease_id: template_descriptions(p) for p in (down, acne)}
    path = save_descriptions(tmp_path / "descriptions.json", descs)
    assert load_descriptions(path) == descs
    with pytest.raises(ValueError, match="not a descriptions file"):
        load_descriptions({"schema": "other"})
