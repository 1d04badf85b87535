"""`python -m kgface.describe` end to end on the real HPO graph: the template default, and an LLM server."""
import json
from pathlib import Path

import pytest

from kgface.config import compose
from kgface.describe import main
from kgface.prompts import load_descriptions, training_prompt


def test_defaults_need_no_model():
    cfg = compose("describe")
    assert cfg.llm.name == "none" and cfg.diseases is None


def test_template_run_writes_descriptions(tmp_path, capsys):
    out = tmp_path / "run"
    main(["diseases=[ORPHA:870,MONDO:0011438,healthy]", f"hydra.run.dir={out}"])
    descs = load_descriptions(out / "descriptions.json")
    assert list(descs) == ["ORPHA:870", "MONDO:0011438", "healthy"]
    assert all(d.source == "template" and len(d.stages) == 4 for d in descs.values())
    printed = capsys.readouterr().out
    assert descs["ORPHA:870"].stages[2].description in printed and "wrote" in printed
    # a damaged row names its disease and field (pydantic named neither), and bad JSON its file
    data = json.loads((out / "descriptions.json").read_text())
    data["diseases"]["MONDO:0011438"]["stages"][1]["stage"] = 5
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"broken.json: diseases.MONDO:0011438.stages.1.stage: "):
        load_descriptions(broken)
    broken.write_text('{"schema": ')
    with pytest.raises(ValueError, match=r"broken.json: not readable JSON"):
        load_descriptions(broken)


def test_llm_run_through_a_server(tmp_path, server, good, capsys):
    # the server answers with Down syndrome's frequent phenotypes (upslanted palpebral fissures among them), which
    # its stage 3 must cite
    from kgface.prompts.wording import frequent_phenotypes
    from kgface.runtime import load_profiles

    profile = load_profiles(compose("describe"), ["ORPHA:870"])[0]
    frequent = [p.hpo_id for p in frequent_phenotypes(profile)]
    assert "HP:0000582" in frequent and len(frequent) == 3
    server.script = [good(ids=frequent)]
    out = tmp_path / "run"
    args = ["diseases=[ORPHA:870]", "llm=openai", f"llm.base_url={server.base_url}", "llm.model=fake",
            "llm.timeout_s=2", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"]
    main(args)
    d = load_descriptions(out / "descriptions.json")["ORPHA:870"]
    assert d.source == "llm" and d.model == "fake" and d.cache_key
    entries = json.loads((out / "cache_entries.json").read_text())
    assert any(e["kind"] == "llm" and e["key"] == d.cache_key for e in entries)
    main(args)  # the second run is served from the cache
    assert len(server.requests) == 1
    # the training prompts read the file
    descs = load_descriptions(out / "descriptions.json")
    assert training_prompt(profile, 1, "text", descs).endswith(d.stages[1].description)


def test_one_disease_as_a_plain_string(tmp_path):
    # `diseases=ORPHA:870` crashed in OmegaConf.to_container (a string is not a container)
    out = tmp_path / "run"
    main(["diseases=ORPHA:870", f"hydra.run.dir={out}"])
    assert list(load_descriptions(out / "descriptions.json")) == ["ORPHA:870"]


FAST_FAIL = ["llm.max_retries=0", "llm.base_url=http://127.0.0.1:9/v1"]  # the old code fell back per disease


@pytest.mark.parametrize("args, message", [
    (["diseases=[]"], "diseases=[]: give disease ids or names"),
    (["diseases=[ORPHA:870]", "llm=openai", *FAST_FAIL], "llm.model is not set"),  # openai.yaml has model: ???
    (["diseases=[ORPHA:870]", "llm=openai", "llm.model=fake", "llm.base_url=???"], "llm.base_url is not set"),
    (["diseases=[ORPHA:870]", "llm=openai", "llm.model=fake", *FAST_FAIL, "+llm.modle=x"],
     "llm.modle is not a setting"),
    (["diseases=[ORPHA:870]", "llm=hf"], "llm.model is not set"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main([*args, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "descriptions.json").exists()


def test_fallbacks_are_not_listed_as_cache_entries(tmp_path, server):
    # a fallback writes no llm entry, so cache_entries.json must not list one
    server.script = ["not json"] * 2
    out = tmp_path / "run"
    main(["diseases=[ORPHA:870]", "llm=openai", f"llm.base_url={server.base_url}", "llm.model=fake",
          "llm.max_attempts=2", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"])
    assert load_descriptions(out / "descriptions.json")["ORPHA:870"].source == "template"
    entries = json.loads((out / "cache_entries.json").read_text())
    assert entries and all(e["kind"] != "llm" for e in entries)
    assert all((Path(e["path"]) / "entry.json").is_file() for e in entries)
