"""`python -m kgface.generate` on a micro kgface.train run: every mode, determinism, masks, bad inputs."""
import json

import numpy as np
import pytest
from PIL import Image

from kgface.data.manifest import read_manifest


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
    assert float(row["requested_stage"]) == 1.5 and row["stage"] in (1, 2)
    for rel in df["path"]:
        assert np.abs(pixels(tmp_path / "a" / rel) - pixels(tmp_path / "b" / rel)).max() <= 1
    s0 = df[(df["disease"] == "ORPHA:870") & (df["seed"] == "0")]["path"].tolist()
    s1 = df[(df["disease"] == "ORPHA:870") & (df["seed"] == "1")]["path"].tolist()
    assert not np.array_equal(pixels(tmp_path / "a" / s0[0]), pixels(tmp_path / "a" / s1[0]))


def test_transform_with_keep_mask_leaves_unmasked_pixels(micro_run, tmp_path, capsys):
    from kgface.generate import edit_mask

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
    assert 0 <= float(row["identity_ssim"]) <= 1 and float(row["identity_psnr"]) > 0
    out, inp = pixels(tmp_path / "o" / row["path"]), pixels(tmp_path / "o" / row["source_image"])
    kept = edit_mask(None, ["eyes", "hair"], out.shape[0])[0].numpy() == 0
    assert kept.sum() > 0 and np.abs(out[kept] - inp[kept]).max() <= 1
    assert np.abs(out[~kept] - inp[~kept]).max() > 0  # the rest did change


def test_progression_writes_a_strip_and_a_gif_with_shared_noise(micro_run, tmp_path):
    generate(micro_run, tmp_path / "o", "mode=progression", "disease=ORPHA:870", "frames=3", "seeds=[5]")
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert df["severity"].tolist() == [0.0, 1.5, 3.0] and set(df["identity"]) == {"seed-5"}
    assert (tmp_path / "o" / "strips" / "seed5.png").is_file()
    gif = Image.open(tmp_path / "o" / "strips" / "seed5.gif")
    assert gif.n_frames >= 3


def test_compose_parses_the_quoted_phenotype_override(micro_run, tmp_path):
    generate(micro_run, tmp_path / "o", "mode=compose", "disease=ORPHA:904", "stages=[2]",
             'phenotypes=["HP:0000316=0.8","HP:0000508=0.3"]')
    df, _ = read_manifest(tmp_path / "o" / "manifest.csv")
    assert df["disease"].tolist() == ["ORPHA:904", "custom"]  # Williams syndrome: not in training
    assert df["phenotypes"].iloc[1] == {"HP:0000316": 0.8, "HP:0000508": 0.3}
    assert df["trained"].tolist() == ["False", "False"]


def test_phenotype_override_forms(micro_run, tmp_path, capsys):
    from kgface.config import compose
    from kgface.generate import parse_phenotypes

    cfg = compose("generate", ["run=x", 'phenotypes=["HP:0000316=0.8","HP:0000508=0.3"]'])
    assert parse_phenotypes(cfg.phenotypes) == {"HP:0000316": 0.8, "HP:0000508": 0.3}
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
    assert "unknown disease" in err and "closest" in err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((micro_run / "config.yaml").read_text())
    assert "has no model/ or adapter.safetensors" in fails(capsys, empty, tmp_path / "c")
    assert "stage" in fails(capsys, micro_run, tmp_path / "d", "stages=[4]")
    assert "mask" in fails(capsys, micro_run, tmp_path / "e", "keep=[eyes]")


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
