"""The bench scripts that read a finished run, run on the session's evaluated micro run (tests/conftest.py): their
figures in docs/ came from them, so they must still run, and their checks against the run's own numbers must hold."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
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


def test_heldout_draws_contrast_pushes_away_from_kg_neighbours(evaluated_run, capsys):
    """--contrast: lam 0, or a request's own profile as its neighbour, draws the run's own images; the model
    function adds exactly lam * (eps_c - eps_j) to the run's guided output. kg_nearest ranks by the KG alone."""
    import torch

    from kgface.diffusion.adapter import kg_added_cond_kwargs
    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.sampling import unet_eps

    draws = script("heldout_draws")
    backbone, cond, profiles, _ = load_run(evaluated_run)
    sick = [p for p in cond.profiles if not p.healthy]
    near = draws.kg_nearest(sick[0], sick, 2)
    assert near[0][1] is sick[0] and near[0][0] > near[1][0]  # itself first (cosine 1)
    assert sum(s for s, _ in near) == pytest.approx(1.0)
    unknown = dataclasses.replace(sick[1], phenotypes=[dataclasses.replace(q, frequency=None)
                                                       for q in sick[1].phenotypes])
    assert draws.kg_nearest(unknown, [sick[1]], 1)[0] == (1.0, sick[1])  # no KG frequency: 0.5, not a crash
    reqs = [Request(sick[0], 3.0, 5), Request(sick[1], 2.0, 6)]
    gen = Generator(backbone, cond)
    plain = gen.sample(reqs).int()
    others = {p.disease_id: draws.kg_nearest(p, [q for q in sick if q is not p], 1) for p in sick}
    itself = {p.disease_id: [(1.0, p)] for p in sick}
    assert (draws.contrast_sample(gen, reqs, others, 0.0).int() - plain).abs().max() <= 1
    assert (draws.contrast_sample(gen, reqs, itself, 5.0).int() - plain).abs().max() <= 1
    # the push, at one step: the fixture's barely trained tokens move its images by ~1 grey level, so read eps
    x, t = gen.noise(reqs), gen.ladder()[3]
    moved = draws.contrast_model(gen, reqs, others, 5.0)(x, t, None) - draws.contrast_model(gen, reqs, others, 0.0)(
        x, t, None)
    c = gen.condition(reqs)
    n = gen.condition([Request(others[r.profile.disease_id][0][1], r.severity, r.seed) for r in reqs])
    push = unet_eps(backbone.unet, x, t, c[0], kg_added_cond_kwargs(c[1], None)) - unet_eps(
        backbone.unet, x, t, n[0], kg_added_cond_kwargs(n[1], None))
    assert push.abs().max() > 1e-3 and torch.allclose(moved, 5.0 * push, atol=1e-5)
    draws.main([str(evaluated_run), "--seeds", "1", "--stages", "3", "--groups", "heldout", "--contrast", "1",
                "--contrast-k", "2"])
    (result,) = json_blocks(capsys.readouterr().out)
    r = result[str(evaluated_run)]
    assert (r["contrast"], r["contrast_k"], r["heldout"]["n"]) == (1.0, 2, 1)
    (pushed_from,) = r["heldout"]["contrast_from"].values()  # the two seen diseases, weights summing to 1
    assert set(pushed_from) == {"ORPHA:870", "MONDO:0011438"}
    assert sum(pushed_from.values()) == pytest.approx(1, abs=2e-3)
    with pytest.raises(SystemExit) as info:  # argparse's error: exit 2, the message on stderr
        draws.main([str(evaluated_run), "--contrast", "-1"])
    assert info.value.code == 2 and "--contrast must be >= 0" in capsys.readouterr().err


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


def test_stage_reading_ceiling_is_a_perfect_orders_spearman_against_tied_stages():
    """Known answer: against k groups of sizes m_k a perfect order reaches sqrt(1 - sum(m^3 - m) / (N^3 - N))."""
    import numpy as np

    reading = script("stage_reading")
    stages = np.repeat([0, 1, 2, 3], [50, 50, 30, 70])
    m, n = np.array([50, 50, 30, 70]), 200
    assert reading.tied_ceiling(stages) == pytest.approx(np.sqrt(1 - ((m ** 3 - m).sum()) / (n ** 3 - n)), abs=1e-9)
    assert reading.tied_ceiling(np.repeat([0, 1, 2, 3], 100)) == pytest.approx(0.968, abs=5e-4)  # sqrt(15/16)


def test_stage_reading_lines_on_a_constructed_reading():
    """A reading that orders every face by stage reaches the ceiling and separates adjacent stages completely; stage-0
    faces read as healthy are counted."""
    import numpy as np

    reading = script("stage_reading")
    stages = np.repeat([0, 1, 2, 3], 4)
    severity = stages + np.tile(np.linspace(0, 0.5, 4), 4)
    diseases = np.array(["A", "B"] * 8)
    predicted = np.where(stages == 0, np.array(["healthy", "healthy", "A", "healthy"] * 4), diseases)
    lines = reading.stage_lines("made", stages, severity, diseases, predicted)
    ceiling = reading.tied_ceiling(stages)
    assert lines[0].startswith(f"made: n 16, Spearman {ceiling:.3f} (ceiling for these stages {ceiling:.3f}")
    assert "0v1 1.000, 1v2 1.000, 2v3 1.000" in lines[1]
    assert "mean severity by stage 0-3: 0.25 / 1.25 / 2.25 / 3.25" in lines[1]
    # stage-0 rows: diseases A, B, A, B read healthy, healthy, A, healthy -> 3 of 4 healthy, 1 its own disease
    assert lines[2].strip() == ("stage 0 read as healthy 0.75, as its disease 0.25 (n 4; else most often as "
                                "nothing else)")
    predicted[stages == 0] = ["B", "healthy", "B", "A"]  # A, B, A, B read as B, healthy, B, A
    assert reading.stage_lines("made", stages, severity, diseases, predicted)[2].strip() == (
        "stage 0 read as healthy 0.25, as its disease 0.00 (n 4; else most often as B 2, A 1)")


def test_stage_reading_reads_the_real_faces_as_the_run_did(evaluated_run, capsys):
    """The script's evaluator is the train job's (same config, same cache entry): its Spearman on the real diseased
    test faces is the run's evaluator.real_stage_spearman_disease, and the run's samples are read."""
    from tests.test_train_smoke import MICRO, MICRO_EVALUATOR

    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    script("stage_reading").main([*MICRO, *MICRO_EVALUATOR, "--runs", str(evaluated_run)])
    out = capsys.readouterr().out
    rho = metrics["evaluator"]["real_stage_spearman_disease"]
    # a number, not NaN (metrics.json writes NaN as null): the micro panel's test faces span stages 0-3
    assert isinstance(rho, float) and math.isfinite(rho)
    assert out.startswith("real diseased test faces: n ") and f"Spearman {rho:.3f} " in out.splitlines()[0]
    samples = next(line for line in out.splitlines() if line.startswith(f"{evaluated_run}: samples: n "))
    rho_generated = metrics["generation"]["stage_spearman"]
    assert isinstance(rho_generated, float) and math.isfinite(rho_generated)
    assert f"Spearman {rho_generated:.3f} " in samples  # the run's key, its rows


def test_sampler_ladder_parses_its_variants():
    ladder = script("sampler_ladder").ladder
    ts, opts = ladder("leading:20", 1000)
    assert ts.tolist()[:2] == [950, 900] and ts.tolist()[-1] == 0 and len(ts) == 20 and opts == {}
    ts, opts = ladder("even:999:20:clip2.5:guide100-900", 1000)
    assert ts.tolist()[0] == 999 and ts.tolist()[-1] == 0 and len(ts) == 20
    assert opts == {"clip": 2.5, "guide": (100, 900)}
    ts, opts = ladder("trailing:20:clip3", 1000)
    assert ts.tolist()[:2] == [999, 949] and ts.tolist()[-1] == 49 and opts == {"clip": 3.0}
    assert ladder("trailing:20:w1.5", 1000)[1] == {"w": 1.5}
    assert ladder("leading:20:eta0.5:w5", 1000)[1] == {"eta": 0.5, "w": 5.0}
    for bad, why in [("linspace:20", "a variant starts with leading:N"), ("leading:20:blur3", "unknown option blur3"),
                     ("leading:20:w", "unknown option w "), ("leading:20:w1.2.3", "unknown option w1.2.3"),
                     ("leading:20:eta1:clip3", "clipC and etaE are separate samplers")]:
        with pytest.raises(SystemExit, match=why):
            ladder(bad, 1000)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sampler_ladder_clipped_ddim_is_ddim_when_nothing_is_clipped_and_bounds_the_result(prediction):
    import torch

    from kgface.diffusion.sampling import ddim_sample, ddim_timesteps

    ladder = script("sampler_ladder")
    alphas = torch.linspace(0.999, 0.01, 1000)
    ts = ddim_timesteps(1000, 10)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    model_fn = lambda x, t, c: 0.5 * x + 0.01 * t  # noqa: E731  (any deterministic function of x and t)
    plain = ddim_sample(model_fn, x, ts, alphas, None, prediction=prediction)
    assert torch.allclose(ladder.ddim_clipped(model_fn, x, ts, alphas, None, 1e9, prediction), plain, atol=1e-5)
    clipped = ladder.ddim_clipped(model_fn, x, ts, alphas, None, 0.1, prediction)
    assert plain.abs().max() > 0.1 and clipped.abs().max() <= 0.1 + 1e-6  # the last step returns the clamped x0
    # eta 0 is DDIM itself; eta > 0 adds noise, the same noise for the same generator seed
    rng = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.allclose(ladder.ddim_eta(model_fn, x, ts, alphas, None, 0.0, rng(), prediction), plain, atol=1e-5)
    noisy = ladder.ddim_eta(model_fn, x, ts, alphas, None, 1.0, rng(), prediction)
    assert not torch.allclose(noisy, plain, atol=1e-3)
    assert torch.equal(noisy, ladder.ddim_eta(model_fn, x, ts, alphas, None, 1.0, rng(), prediction))


def test_sampler_ladder_leading_is_the_generators_own_sampler(evaluated_run, capsys):
    """`leading:N` at the run's own steps draws exactly what the run's Generator draws for the same requests."""
    import torch

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run

    ladder = script("sampler_ladder")
    backbone, cond, profiles, cfg = load_run(evaluated_run)
    steps, guidance = int(cfg.model.sample.steps), float(cfg.model.sample.guidance)
    gen = Generator(backbone, cond, guidance=guidance, steps=steps)
    reqs = [Request(p, 3.0, 7 + k) for k, p in enumerate(profiles)]
    assert torch.equal(ladder.draw(gen, reqs, f"leading:{steps}", guidance), gen.sample(reqs))
    assert not torch.equal(ladder.draw(gen, reqs, f"leading:{steps}:guide2000-3000", guidance), gen.sample(reqs))
    # a guidance weight replaces the run's: w at the run's own value draws the run's images, w1 the conditional alone
    assert torch.equal(ladder.draw(gen, reqs, f"leading:{steps}:w{guidance:g}", 1.0), gen.sample(reqs))
    assert torch.equal(ladder.draw(gen, reqs, f"leading:{steps}:w1", guidance),
                       Generator(backbone, cond, guidance=1.0, steps=steps).sample(reqs))
    ladder.main([str(evaluated_run), f"leading:{steps}", "even:999:2:clip4", "--seeds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| leading") or
            line.startswith("| even")]
    assert [r.split(" | ")[0] for r in rows] == [f"| leading:{steps}", "| even:999:2:clip4"]
    # MICRO: two seen diseases at stages 2-3 and one held-out disease at stages 2-3, one seed each
    assert all(" of 4) | " in r and " of 2 | " in r for r in rows)
    for bad in ("even:1000:20", "even:10:20"):  # past the ladder; more steps than timesteps below T
        with pytest.raises(SystemExit, match=f"{bad}: even:T:N needs 0 < T < 1000"):
            ladder.ladder(bad, 1000)


def test_inversion_reconstruction_psnr_known_answers():
    import torch

    psnr = script("inversion_reconstruction").psnr
    a = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-3)  # mse 1


def test_inversion_reconstruction_reads_a_run_on_its_own_ladder(evaluated_run, capsys):
    """One row per strength, started where the run's ladder starts; inversion gives the face back closer than
    SDEdit's fresh noise (what inversion is for), on the micro run too."""
    script("inversion_reconstruction").main([str(evaluated_run), "--strengths", "0.5", "1.0", "-n", "3",
                                             "--steps", "10", "--threads", "1"])
    rows = json_blocks(capsys.readouterr().out)
    assert [r["strength"] for r in rows] == [0.5, 1.0] and 1 <= rows[0]["n"] <= 3 and rows[1]["n"] == rows[0]["n"]
    assert [r["start_t"] for r in rows] == [400, 900]  # 10 leading steps: 900, 800, ..., 0; half of them from 400
    assert rows[0]["inversion_latent_error"] < rows[0]["sdedit_latent_error"]
    assert rows[0]["inversion_psnr"] > rows[0]["sdedit_psnr"]


def test_heldout_ceiling_reads_a_run_and_refuses_a_folder_without_one(evaluated_run, tmp_path, capsys):
    script("heldout_ceiling").main([str(evaluated_run)])
    out = capsys.readouterr().out
    assert "held-out ['ORPHA:648']" in out and "oracle top-1, held-out test faces (stages 2-3)" in out
    assert "evaluator top-1 per disease, after the VAE" in out and "ORPHA:648 read as" in out
    with pytest.raises(SystemExit, match="no data.json here or in its parent"):
        script("heldout_ceiling").main([str(tmp_path)])
    # its oracle learns from the stages the evaluator's probe does, as evaluator.oracle_top1 does
    from kgface.data.manifest import read_manifest
    from kgface.evaluation import load_evaluator
    from kgface.evaluation.inputs import min_stage_of
    from kgface.evaluation.validity import oracle_top1

    low = min_stage_of(load_evaluator(evaluated_run).cfg.get("probe"))
    df = read_manifest(json.loads((evaluated_run / "data.json").read_text())["manifest"])[0]
    held = df[(df["split"] == "test") & (df["disease"] == "ORPHA:648")]
    expected = oracle_top1(df[df["split"] == "train"], held, min_stage=low)
    assert f"all phenotypes: {expected:.3f}" in out
    pretrained = tmp_path / "sd"  # a run without a VAE of its own (sd15/sdxl): one line, not a traceback
    shutil.copytree(evaluated_run, pretrained, ignore=shutil.ignore_patterns("vae", "checkpoints", "samples"))
    with pytest.raises(SystemExit, match="no model/vae"):
        script("heldout_ceiling").main([str(pretrained)])


def test_phenotype_rendering_reads_a_runs_atlas_and_refuses_a_run_without_one(evaluated_run, tmp_path, capsys):
    twin = tmp_path / "other" / evaluated_run.name  # two runs of one folder name: a strip each, none overwritten
    shutil.copytree(evaluated_run, twin, ignore=shutil.ignore_patterns("samples", "evaluation", "checkpoints"))
    script("phenotype_rendering").main([str(evaluated_run), str(twin), "-n", "8", "--out", str(tmp_path / "o")])
    assert f"== {evaluated_run} (kg; 8 atlas sets)" in capsys.readouterr().out
    written = json.loads((tmp_path / "o" / "phenotype_rendering.json").read_text())
    strips = [written[str(r)]["strip"] for r in (evaluated_run, twin)]
    assert len(set(strips)) == 2 and all((tmp_path / "o" / s).is_file() for s in strips)
    copy = tmp_path / "copy"  # the same run over a dataset folder without phenotype_atlas.csv
    shutil.copytree(evaluated_run, copy, ignore=shutil.ignore_patterns("samples", "evaluation", "checkpoints"))
    data = json.loads((copy / "data.json").read_text())
    (tmp_path / "data").mkdir()
    shutil.copy(data["manifest"], tmp_path / "data" / "manifest.csv")
    (copy / "data.json").write_text(json.dumps({**data, "manifest": str(tmp_path / "data" / "manifest.csv")}))
    with pytest.raises(SystemExit, match="its data has no phenotype atlas"):
        script("phenotype_rendering").main([str(copy)])


def test_vae_heldout_reads_the_runs_vae_and_one_that_saw_every_disease(evaluated_run, capsys):
    script("vae_heldout").main([str(evaluated_run)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("VAE ")]
    assert len(lines) == 2 and "every disease" in lines[0] and "generator's diseases (now)" in lines[1]
    faces = [int(re.search(r"(\d+) train faces", line).group(1)) for line in lines]
    assert faces[0] > faces[1] > 0  # the held-out disease's train faces taught only the first
    run_vae = json.loads((evaluated_run / "metrics.json").read_text())["vae"]
    assert faces[1] == run_vae["train_images"]  # the second is the run's own entry
    script("vae_heldout").main([str(evaluated_run), "--current-only"])  # both cached now: reads the run's alone
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("VAE ")] == lines[1:]


def test_trial_coverage_prints_every_setting_with_three_coverages(capsys):
    bench = script("trial_coverage")
    bench.main(["--trials", "4", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    for name, _ in bench.POOLED:  # the settings docs/trials.md's coverage tables quote, each with A / B / A - B
        (line,) = [x for x in lines if x.startswith(f"{name:36s} ")]
        coverage = [float(v) for v in line[37:].split()[:5:2]]
        assert len(coverage) == 3 and all(0.0 <= c <= 1.0 for c in coverage), line
    per_patient = [x for x in lines if x.startswith("per patient, ")]
    assert len(per_patient) == len(bench.PER_PATIENT) and all("(n = 8 intervals each)" in x for x in per_patient)


def test_token_stats_reestimates_the_centring_under_the_saved_weights(evaluated_run, tmp_path, capsys):
    """A copy of the run whose encoder reads statistics averaged under its saved weights; the run itself untouched;
    the same seed gives the same statistics."""
    from safetensors.torch import load_file

    key = "token_center.running_mean"
    before = load_file(str(evaluated_run / "encoder" / "model.safetensors"))
    script("token_stats").main([str(evaluated_run), str(tmp_path / "a"), "--batches", "20"])
    assert "the saved means moved" in capsys.readouterr().out
    script("token_stats").main([str(evaluated_run), str(tmp_path / "b"), "--batches", "20"])
    a, b = (load_file(str(tmp_path / n / "encoder" / "model.safetensors")) for n in ("a", "b"))
    assert load_file(str(evaluated_run / "encoder" / "model.safetensors"))[key].equal(before[key])
    assert a[key].equal(b[key]) and not a[key].equal(before[key])
    assert all(a[k].equal(before[k]) for k in before if "token_center.running" not in k and "num_batches" not in k)
    with pytest.raises(SystemExit, match="exists"):
        script("token_stats").main([str(evaluated_run), str(tmp_path / "a")])
    assert not (tmp_path / "a" / "metrics.json").exists()  # no evaluated run: its numbers were the old statistics'
    # a run fed atlas faces: rows this script does not rebuild, refused before OUT is written
    from omegaconf import OmegaConf

    atlas = tmp_path / "atlas_run"
    shutil.copytree(evaluated_run, atlas, ignore=shutil.ignore_patterns("checkpoints", "samples", "evaluation"))
    cfg = OmegaConf.load(atlas / "config.yaml")
    cfg.trainer.atlas_share = 0.3
    OmegaConf.save(cfg, atlas / "config.yaml")
    with pytest.raises(SystemExit, match="atlas faces"):
        script("token_stats").main([str(atlas), str(tmp_path / "c")])
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.tmp").exists()
