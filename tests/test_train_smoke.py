"""A CPU smoke test of `python -m kgface.train` (lightning-hydra-template style): the whole job at micro size."""
import json

import pytest

from kgface.config import compose

MICRO = ["model.tiny.image_size=32", "model.tiny.vae_block_out_channels=[16,32]",
         "model.tiny.unet_block_out_channels=[32,64]", "model.tiny.unet_heads=[2,2]",
         "model.tiny.unet_attention_levels=[true,false]", "model.tiny.norm_num_groups=16",
         "model.vae_train.steps=3", "model.vae_train.batch_size=8", "model.num_tokens=4", "model.sample.steps=2",
         "encoder.hidden=32", "encoder.layers=1", "encoder.heads=2",
         "data.size=32", "data.supersample=2", "data.per_class=2", "data.healthy_per_class=4", "data.identities=60",
         "data.diseases=[ORPHA:870,ORPHA:648,MONDO:0011438]", "data.heldout=[ORPHA:648]",
         "trainer.steps=4", "trainer.batch_size=4", "trainer.checkpoint_every=2", "trainer.log_every=1",
         "samples.per_cell=1", "samples.stages=[0,3]", "progress=false", "evaluate=false"]


def test_train_job_writes_the_documented_layout(tmp_path):
    from kgface.train import main

    out = tmp_path / "run"
    main(MICRO + [f"hydra.run.dir={out}"])
    for rel in ["config.yaml", "profiles.json", "descriptions.json", "metrics.json", "report.md", "loss.png",
                "adapter.safetensors", "adapter.json", "encoder/model.safetensors", "model/unet/config.json",
                "model/vae/config.json", "samples/grid.png", "samples/manifest.csv", "cache_entries.json",
                "checkpoints/step-0000004/trainable.safetensors"]:
        assert (out / rel).exists(), rel
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and metrics["conditioning"] == "kg"
    from kgface.data.manifest import read_manifest

    samples, _ = read_manifest(out / "samples" / "manifest.csv")
    assert set(samples["disease"]) == {"ORPHA:870", "ORPHA:648", "MONDO:0011438", "healthy"}  # held-out drawn too
    assert samples["heldout"].astype(str).eq("True").sum() == 2


def test_bad_overrides_are_clear_errors(tmp_path, capsys):
    from kgface.train import main

    with pytest.raises(SystemExit) as info:
        main(MICRO + ["conditioning=nonsense", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2 and "conditioning=nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["model=sd15", f"hydra.run.dir={tmp_path / 'b'}", "progress=false"])
    assert info.value.code == 2 and "model.pretrained" in capsys.readouterr().err


def test_experiment_and_model_groups_compose():
    cfg = compose("train", ["model=sdxl", "model.pretrained=/x", "conditioning=class"])
    assert cfg.model.name == "sdxl" and cfg.model.resolution == 1024 and cfg.conditioning == "class"


def test_baselines_experiment_trains_each_conditioning(tmp_path):
    from kgface.train import main

    out = tmp_path / "run"
    main(MICRO + ["experiment=baselines", "trainer.steps=2", "trainer.checkpoint_every=0", f"hydra.run.dir={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"kg", "text", "class"}
    assert (out / "kg" / "encoder" / "model.safetensors").exists()
    assert (out / "class" / "class_tokens.safetensors").exists()
    assert not (out / "text" / "adapter.safetensors").exists()  # text conditioning has no KG branch
    from kgface.data.manifest import read_manifest

    cls, _ = read_manifest(out / "class" / "samples" / "manifest.csv")
    assert "ORPHA:648" not in set(cls["disease"])  # class conditioning cannot draw the held-out disease
