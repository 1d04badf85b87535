"""The pretrained path end to end: tiny SD1.5- and SDXL-layout folders train (LoRA + adapter + KG encoder) and
sample through `python -m kgface.train`, exactly as a user's folder would, with bf16 autocast on the CPU."""
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

RUN = ["data.size=32", "data.supersample=2", "data.per_class=2", "data.healthy_per_class=4", "data.identities=60",
       "data.atlas.faces=0", "data.diseases=[ORPHA:870,MONDO:0011438]", "data.heldout=[]", "model.resolution=32", "model.lora_rank=4",
       "model.num_tokens=4", "model.sample.steps=2", "encoder.hidden=32", "encoder.layers=1", "encoder.heads=2",
       "trainer.steps=3", "trainer.batch_size=2", "trainer.checkpoint_every=0", "trainer.mixed_precision=bf16",
       "samples.per_cell=1", "samples.stages=[3]", "progress=false", "evaluate=false",
       "model.gradient_checkpointing=true"]  # as every sd15/sdxl config


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_pretrained_folder_trains_and_samples(kind, request, tmp_path):
    from kgface.train import main

    folder = request.getfixturevalue(f"{kind}_folder")
    out = tmp_path / kind
    # given relative, as users type it: config.yaml records it absolute, so the run loads from anywhere
    relative = os.path.relpath(folder, Path.cwd())
    main(RUN + [f"model={kind}", f"model.pretrained={relative}", f"hydra.run.dir={out}"])
    saved = OmegaConf.load(out / "config.yaml").model.pretrained
    assert Path(saved).is_absolute() and Path(saved) == Path(os.path.abspath(folder))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3 and "vae" not in metrics  # the folder's own VAE, nothing trained
    assert (out / "model" / "unet_lora.safetensors").is_file()
    assert (out / "adapter.safetensors").is_file() and (out / "encoder" / "model.safetensors").is_file()
    assert (out / "samples" / "grid.png").is_file()


@pytest.mark.parametrize("override,message", [
    ("model.dtype=bf16", "model.dtype=bf16: training loads the weights in fp32; for bf16 speed on a GPU set "
                         "model.dtype=fp32 and trainer.mixed_precision=bf16"),
    ("data.size=64", "data.size=64 but model.resolution=32: the model trains on data.size images and samples at "
                     "model.resolution"),
])
def test_settings_that_would_train_wrong_stop_in_preflight(override, message, sd15_folder, tmp_path, capsys):
    from kgface.train import main

    with pytest.raises(SystemExit) as info:
        main(RUN + ["model=sd15", f"model.pretrained={sd15_folder}", override, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "config.yaml").exists()  # nothing built

