"""The bench scripts that read a finished run, run on the session's evaluated micro run (tests/conftest.py): their
figures in docs/ came from them, so they must still run, and their checks against the run's own numbers must hold."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[2] / "bench"


def script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def json_blocks(text):
    """The JSON objects a script printed, each starting a line (on one line or indented over several)."""
    decoder, found, end = json.JSONDecoder(), [], 0
    for m in re.finditer(r"^\{", text, flags=re.M):
        if m.start() >= end:  # not inside the object read last
            obj, end = decoder.raw_decode(text, m.start())
            found.append(obj)
    return found


def test_transform_strength_repeats_the_runs_own_transformations_at_its_strength(evaluated_run, tmp_path, capsys):
    """At the run's strength (0.6) the script draws the train job's jobs with its seeds: the same numbers."""
    run_transform = json.loads((evaluated_run / "metrics.json").read_text())["transform"]
    sheet = tmp_path / "sheet.png"
    script("transform_strength").main([str(evaluated_run), "--strengths", "0.6", "0.9", "--face-identity", "none",
                                       "--out", str(tmp_path / "out"), "--img", str(sheet)])
    rows = json_blocks(capsys.readouterr().out)
    assert [r["strength"] for r in rows] == [0.6, 0.9]
    at_run = rows[0]
    assert at_run["n"] == run_transform["n"] > 0
    assert at_run["target_top1"] == run_transform["target_top1"]
    assert at_run["identity_similarity"] == run_transform["identity_similarity"]
    assert at_run["same_person_dlib"] is None  # --face-identity none
    # the two strengths drew other pixels from the same faces
    a, b = (sorted((tmp_path / "out" / f"strength_{s}" / "images").glob("*.png")) for s in ("0.6", "0.9"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == run_transform["n"]
    assert any(Image.open(x).tobytes() != Image.open(y).tobytes() for x, y in zip(a, b))
    with Image.open(sheet) as img:  # a row per strength: the source face, then its edits
        assert img.format == "PNG" and img.height > 100 and img.width > 200


def test_heldout_draws_reads_a_copy_of_a_run_alike(evaluated_run, tmp_path, capsys):
    """One generator in two folders, drawn with the same noise: equal counts, no request right in one only."""
    copy = tmp_path / "copy"
    shutil.copytree(evaluated_run, copy)
    script("heldout_draws").main([str(evaluated_run), str(copy), "--seeds", "2", "--stages", "2", "3"])
    out = capsys.readouterr().out
    first, second = json_blocks(out)
    result = first[str(evaluated_run)]
    assert second == {str(copy): result}
    # MICRO: ORPHA:648 held out, ORPHA:870 and MONDO:0011438 seen; 2 seeds x 2 stages each
    assert result["conditioning"] == "kg"
    assert (result["heldout"]["n"], result["seen"]["n"]) == (4, 8)
    assert set(result["heldout"]["per_disease"]) == {"ORPHA:648"}
    assert set(result["seen"]["per_disease"]) == {"ORPHA:870", "MONDO:0011438"}
    assert out.count("paired (McNemar exact, 0 vs 0 right in one only) p = 1") == 2  # held-out and seen
    for group in ("heldout", "seen"):
        r = result[group]
        assert sum(sum(v.values()) for v in r["read_as"].values()) == r["n"]
        assert r["k"] == sum(r["read_as"][d].get(d, 0) for d in r["per_disease"])
        assert f"{group}: {evaluated_run} {r['k']}/{r['n']} against {copy} {r['k']}/{r['n']}" in out


def test_heldout_draws_negative_guidance_conditions_the_unconditional_branch(evaluated_run, capsys):
    """--negative stage0: a stage-0 request guides against itself (no push), a stage-3 one against its stage 0;
    --negative healthy: against a healthy face of the same seed. The conditional branch is the run's own."""
    import torch

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run

    draws = script("heldout_draws")
    backbone, cond, profiles, _ = load_run(evaluated_run)
    sick = next(p for p in cond.profiles if not p.healthy)
    healthy = next(p for p in profiles if p.healthy)
    reqs = [Request(sick, 0.0, 5), Request(sick, 3.0, 6)]
    plain = Generator(backbone, cond).condition(reqs)
    at0 = draws.negative_guidance(Generator(backbone, cond), "stage0", healthy).condition(reqs)
    assert torch.equal(at0[1], plain[1]) and not torch.equal(at0[3], plain[3])  # conditional: the run's
    assert torch.equal(at0[3][0], at0[1][0]) and not torch.equal(at0[3][1], at0[1][1])
    away = draws.negative_guidance(Generator(backbone, cond), "healthy", healthy).condition(reqs)
    own = Generator(backbone, cond).condition([Request(healthy, 0.0, 5), Request(healthy, 0.0, 6)])
    assert torch.equal(away[3], own[1])
    draws.main([str(evaluated_run), "--seeds", "1", "--stages", "3", "--groups", "heldout", "--negative", "healthy"])
    (result,) = json_blocks(capsys.readouterr().out)
    assert result[str(evaluated_run)]["negative"] == "healthy" and result[str(evaluated_run)]["heldout"]["n"] == 1


def test_heldout_draws_refuses_a_run_given_twice(evaluated_run, capsys):
    with pytest.raises(SystemExit) as info:
        script("heldout_draws").main([str(evaluated_run), str(evaluated_run) + "/"])
    assert info.value.code == 2 and "a run is given twice" in capsys.readouterr().err


def test_gallery_writes_one_picture_per_mode_and_composes_the_held_out_disease(evaluated_run, tmp_path):
    img = tmp_path / "img"
    script("gallery").main(["--run", str(evaluated_run), "--out", str(tmp_path / "out"), "--img", str(img)])
    assert sorted(p.name for p in img.glob("*.png")) == [f"generation_{m}.png" for m in
                                                         ("compose", "progression", "sample", "transform")]
    held_out = json.loads((evaluated_run / "data.json").read_text())["heldout"]
    composed = pd.read_csv(tmp_path / "out" / "compose" / "manifest.csv")
    assert set(composed["requested_disease"]) == {held_out[0], "custom"}  # the disease, then a custom phenotype set
    # transform: one stage-3 sample per disease the run drew, each turned back to healthy
    inputs = sorted((tmp_path / "out" / "transform_inputs").glob("*.png"))
    assert inputs and all("_s3_" in p.name for p in inputs)
    assert len({p.name.split("_s")[0] for p in inputs}) == len(inputs)
    edits = pd.read_csv(tmp_path / "out" / "transform" / "manifest.csv")
    assert len(edits) == len(inputs) and set(edits["requested_disease"]) == {"healthy"}
