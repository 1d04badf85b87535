"""`python -m kgface.generate` on micro kgface.train runs: every mode, determinism, masks, bad inputs, the identity
score, the text / class baselines, a stacked identity adapter and DDIM inversion."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kgface.data.manifest import read_manifest
from kgface.errors import UserError


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, session_cache_dir):
    """A finished micro training run (~20 s), shared by every test here."""
    from kgface.train import main
    from tests.test_train_smoke import MICRO

    out = tmp_path_factory.mktemp("gen-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main(list(MICRO)
             + [f"hydra.run.dir={out}"])
    return out


@pytest.fixture(scope="session")
def identity_files(micro_run, tmp_path_factory):
    """A tiny random IP-Adapter checkpoint fitting the micro run's UNet, with its CLIP vision model in
    image_encoder/ beside it (h94/IP-Adapter's layout), and a reference face."""
    from diffusers import UNet2DConditionModel

    from tests.diffusion.test_identity_adapter import write_tiny_clip_vision, write_tiny_ip_adapter

    folder = tmp_path_factory.mktemp("identity")
    unet = UNet2DConditionModel.from_pretrained(micro_run / "model" / "unet")
    ckpt = write_tiny_ip_adapter(unet, folder / "ip-adapter_tiny.safetensors")
    write_tiny_clip_vision(folder / "image_encoder")
    face = folder / "face.png"
    Image.open(sorted((micro_run / "samples" / "images").glob("*.png"))[1]).save(face)
    return ckpt, face


def generate(run, out, *overrides):
    from kgface.generate import main

    return main([f"run={run}", f"hydra.run.dir={out}", "progress=false", *overrides])


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def fails(capsys, run, out, *overrides) -> str:
    with pytest.raises(SystemExit) as info:
        generate(run, out, *overrides)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kgface.generate: error:")
    assert not (out / "manifest.csv").exists() and not (out / "images").exists()  # nothing half-written
    return err[0]


def test_sample_is_deterministic_and_writes_a_dataset_manifest(micro_run, tmp_path):
    args = ["diseases=[ORPHA:870,healthy]", "stages=[0,1.5,3]", "seeds=[0,1]", "batch_size=4"]
    generate(micro_run, tmp_path / "a", *args)
    generate(micro_run, tmp_path / "b", *args, "batch_size=16")  # other batching, same images
    df, _ = read_manifest(tmp_path / "a" / "manifest.csv")
    assert len(df) == 2 * 3 + 2  # healthy has no stages: one image per seed
    assert set(df["mode"]) == {"sample"} and (tmp_path / "a" / "grid.png").is_file()
    row = df[(df["disease"] == "ORPHA:870") & (df["severity"] == 1.5)].iloc[0]
    assert float(row["requested_stage"]) == 1.5 and int(row["stage"]) == 2  # the bin [1.5, 2.5)
    for rel in df["path"]:
        assert np.abs(pixels(tmp_path / "a" / rel) - pixels(tmp_path / "b" / rel)).max() <= 1
    s0 = df[(df["disease"] == "ORPHA:870") & (df["seed"] == "0")]["path"].tolist()
    s1 = df[(df["disease"] == "ORPHA:870") & (df["seed"] == "1")]["path"].tolist()
    assert not np.array_equal(pixels(tmp_path / "a" / s0[0]), pixels(tmp_path / "a" / s1[0]))


def test_a_set_is_replaced_whole_and_never_written_into_a_run(micro_run, tmp_path, capsys):
    out = tmp_path / "set"
    generate(micro_run, out, "diseases=[ORPHA:870]", "stages=[0,3]", "seeds=[0]")
    assert len(list((out / "images").glob("*.png"))) == 2 and (out / "grid.png").is_file()
    generate(micro_run, out, "diseases=[healthy]", "stages=[0]", "seeds=[0]", "grid=false")
    listed = set(read_manifest(out / "manifest.csv")[0]["path"])
    assert {f"images/{p.name}" for p in (out / "images").glob("*.png")} == listed and len(listed) == 1
    assert not (out / "grid.png").exists()  # the earlier call's grid does not stand beside this set
    inside = micro_run / "more_samples"  # would sit in the run, beside (or over) its own samples
    try:
        assert "lies in the kgface.train run" in fails(capsys, micro_run, inside)
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    other = tmp_path / "evaluation"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    assert "holds another kgface output (metrics.json)" in fails(capsys, micro_run, other)
    # this call's own input among the files it replaces: refused before anything is read or removed
    face = sorted((out / "images").glob("*.png"))[0]
    with pytest.raises(SystemExit) as info:
        generate(micro_run, out, "mode=transform", f"input={face}", "target=ORPHA:870")
    assert info.value.code == 2 and f"input={face} lies in {out}'s images" in capsys.readouterr().err
    assert face.is_file() and (out / "manifest.csv").is_file()
    # a user's own photos and manifest (no generation.json beside them): never replaced by a set
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "mine.png").write_bytes(b"mine")
    (photos / "manifest.csv").write_text("path,disease_id,stage,split,identity\nimages/mine.png,healthy,0,test,a\n")
    with pytest.raises(SystemExit) as info:
        generate(micro_run, photos, "diseases=[healthy]", "stages=[0]", "seeds=[0]")
    assert info.value.code == 2 and "holds manifest.csv, images that no earlier run of the set wrote" in \
        capsys.readouterr().err
    assert (photos / "images" / "mine.png").read_bytes() == b"mine" and (photos / "manifest.csv").is_file()


def test_spacing_overrides_the_runs_ladder_for_this_call_only(micro_run, tmp_path):
    args = ["diseases=[ORPHA:870]", "stages=[3]", "seeds=[0]"]
    generate(micro_run, tmp_path / "run", *args)
    generate(micro_run, tmp_path / "trailing", *args, "spacing=trailing")
    generate(micro_run, tmp_path / "leading", *args, "spacing=leading")
    spacing = {n: json.loads((tmp_path / n / "generation.json").read_text())["spacing"]
               for n in ("run", "trailing", "leading")}
    assert spacing == {"run": "leading", "trailing": "trailing", "leading": "leading"}  # the micro run: leading
    (a,), (b,), (c,) = (sorted((tmp_path / n / "images").glob("*.png")) for n in ("run", "trailing", "leading"))
    assert np.array_equal(pixels(a), pixels(c)) and not np.array_equal(pixels(a), pixels(b))
    saved = json.loads((micro_run / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert saved.get("timestep_spacing", "leading") == "leading"  # the run's folder is not rewritten


def test_photo_names_are_made_file_safe_in_output_names(micro_run, tmp_path):
    """A backslash (a zip made on Windows) went into images/ and sources/ names, which read_manifest refuses; a
    long name passed the file system's 255 bytes after the sampling."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    for name in ("face\\1.png", "x" * 230 + ".png"):
        Image.open(src).save(inputs / name)
    generate(micro_run, tmp_path / "o", "mode=transform", f"input={inputs}", "target=healthy", "seeds=[3]")
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")  # refused a backslash in a path
    assert len(df) == 2
    for rel in [*df["path"], *df["source_image"]]:
        assert "\\" not in rel and len(Path(rel).name) < 120 and (tmp_path / "o" / rel).is_file()
    assert sorted(Path(p).name for p in df["input"]) == sorted(["face\\1.png", "x" * 230 + ".png"])  # as given


def test_transform_with_keep_mask_leaves_unmasked_pixels(micro_run, tmp_path, capsys):
    from kgface.diffusion.editing import edit_mask

    inputs = tmp_path / "in"
    inputs.mkdir()
    src = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    Image.open(src).convert("RGBA").resize((40, 48)).save(inputs / "face.png")  # wrong mode and size: converted
    generate(micro_run, tmp_path / "o", "mode=transform", f"input={inputs}", "target=healthy", "strength=0.8",
             "keep=[eyes,hair]", "seeds=[3]")
    logged = capsys.readouterr().out  # Hydra's console log handler
    assert "converted RGBA to RGB" in logged and "centre-cropped and resized" in logged
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    row = df.iloc[0]
    assert row["mode"] == "transform" and row["disease"] == "healthy" and row["source_image"].startswith("sources/")
    summary = json.loads((tmp_path / "o" / "generation.json").read_text())
    ident = summary["identity"]
    assert summary["strength"] == 0.8  # an edit records its SDEdit strength (a set drawn from noise: null)
    assert summary["strength_steps"] == round(0.8 * summary["steps"])  # and the steps that walked
    assert ident["identity_ssim"] == float(row["identity_ssim"]) and ident["identity_similarity"] is None
    assert "no evaluator/" in ident["note"] and "identity_similarity" not in df.columns  # said, not silently left out
    out, inp = pixels(tmp_path / "o" / row["path"]), pixels(tmp_path / "o" / row["source_image"])
    # the scores are those of the two saved (lossless) images, source against output, not of one against itself
    import torch

    from kgface.diffusion.editing import psnr, ssim

    chw = [torch.from_numpy(a.astype(np.uint8)).permute(2, 0, 1) for a in (inp, out)]
    assert float(row["identity_ssim"]) == pytest.approx(ssim(*chw), abs=1.5e-4) and float(row["identity_ssim"]) < 1
    assert float(row["identity_psnr"]) == pytest.approx(psnr(*chw), abs=0.011) and np.isfinite(float(row["identity_psnr"]))
    kept = edit_mask(None, ["eyes", "hair"], out.shape[0])[0].numpy() == 0
    assert kept.sum() > 0 and np.abs(out[kept] - inp[kept]).max() <= 1
    assert np.abs(out[~kept] - inp[~kept]).max() > 0  # the rest did change
    # the grid's row shows the input before its edit: two cells of 48 px (+2 px gap) after the 180-px label
    assert Image.open(tmp_path / "o" / "grid.png").width == 180 + 2 * (48 + 2)


def test_progression_writes_a_strip_and_a_gif_with_shared_noise(micro_run, tmp_path):
    generate(micro_run, tmp_path / "o", "mode=progression", "disease=ORPHA:870", "frames=3", "seeds=[5]")
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert df["severity"].tolist() == [0.0, 1.5, 3.0] and set(df["identity"]) == {"seed-5"}
    assert (tmp_path / "o" / "strips" / "seed5.png").is_file()
    gif = Image.open(tmp_path / "o" / "strips" / "seed5.gif")
    assert gif.n_frames == 4  # 0, 1.5, 3 and back through 1.5 (a loop)
    # shared noise: each frame is the face sample mode draws for that seed and severity
    generate(micro_run, tmp_path / "s", "diseases=[ORPHA:870]", "stages=[0,1.5,3]", "seeds=[5]")
    samples, _ = read_manifest(tmp_path / "s" / "manifest.csv")
    for _, frame in df.iterrows():
        same = samples[samples["severity"].astype(float) == float(frame["severity"])]["path"].tolist()
        assert len(same) == 1
        assert np.abs(pixels(tmp_path / "o" / frame["path"]) - pixels(tmp_path / "s" / same[0])).max() <= 1


def test_compose_parses_the_quoted_phenotype_override(micro_run, tmp_path):
    generate(micro_run, tmp_path / "o", "mode=compose", "disease=ORPHA:904", "stages=[2]",
             'phenotypes=["HP:0000316=0.8","HP:0000508=0.3"]')
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert df["disease"].tolist() == ["ORPHA:904", "custom"]  # Williams syndrome: not in training
    assert df["phenotypes"].iloc[1] == {"HP:0000316": 0.8, "HP:0000508": 0.3}
    assert df["trained"].tolist() == ["False", "False"]
    # an alt id (HP:0000312, Malar flattening's) is recorded, labelled and encoded as the live term HP:0000272
    generate(micro_run, tmp_path / "alt", "mode=compose", "stages=[2]", 'phenotypes=["HP:0000312=0.7"]')
    df, _ = read_manifest(tmp_path / "alt" / "manifest.csv")
    assert df["phenotypes"].tolist() == [{"HP:0000272": 0.7}]


def test_phenotype_override_forms(micro_run, tmp_path, capsys):
    from kgface.config import compose
    from kgface.diffusion.requests import parse_phenotypes

    cfg = compose("generate", ["run=x", 'phenotypes=["HP:0000316=0.8","HP:0000508=0.3"]'])
    assert parse_phenotypes(cfg.phenotypes) == {"HP:0000316": 0.8, "HP:0000508": 0.3}
    # intensity 0 would be listed as requested and expected by the evaluator: refused
    with pytest.raises(UserError, match=r"^phenotypes= gives HP:0000508 intensity 0: an intensity must be > 0"):
        parse_phenotypes(compose("generate", ["run=x", 'phenotypes=["HP:0000316=0.8","HP:0000508=0"]']).phenotypes)
    cfg = compose("generate", ["run=x", "phenotypes={HP:0000316: 0.8}"])  # Hydra reads {'HP': '0000316: 0.8'}
    assert dict(cfg.phenotypes) == {"HP": "0000316: 0.8"}
    err = fails(capsys, micro_run, tmp_path / "a", "mode=compose", "phenotypes={HP:0000316: 0.8}")
    assert "parsed as a dict" in err and "quoted" in err
    assert "is empty" in fails(capsys, micro_run, tmp_path / "b", "mode=compose", "phenotypes=[]")


def test_bad_inputs_are_one_line_errors(micro_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert "not an image file" in fails(capsys, micro_run, tmp_path / "a", "mode=transform", f"input={bad}")
    err = fails(capsys, micro_run, tmp_path / "b", "diseases=[Down syndrom]")
    assert "diseases=Down syndrom: unknown disease" in err and "closest" in err  # which setting named it
    src = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    err = fails(capsys, micro_run, tmp_path / "c", "mode=transform", f"input={src}", "target=Down syndrom")
    assert "target=Down syndrom: unknown disease" in err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((micro_run / "config.yaml").read_text())
    assert "has no model/ or adapter.safetensors" in fails(capsys, empty, tmp_path / "c")
    # the run's kg= is compared before its model loads (an SD run loads for minutes): refused for that, not the model
    assert f"kg=primekg but run={empty} was trained with kg=hpo" in fails(
        capsys, empty, tmp_path / "ck", "kg=primekg", f"kg.path={tmp_path / 'kg.csv'}")
    assert "every seed gives the same image" in fails(capsys, empty, tmp_path / "ci", "mode=transform", f"input={src}",
                                                      "target=ORPHA:870", "inversion=true", "seeds=[0,1]")
    damaged = tmp_path / "damaged_run"  # a truncated data.json: one line naming it (it was a JSON traceback)
    shutil.copytree(micro_run, damaged, ignore=shutil.ignore_patterns("samples", "evaluation", "checkpoints", ".*"))
    (damaged / "data.json").write_text('{"manifest": ')
    assert f"{damaged / 'data.json'}: not readable JSON" in fails(capsys, damaged, tmp_path / "dj")
    assert "stages [4]: a stage (or severity) must lie in [0, 3]" in fails(capsys, micro_run, tmp_path / "d",
                                                                          "stages=[4]")
    assert "mask= / keep= need an input image" in fails(capsys, micro_run, tmp_path / "e", "keep=[eyes]")
    # the same faces twice: listed twice, counted twice by an evaluation (a progression's strip ran 0-3-0-3)
    for k, (arg, says) in enumerate([("seeds=[0,0]", "seeds=[0, 0] names a seed twice"),
                                     ("stages=[1,1.0]", "stages=[1, 1] names a stage twice"),
                                     ("diseases=[ORPHA:870,Down syndrome]", "name ORPHA:870 twice")]):
        assert says in fails(capsys, micro_run, tmp_path / f"twice{k}", arg)
    # healthy however spelled, inverted and redrawn as healthy: the input kept its disease, labelled healthy
    face = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    assert "source_stage=0 and target=healthy: stage 0 shows no sign" in fails(  # ... and a disease at stage 0
        capsys, micro_run, tmp_path / "st0", "mode=transform", f"input={face}", "target=healthy", "inversion=true",
        "source_disease=ORPHA:870")
    # ... but acne's grade 0 shows lesions: clearing a mild-acne photo by inversion stays allowed
    generate(micro_run, tmp_path / "acne0", "mode=transform", f"input={face}", "target=healthy", "inversion=true",
             "source_disease=MONDO:0011438", "seeds=[0]")
    assert (tmp_path / "acne0" / "manifest.csv").is_file()
    for k, (arg, says) in enumerate([("lesions=[3,3]", "lesions=[3, 3] names one severity twice")]):
        assert says in fails(capsys, micro_run, tmp_path / f"les{k}", "diseases=[MONDO:0011438]", arg)
    assert "inversion=true with source_disease=Healthy and target=healthy: set source_disease" in fails(
        capsys, micro_run, tmp_path / "inv", "mode=transform", f"input={face}", "target=healthy", "inversion=true",
        "source_disease=Healthy")
    # numbers that used to end in a traceback (batch_size=0: IndexError; steps=0: ZeroDivisionError) or in silent
    # garbage (steps above the 1,000-step ladder repeated timestep 0)
    for k, (arg, key) in enumerate([("batch_size=0", "batch_size"), ("steps=0", "steps"), ("steps=5000", "steps"),
                                    ("strength=half", "strength"), ("seeds=[-1]", "seeds"), ("frames=1", "frames"),
                                    ("device=banana", "device"), ("dtype=fp8", "dtype"),
                                    ("spacing=middle", "spacing"), ("num_threads=abc", "num_threads"),
                                    ("stages=[abc]", "stages"), ("adapter_scale=x", "adapter_scale")]):
        assert fails(capsys, micro_run, tmp_path / f"n{k}", arg).startswith(f"kgface.generate: error: {key}=")
    # a kg file the run's source does not read: refused, though the KG loads only for a disease the run lacks
    assert fails(capsys, micro_run, tmp_path / "kgf", "kg.features=/x.csv").startswith(
        "kgface.generate: error: kg.features=/x.csv is read by kg=primekg only")
    for k, (arg, key) in enumerate([("spacing=middle", "spacing"), ("guidance=x", "guidance"), ("steps=1.5", "steps"),
                                    ("eta=-1", "eta")]):
        # checked before the run loads: the run without a model would fail on that instead
        assert fails(capsys, empty, tmp_path / f"e{k}", arg).startswith(f"kgface.generate: error: {key}=")
    # ... and these were read nowhere (identity keys without the adapter, evaluator_dir= without inputs), truncated
    # (batch_size=2.9 drew in batches of 2), or failed after loading (a seed past torch's 64 bits: a traceback)
    for k, (arg, words) in enumerate([("identity_encoder=/typo", "identity_encoder= needs identity_adapter="),
                                      ("identity_scale=0.5", "identity_scale=0.5 needs identity_adapter="),
                                      ("identity_scale=nan", "identity_scale=nan: not a finite number"),
                                      (f"evaluator_dir={tmp_path}", "evaluator_dir= scores how far outputs keep"),
                                      ("batch_size=2.9", "batch_size=2.9: a whole number >= 1"),
                                      ("seeds=[18446744073709551616]", "seeds=[18446744073709551616]: seeds are integers in"),
                                      ("seeds=[]", "seeds=[]: give at least one seed")]):
        assert fails(capsys, empty, tmp_path / f"u{k}", arg).startswith(f"kgface.generate: error: {words}"), arg
    assert "is a model=tiny run" in fails(capsys, micro_run, tmp_path / "dt", "dtype=bf16")  # no frozen base to halve
    generate(micro_run, tmp_path / "fp32", "diseases=[healthy]", "stages=[0]", "dtype=fp32")  # a no-op there
    assert json.loads((tmp_path / "fp32" / "generation.json").read_text())["dtype"] == "fp32"
    generate(micro_run, tmp_path / "eta", "diseases=[healthy]", "stages=[0]", "eta=0.5")  # fresh noise per step
    assert json.loads((tmp_path / "eta" / "generation.json").read_text())["eta"] == 0.5
    assert json.loads((tmp_path / "fp32" / "generation.json").read_text())["eta"] == 0.0  # the run's
    # the KG branch's weight is recorded: a set drawn at scale 0 is the base model's, not the KG-conditioned one
    generate(micro_run, tmp_path / "s0", "diseases=[healthy]", "stages=[0]", "adapter_scale=0")
    assert json.loads((tmp_path / "s0" / "generation.json").read_text())["adapter_scale"] == 0.0
    assert json.loads((tmp_path / "fp32" / "generation.json").read_text())["adapter_scale"] == 1.0  # the run's
    with pytest.raises(SystemExit) as info:
        from kgface.generate import main

        main([f"hydra.run.dir={tmp_path / 'no_run'}"])  # run= was Hydra's MissingMandatoryValue traceback
    assert info.value.code == 2 and "run= is required" in capsys.readouterr().err


def test_transform_to_healthy_is_drawn_at_severity_zero(micro_run, tmp_path, monkeypatch, session_cache_dir):
    """The default stage=3 applies to diseases: healthy was only trained at severity 0, which its rows state."""
    from kgface.config import compose
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.requests import Profiles, plan
    from kgface.runtime import make_cache

    monkeypatch.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
    face = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    cfg = compose("generate", [f"run={micro_run}", "mode=transform", f"input={face}", "target=healthy"])
    assert cfg.stage == 3  # the default this test is about
    cache = make_cache(cfg)
    _, _, run_profiles, _ = load_run(micro_run, cache=cache)
    items, _ = plan(cfg, Profiles(cfg, run_profiles, cache), run_profiles, 32, -1)
    assert [it.request.severity for it in items] == [0.0] and items[0].row["requested_stage"] == 0.0
    items, _ = plan(compose("generate", [f"run={micro_run}", "mode=transform", f"input={face}",
                                         "target=ORPHA:870", "stage=2.5"]), Profiles(cfg, run_profiles, cache),
                    run_profiles, 32, -1)
    assert [it.request.severity for it in items] == [2.5] and items[0].row["requested_stage"] == 2.5


def test_progression_keeps_one_strip_per_input_when_inputs_share_an_identity(micro_run, tmp_path):
    """A manifest with one person at two stages: two strips (each its own photo), not one strip cutting between
    them."""
    import pandas as pd

    rows = read_manifest(micro_run / "samples" / "manifest.csv")[0].iloc[:2].copy()
    rows["identity"] = "patient/1"  # the same person, and a character a file name cannot hold
    for k, rel in enumerate(rows["path"]):
        Image.open(micro_run / "samples" / rel).save(tmp_path / f"visit{k}.png")
    rows["path"] = ["visit0.png", "visit1.png"]
    manifest = tmp_path / "two.csv"
    pd.DataFrame(rows[["path", "identity", "disease", "stage", "split"]]).to_csv(manifest, index=False)
    generate(micro_run, tmp_path / "o", "mode=progression", "disease=ORPHA:870", f"input={manifest}",
             "stages=[0,3]", "seeds=[1]")
    strips = sorted(p.name for p in (tmp_path / "o" / "strips").glob("*.png"))
    assert strips == ["000_patient_1_seed1.png", "001_patient_1_seed1.png"]
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert df["source_image"].nunique() == 2 and len(df) == 4
    # a transform's grid row is the identity: with two photos in it, no one input may lead the row as its source
    generate(micro_run, tmp_path / "t", "mode=transform", "target=healthy", f"input={manifest}", "seeds=[1]")
    # one row (16-px title, 48-px cells + 2-px gap + 12-px caption) of two edits, no input cell
    assert Image.open(tmp_path / "t" / "grid.png").size == (180 + 2 * (48 + 2), 16 + 48 + 2 + 12)


def test_transform_from_a_manifest_with_a_png_mask(micro_run, tmp_path):
    size = 32
    m = np.zeros((size, size), np.uint8)
    m[16:, :] = 255  # change the lower half only
    Image.fromarray(m).save(tmp_path / "mask.png")
    generate(micro_run, tmp_path / "o", "mode=transform", f"input={micro_run / 'samples' / 'manifest.csv'}",
             "target=MONDO:0011438", "stage=2.5", f"mask={tmp_path / 'mask.png'}", "batch_size=3")
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert len(df) == len(read_manifest(micro_run / "samples" / "manifest.csv")[0])
    assert set(df["requested_disease"]) == {"MONDO:0011438"} and set(df["severity"]) == {2.5}
    for _, row in df.iterrows():
        out, inp = pixels(tmp_path / "o" / row["path"]), pixels(tmp_path / "o" / row["source_image"])
        assert np.abs(out[:16] - inp[:16]).max() <= 1  # the unmasked upper half is the input's
        assert np.abs(out[16:] - inp[16:]).mean() > 3  # ... and the masked lower half was redrawn


def test_transform_scores_identity_with_the_runs_evaluator(baselines_run, tmp_path):
    """identity_similarity = the cosine of the evaluator's features of the saved source and output PNGs."""
    import torch

    from kgface.evaluation import load_evaluator

    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, src in enumerate(sorted((baselines_run / "class" / "samples" / "images").glob("*.png"))[:2]):
        Image.open(src).save(inputs / f"face{k}.png")
    generate(baselines_run / "class", tmp_path / "o", "mode=transform", f"input={inputs}", "target=ORPHA:870",
             "seeds=[0]")  # a baselines generator: the evaluator is the parent run's
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    ident = json.loads((tmp_path / "o" / "generation.json").read_text())["identity"]
    assert ident["evaluator"] == str(baselines_run / "evaluator") and ident["images"] == 2
    ev = load_evaluator(baselines_run)
    def load(rels):
        return torch.from_numpy(np.stack([pixels(tmp_path / "o" / r) for r in rels])).permute(0, 3, 1, 2).byte()

    a, b = ev.features(load(df["source_image"])), ev.features(load(df["path"]))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.allclose(df["identity_similarity"].astype(float), cos, atol=1e-3)
    assert ident["identity_similarity"] == pytest.approx(cos.mean(), abs=1e-3)


def test_text_and_class_baselines_generate(baselines_run, tmp_path, capsys):
    from kgface.diffusion.run_loading import load_run

    from kgface.prompts import load_descriptions

    written = load_descriptions(baselines_run / "descriptions.json")  # the train job's language layer
    for mode in ("text", "class", "kg_text"):
        _, conditioner, profiles, _ = load_run(baselines_run / mode)
        assert conditioner.mode == mode and "ORPHA:648" in {p.disease_id for p in profiles}
        # the text modes prompt with the run's stage sentences (held-out diseases' too); class has no prompt
        assert (conditioner.descriptions == written) if mode != "class" else conditioner.descriptions is None
    backbone, conditioner, _, _ = load_run(baselines_run / "kg_text")  # the prompt and the trained KG branch
    assert conditioner.uses_text and conditioner.encoder is not None
    assert backbone.unet.attn_processors and any(type(p).__name__.startswith("IPAdapter")
                                                 for p in backbone.unet.attn_processors.values())
    generate(baselines_run / "kg_text", tmp_path / "kt", "diseases=[ORPHA:648]", "stages=[3]")
    assert read_manifest(tmp_path / "kt" / "manifest.csv")[0]["heldout"].tolist() == ["True"]
    # text names the disease in the prompt: a held-out one can be drawn; class cannot, and says which
    generate(baselines_run / "text", tmp_path / "t", "diseases=[ORPHA:648,ORPHA:870]", "stages=[3]")
    df, _ = read_manifest(tmp_path / "t" / "manifest.csv")
    assert df["heldout"].tolist() == ["True", "False"]
    # a text prompt names the stage, not the severity: two severities of one stage would be one image, two labels
    err = fails(capsys, baselines_run / "text", tmp_path / "tp", "mode=progression", "disease=ORPHA:870", "frames=8")
    assert "severities 0 and 0.428571 of ORPHA:870 give one image under two labels" in err
    generate(baselines_run / "text", tmp_path / "tp4", "mode=progression", "disease=ORPHA:870", "frames=4")
    generate(baselines_run / "kg_text", tmp_path / "kp", "mode=progression", "disease=ORPHA:870", "frames=8")
    generate(baselines_run / "class", tmp_path / "c", "diseases=[ORPHA:870,healthy]", "stages=[2]")
    assert len(read_manifest(tmp_path / "c" / "manifest.csv")[0]) == 2
    # diseases=null is every disease the run can draw: for a class run, the trained ones (not its held-out Noonan)
    generate(baselines_run / "class", tmp_path / "all", "stages=[3]")
    df, _ = read_manifest(tmp_path / "all" / "manifest.csv")
    assert "ORPHA:648" not in set(df["disease"]) and "ORPHA:870" in set(df["disease"]) and not df["heldout"].eq(
        "True").any()
    err = fails(capsys, baselines_run / "class", tmp_path / "x", "diseases=[ORPHA:870,ORPHA:648]")
    assert "conditioning=class" in err and "ORPHA:648 (Noonan syndrome, held out in training)" in err
    err = fails(capsys, baselines_run / "class", tmp_path / "y", "mode=compose", "disease=ORPHA:904")
    assert "ORPHA:904 (Williams syndrome)" in err  # never in the run at all


def test_load_run_knows_the_shuffled_control_and_a_one_entry_baselines_run(baselines_run, tmp_path,
                                                                          session_cache_dir):
    from kgface.diffusion.conditioning import CONTROL
    from kgface.diffusion.run_loading import RunError, load_run
    from kgface.train import main
    from tests.test_train_smoke import MICRO

    _, conditioner, profiles, _ = load_run(baselines_run / CONTROL)
    shuffled = json.loads((baselines_run / CONTROL / "shuffled_profiles.json").read_text())
    assert conditioner.mode == "kg"  # drawn with the shuffled phenotypes it was trained on
    assert [[x.hpo_id for x in p.phenotypes] for p in profiles] == [[x["hpo_id"] for x in p["phenotypes"]]
                                                                    for p in shuffled]
    # baselines=[text] alone trains in the run folder itself: it loads as text, not as the config's kg
    out = tmp_path / "one"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main(list(MICRO) + ["experiment=baselines", "baselines=[text]", "trainer.steps=2", "evaluate=false",
                            "trainer.checkpoint_every=0", f"hydra.run.dir={out}"])
    assert load_run(out)[1].mode == "text"
    # a text run has no KG branch: adapter_scale= would be ignored in silence, so it is refused
    with pytest.raises(RunError, match=r"^adapter_scale=0: .* is a conditioning=text run"):
        load_run(out, adapter_scale=0)


def test_identity_adapter_stacks_with_the_kg_adapter(micro_run, identity_files, tmp_path):
    ckpt, face = identity_files
    args = ["diseases=[ORPHA:870]", "stages=[3]", "seeds=[0,1]"]
    identity = [f"identity_adapter={ckpt}", f"identity_image={face}"]
    generate(micro_run, tmp_path / "kg", *args)
    generate(micro_run, tmp_path / "zero", *args, *identity, "identity_scale=0")
    generate(micro_run, tmp_path / "id", *args, *identity, "identity_scale=1.5")
    kg, _ = read_manifest(tmp_path / "kg" / "manifest.csv")
    for rel in kg["path"]:  # scale 0: the KG-only pixels exactly; otherwise the reference changes the output
        assert np.array_equal(pixels(tmp_path / "kg" / rel), pixels(tmp_path / "zero" / rel))
        assert not np.array_equal(pixels(tmp_path / "kg" / rel), pixels(tmp_path / "id" / rel))
    summary = json.loads((tmp_path / "id" / "generation.json").read_text())["identity_adapter"]
    assert summary["reference"] == "image" and summary["encoder"] == str(ckpt.parent / "image_encoder")
    assert set(read_manifest(tmp_path / "id" / "manifest.csv")[0]["identity_reference"]) == {str(face)}
    # each input as its own reference (one embedding per sample, tiled over the guidance batch)
    generate(micro_run, tmp_path / "own", "mode=transform", f"input={micro_run / 'samples' / 'manifest.csv'}",
             "target=healthy", f"identity_adapter={ckpt}", "identity_image=input", "batch_size=3")
    own, _ = read_manifest(tmp_path / "own" / "manifest.csv")
    assert (own["identity_reference"] == own["input"]).all()


def test_identity_adapter_errors_name_the_key(micro_run, identity_files, tmp_path, capsys):
    ckpt, face = identity_files
    err = fails(capsys, micro_run, tmp_path / "a", f"identity_adapter={tmp_path / 'nope.safetensors'}",
                f"identity_image={face}")
    assert "identity_adapter=" in err and "does not exist" in err
    assert "identity_image=" in fails(capsys, micro_run, tmp_path / "b", f"identity_adapter={ckpt}")
    err = fails(capsys, micro_run, tmp_path / "c", f"identity_adapter={ckpt}", f"identity_image={face}",
                f"identity_encoder={tmp_path / 'no_encoder'}")
    assert "identity_encoder=" in err and "does not exist" in err
    assert "needs input images" in fails(capsys, micro_run, tmp_path / "d", f"identity_adapter={ckpt}",
                                         "identity_image=input")


def test_ddim_inversion_reconstructs_the_input_latent(micro_run, tmp_path, capsys):
    """Inverting under a condition and regenerating under the same one gives the input latent back (to the
    inversion's approximation error), far closer than SDEdit's fresh noise does."""
    import torch

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.sampling import cfg_model, ddim_invert, ddim_sample, ddim_timesteps
    from kgface.diffusion.editing import prepare_image

    backbone, conditioner, profiles, _ = load_run(micro_run)
    gen = Generator(backbone, conditioner, guidance=1.0, steps=50)
    healthy = next(p for p in profiles if p.healthy)
    src = sorted((micro_run / "samples" / "images").glob("*.png"))[0]
    x0 = gen.encode(prepare_image(src, backbone.image_size)[None])
    reqs = [Request(healthy, 0.0, 0)]
    steps = ddim_timesteps(backbone.scheduler.config.num_train_timesteps, gen.steps, 0.5)
    model, cond, alphas = cfg_model(backbone.unet, 1.0), gen.condition(reqs), backbone.scheduler.alphas_cumprod
    xt = ddim_invert(model, x0, steps, alphas, cond)
    assert torch.equal(xt, gen.invert(x0, reqs, 0.5))  # the Generator method is the same computation
    back = ddim_sample(model, xt, steps, alphas, cond)
    sdedit = gen.latents(reqs, init_latents=x0, strength=0.5)
    err, err_sdedit = (back - x0).norm() / x0.norm(), (sdedit - x0).norm() / x0.norm()
    assert (xt - x0).norm() / x0.norm() > 0.2  # it did climb the ladder (0.3 measured)
    assert err < 0.05 and err < err_sdedit / 5, (float(err), float(err_sdedit))
    # and through the entry point: the inverted start replaces the noise
    generate(micro_run, tmp_path / "o", "mode=transform", f"input={src}", "target=ORPHA:870", "inversion=true")
    summary = json.loads((tmp_path / "o" / "generation.json").read_text())
    assert summary["inversion"] == {"source_disease": "healthy", "source_stage": 0.0}
    generate(micro_run, tmp_path / "o1", "mode=transform", f"input={src}", "target=ORPHA:870", "inversion=true",
             "seeds=[1]")
    generate(micro_run, tmp_path / "p", "mode=transform", f"input={src}", "target=ORPHA:870")
    first = [read_manifest(tmp_path / k / "manifest.csv")[0]["path"][0] for k in ("o", "o1", "p")]
    inverted, reseeded, sdedit = (pixels(tmp_path / k / f) for k, f in zip(("o", "o1", "p"), first))
    assert np.array_equal(inverted, reseeded)  # the seed's noise is not used: the start is the inversion ...
    assert not np.array_equal(inverted, sdedit)  # ... which SDEdit's noised start is not
    # so several seeds at eta 0 would list one image under several seeds: refused (eta > 0's step noise is seeded)
    assert "every seed gives the same image" in fails(capsys, micro_run, tmp_path / "s2", "mode=transform",
                                                      f"input={src}", "target=ORPHA:870", "inversion=true",
                                                      "seeds=[0,1]")
    generate(micro_run, tmp_path / "e2", "mode=transform", f"input={src}", "target=ORPHA:870", "inversion=true",
             "seeds=[0,1]", "eta=0.5")
    # healthy at severity 2 is a condition no run trained on: refused, not recorded as given
    err = fails(capsys, micro_run, tmp_path / "h2", "mode=transform", f"input={src}", "target=ORPHA:870",
                "inversion=true", "source_stage=2")
    assert "a healthy input has stage 0" in err


def test_acne_lesion_counts_as_the_continuous_stage(micro_run, tmp_path, capsys):
    from kgface.data.phantom.acne import severity_from_count

    generate(micro_run, tmp_path / "a", "diseases=[MONDO:0011438]", "lesions=[3,12,35,70]", "seeds=[0]")
    df, _ = read_manifest(tmp_path / "a" / "manifest.csv")
    assert [float(x) for x in df["requested_stage"]] == [round(severity_from_count(n), 4) for n in (3, 12, 35, 70)]
    assert [int(x) for x in df["lesion_count"]] == [3, 12, 35, 70]  # the counts asked for, back
    assert list(df["stage"].astype(int)) == [0, 1, 2, 3]  # ACNE04's bins: <= 5, 6-20, 21-50, > 50
    err = fails(capsys, micro_run, tmp_path / "b", "diseases=[ORPHA:870]", "lesions=[10]")
    assert "lesions=" in err and "ORPHA:870" in err
    assert "lesion counts" in fails(capsys, micro_run, tmp_path / "c", "diseases=[MONDO:0011438]", "lesions=[500]")
    # a fraction of a lesion was drawn rounded half to even (2.5 -> 2, 3.5 -> 4) and recorded as the whole count
    assert "lesions=[2.5]: lesion counts are whole numbers" in fails(capsys, micro_run, tmp_path / "d",
                                                                     "diseases=[MONDO:0011438]", "lesions=[2.5]")


def test_an_output_identical_to_its_input_keeps_generation_json_valid():
    # its PSNR is infinite: the mean is over the others and the unchanged output counted (one made the mean inf and
    # generation.json "Infinity", which strict JSON readers refuse)
    import torch

    from kgface.diffusion.requests import Item
    from kgface.generate import identity_scores

    src = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = src.clone()
    out[1, :, :4] = 255 - out[1, :, :4]
    items = [Item(request=None, row={}, group="g", source=src[i]) for i in range(2)]
    means = identity_scores(items, out)
    assert means["identity_unchanged"] == 1 and means["identity_psnr"] == items[1].row["identity_psnr"] < 100
    assert items[0].row["identity_psnr"] == float("inf") and means["identity_ssim"] < 1
    json.loads(json.dumps(means, allow_nan=False))
    assert identity_scores(items[:1], out[:1])["identity_psnr"] is None


def test_a_learned_profile_run_generates_from_the_frequencies_it_was_trained_on(micro_run, tmp_path):
    """profile.source=learned|blend: kgface.train writes the generator's frequencies to conditioning_profiles.json
    beside the KG's profiles.json; load_run (and so kgface.generate) must condition on those, not the KG's."""
    import shutil

    import torch

    from kgface.diffusion.run_loading import load_run

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    kg = json.loads((run / "profiles.json").read_text())["profiles"]
    learned = json.loads(json.dumps(kg))
    target = next(p for p in learned if p["disease_id"] == "ORPHA:870")
    for i, ph in enumerate(target["phenotypes"]):  # far from the KG's numbers
        ph["frequency"] = 0.02 if i % 2 else 0.98
    (run / "conditioning_profiles.json").write_text(json.dumps(learned))
    _, kg_cond, _, _ = load_run(micro_run)
    _, cond, profiles, _ = load_run(run)
    got = next(p for p in profiles if p.disease_id == "ORPHA:870")
    assert [x.frequency for x in got.phenotypes] == [x["frequency"] for x in target["phenotypes"]]
    i = next(k for k, p in enumerate(cond.profiles) if p.disease_id == "ORPHA:870")
    assert [x.frequency for x in cond.profiles[i].phenotypes] == [x["frequency"] for x in target["phenotypes"]]
    idx, sev = torch.tensor([i]), torch.tensor([3.0])
    with torch.no_grad():  # the encoder reads the learned edge weights: other tokens than under the KG's
        assert not torch.allclose(cond.tokens(idx, sev), kg_cond.tokens(idx, sev))


def test_age_is_refused_without_learned_ages_and_recorded_with_them(micro_run, tmp_path, capsys, session_cache_dir):
    """age= needs a run whose encoder learned age groups; the drawn set says which age it asked for (the manifest's
    age_group column and generation.json), so the request can be read back from the outputs."""
    from kgface.train import main
    from tests.test_train_smoke import MICRO

    assert f"age=adult: run={micro_run} was not trained with ages" in fails(capsys, micro_run, tmp_path / "no",
                                                                            "age=adult")
    run = tmp_path / "aged"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main([*MICRO, "encoder.age_groups=4", "trainer.steps=2", f"hydra.run.dir={run}"])
    assert "age=toddler is unknown; use one of child, adolescent, adult, older_adult" in fails(
        capsys, run, tmp_path / "bad", "age=toddler")
    generate(run, tmp_path / "adult", "diseases=[ORPHA:870,healthy]", "stages=[3]", "age=adult")
    df = read_manifest(tmp_path / "adult" / "manifest.csv")[0]
    assert len(df) == 2 and set(df["age_group"]) == {"adult"}
    assert json.loads((tmp_path / "adult" / "generation.json").read_text())["age"] == "adult"
    generate(run, tmp_path / "any", "diseases=[ORPHA:870]", "stages=[3]")
    assert set(read_manifest(tmp_path / "any" / "manifest.csv")[0]["age_group"]) == {""}
    assert json.loads((tmp_path / "any" / "generation.json").read_text())["age"] is None
    drawn = json.loads((tmp_path / "any" / "generation.json").read_text())
    assert drawn["strength"] is None and drawn["strength_steps"] is None  # the whole ladder


def test_keys_a_mode_does_not_read_are_refused_before_the_run_loads(tmp_path, capsys):
    # the run is never loaded: run= names no folder
    run, x = tmp_path / "no-run", tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(x)
    for k, (args, words) in enumerate([
            (["mode=transform", f"input={x}", "disease=ORPHA:870"], "mode=transform does not read disease=ORPHA:870"),
            (["mode=transform", f"input={x}", "stages=[1,2]"], "mode=transform does not read stages=[1, 2]"),
            (["strength=0.3"], "mode=sample does not read strength=0.3"),
            (["target=ORPHA:870", "stage=2"], "mode=sample does not read target=ORPHA:870, stage=2; leave them out"),
            (["mode=progression", "disease=ORPHA:870", "target=ORPHA:870"], "mode=progression does not read target="),
            (["mode=compose", "disease=ORPHA:870", f"input={x}"], "mode=compose does not read input="),
            # read only beside another key: a progression from noise walks the whole ladder; the source of a
            # transform is read by the inversion alone
            (["mode=progression", "disease=ORPHA:870", "strength=0.3"], "mode=progression does not read strength="),
            (["mode=transform", f"input={x}", "source_stage=2"], "mode=transform does not read source_stage=2"),
            (["mode=progression", "disease=ORPHA:870", f"input={x}", "source_disease=ORPHA:870"],
             "mode=progression does not read source_disease=ORPHA:870"),
            (["mode=progression", "disease=ORPHA:870", "frames=4", "stages=[0,3]"],
             "frames=4 and stages=[0, 3]: give one (frames would replace stages)"),
            (["lesions=[3,12]", "stages=[1]"], "lesions=[3, 12] and stages=[1]: give one"),
            # healthy is drawn at stage 0: another stage was dropped with an info line
            (["mode=transform", f"input={x}", "target=healthy", "stage=2"], "stage=2 with target=healthy: a healthy"),
            # inverted under the default source (healthy) and redrawn as healthy: the input came back, labelled healthy
            (["mode=transform", f"input={x}", "target=healthy", "inversion=true"],
             "inversion=true with target=healthy needs source_disease=")]):
        assert words in fails(capsys, run, tmp_path / f"o{k}", *args)
    assert "stage=0" not in fails(capsys, run, tmp_path / "h0", "mode=transform", f"input={x}", "target=healthy",
                                  "stage=0")  # what is drawn: passes these checks (and fails on the missing run)


def test_the_kg_of_a_generate_call_is_checked_against_the_runs(tmp_path, caplog):
    from omegaconf import OmegaConf

    from kgface.config import compose
    from kgface.runtime import check_run_kg

    run_cfg = compose("train", ["kg=primekg", f"kg.path={tmp_path / 'kg.csv'}"])
    same = compose("generate", ["run=R", "kg=primekg", f"kg.path={tmp_path / 'kg.csv'}"])
    with caplog.at_level("WARNING"):
        check_run_kg(same, run_cfg)
    assert caplog.text == ""
    other = compose("generate", ["run=R", "kg=primekg", f"kg.path={tmp_path / 'other.csv'}"])
    with caplog.at_level("WARNING"):
        check_run_kg(other, run_cfg)  # an unseen disease would come from another graph than the seen ones
    assert f"kg.path={tmp_path / 'other.csv'} but run=R was trained with kg.path={tmp_path / 'kg.csv'}" in caplog.text
    with pytest.raises(UserError, match="kg=hpo but run=R was trained with kg=primekg; set kg=primekg"):
        check_run_kg(compose("generate", ["run=R"]), run_cfg)
    hpo = compose("train", [])
    assert OmegaConf.select(hpo, "kg.path") is None
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_run_kg(compose("generate", ["run=R"]), hpo)
    assert caplog.text == ""


def test_a_gpu_number_the_machine_lacks_is_a_one_line_error(monkeypatch):
    # torch.device("cuda:3") is accepted on a one-GPU machine; the first .to() failed with a traceback
    import torch

    from kgface.errors import UserError
    from kgface.runtime import torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert torch_device("cuda:0") == torch.device("cuda:0") and torch_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match=r"^device=cuda:1: this machine has 1 GPU\(s\), cuda:0 to cuda:0; use one"):
        torch_device("cuda:1")


def test_an_image_of_a_disease_whose_id_holds_slashes_is_written(tmp_path):
    # an RDF disease without kgf:curie is known by its IRI: the '/' made a folder path and the save failed after
    # all the sampling
    import torch
    from omegaconf import OmegaConf

    from kgface.data.manifest import read_manifest
    from kgface.diffusion.requests import Item
    from kgface.generate import write_outputs

    row = {"identity": "seed-0", "disease": "http://ex.org/d/1", "stage": 3, "severity": 3.0, "split": "test",
           "source": "generated", "phenotypes": "{}", "seed": 0}
    out = write_outputs(tmp_path / "set", OmegaConf.create({"mode": "sample", "grid": False}),
                        [Item(None, row, "g")], torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"run": "r"})
    (path,) = read_manifest(out, source="generated")[0]["path"]
    assert path == "images/0000_http_ex.org_d_1_s3_seed0.png" and (tmp_path / "set" / path).is_file()
