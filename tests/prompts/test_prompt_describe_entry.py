"""`python -m kgface.describe` end to end on the real HPO graph: the template default, and an LLM server."""
import json

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


def test_llm_run_through_a_server(tmp_path, server, good, capsys):
    # the server answers with HP:0000582 (upslanted palpebral fissure), which Down syndrome's profile holds
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
    from kgface.runtime import load_profiles
    profile = load_profiles(compose("describe"), ["ORPHA:870"])[0]
    descs = load_descriptions(out / "descriptions.json")
    assert training_prompt(profile, 1, "text", descs).endswith(d.stages[1].description)
