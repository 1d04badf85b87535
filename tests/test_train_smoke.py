"""A CPU smoke test of `python -m kgface.train` (lightning-hydra-template style): the whole job at micro size."""
import json
import logging
import re
from pathlib import Path

import pytest

from kgface.config import compose
from kgface.kg import KGError

MICRO = ["model.tiny.image_size=32", "model.tiny.vae_block_out_channels=[16,32]",
         "model.tiny.unet_block_out_channels=[32,64]", "model.tiny.unet_heads=[2,2]",
         "model.tiny.unet_attention_levels=[true,false]", "model.tiny.norm_num_groups=16",
         "model.vae_train.steps=3", "model.vae_train.batch_size=8", "model.num_tokens=4", "model.sample.steps=2",
         "encoder.hidden=32", "encoder.layers=1", "encoder.heads=2",
         "data.size=32", "data.supersample=2", "data.per_class=2", "data.healthy_per_class=4", "data.identities=60",
         "data.diseases=[ORPHA:870,ORPHA:648,MONDO:0011438]", "data.heldout=[ORPHA:648]", "data.atlas.faces=8",
         "trainer.steps=4", "trainer.batch_size=4", "trainer.checkpoint_every=2", "trainer.log_every=1",
         "samples.per_cell=1", "samples.stages=[0,3]", "samples.transform_identities=1", "samples.control_seeds=4",
         "progress=false",
         "evaluate=false"]
# a micro evaluator (seconds to train): the job's evaluation path, not its quality
MICRO_EVALUATOR = ["evaluate=true", "evaluator.image_size=32", "evaluator.embed_dim=32", "evaluator.vision.width=32",
                   "evaluator.vision.layers=1", "evaluator.vision.patch_size=8", "evaluator.vision.head_width=16",
                   "evaluator.text.width=32", "evaluator.text.layers=1", "evaluator.text.heads=2",
                   "evaluator.train.steps=3", "evaluator.train.batch_size=16"]
REQUIRED_KEYS = ["evaluator.real_top1", "evaluator.real_stage_mae", "evaluator.oracle_top1",
                 "generation.seen_top1", "generation.seen_disease_top1", "generation.heldout_top1",
                 "generation.stage_spearman", "generation.profile_match_f1",
                 "transform.identity_similarity", "transform.target_top1", "generation.frequency_mae", "tstr_top1",
                 "vae_ceiling_top1", "fid_clip", "kid_clip", "memorisation_rate", "controls.token_swap_changed",
                 "controls.scale0_changed", "evaluator.real_profile_match_f1",
                 "evaluator.real_profile_match_f1_template",
                 "transform.identity_distance_dlib", "transform.identity_cosine_dlib",
                 "evaluator.identity_dlib.n", "evaluator.identity_dlib.cosine_auroc"]  # dlib: the [dlib] extra, in [dev]


def _has(metrics: dict, dotted: str) -> bool:
    node = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_train_job_writes_the_documented_layout(tmp_path):
    from kgface.train import main

    out = tmp_path / "run"
    main(MICRO + MICRO_EVALUATOR + ["trainer.val_every=2", f"hydra.run.dir={out}"])
    for rel in ["config.yaml", "profiles.json", "descriptions.json", "metrics.json", "report.md", "loss.png",
                "adapter.safetensors", "adapter.json", "encoder/model.safetensors", "model/unet/config.json",
                "model/vae/config.json", "samples/grid.png", "samples/transforms.png", "samples/manifest.csv",
                "cache_entries.json", "checkpoints/step-0000004/trainable.safetensors", "evaluator/evaluator.json",
                "evaluation/report.md", "evaluation/report.html", "evaluation/confusion_generated.png",
                "samples/val/step-0000002.png", "samples/val/step-0000004.png"]:
        assert (out / rel).exists(), rel
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and metrics["conditioning"] == "kg"
    missing = [k for k in REQUIRED_KEYS if not _has(metrics, k)]
    assert not missing, missing
    controls = metrics["controls"]  # 3 sick diseases (the held-out one too) x samples.control_seeds=4
    assert controls["n"] == 12 and controls["seeds_per_disease"] == 4
    isolated = metrics["evaluator"]["phenotype_auroc_isolated"]  # each head against its phenotype drawn alone
    assert isolated and all(0.0 <= a <= 1.0 for a in isolated.values())
    assert metrics["evaluator"]["phenotype_auroc_isolated_summary"]["n"] == len(isolated)
    assert 0.0 <= controls["token_swap_chance"] <= 1.0 and 0.0 <= controls["scale0_chance"] <= 1.0
    from kgface.data.manifest import read_manifest

    samples, _ = read_manifest(out / "samples" / "manifest.csv")
    drawn = samples[samples["mode"] == "sample"]
    assert set(drawn["disease"]) == {"ORPHA:870", "ORPHA:648", "MONDO:0011438", "healthy"}  # held-out drawn too
    assert drawn["heldout"].astype(str).eq("True").sum() == 2
    sick = drawn[drawn["disease"] != "healthy"]  # one face per disease, kept across its stages
    assert sick.groupby("disease")["seed"].nunique().eq(1).all() and sick["seed"].nunique() == 3
    moved = samples[samples["mode"] == "transform"]
    assert set(moved["disease"]) == {"ORPHA:870", "ORPHA:648", "MONDO:0011438", "healthy"}
    assert all((out / "samples" / p).exists() for p in moved["path"]) and moved["source_image"].str.len().gt(0).all()
    report = (out / "report.md").read_text()
    assert "generation.heldout_top1" in report and "samples/transforms.png" in report
    # each share in the headline table carries its 95% interval from metrics.json
    from kgface.run_report import with_interval

    seen, seen_ci = metrics["generation"]["seen_top1"], metrics["generation"]["seen_top1_ci95"]
    assert f"| {with_interval(seen, seen_ci)} |" in report and "[" in with_interval(seen, seen_ci)
    # the profiles learned from the real test faces, beside the KG's, in the run's own evaluation (profile.learned=)
    learned = json.loads((out / "evaluation" / "learned_profiles.json").read_text())["diseases"]
    assert learned and set(learned) <= {"ORPHA:870", "ORPHA:648", "MONDO:0011438"}
    assert "](learned_profiles.png)" in (out / "evaluation" / "report.md").read_text()
    assert "](evaluation/learned_profiles.png)" in report  # the run's report shows every evaluation figure


def test_a_real_photo_run_draws_and_measures_the_diseases_its_evaluator_knows(tmp_path, capsys):
    """data=manifest (as data=acne04) holds fewer diseases than the KG panel: the run trains, and its measured samples
    are the diseases with real faces (they were the whole panel, which the evaluator refused after training)."""
    import pandas as pd

    from kgface.data.manifest import read_manifest
    from kgface.dataset import main as dataset_main
    from kgface.train import main

    dataset_main([o for o in MICRO if o.startswith("data.")] + [f"hydra.run.dir={tmp_path / 'phantom'}"])
    df = pd.read_csv(tmp_path / "phantom" / "manifest.csv", dtype=str, keep_default_na=False)
    df[df["disease"].isin(["MONDO:0011438", "healthy"])].to_csv(tmp_path / "phantom" / "acne.csv", index=False)
    out = tmp_path / "run"
    real = ["data=manifest", f"data.path={tmp_path / 'phantom' / 'acne.csv'}", "data.size=32", "samples.stages=[3]"]
    # held-out diseases of real data: diseases the data has, not all of them (it was an unknown option)
    for heldout in ("[MONDO:0011438]", "[ORPHA:870]"):
        with pytest.raises(SystemExit) as info:
            main([o for o in MICRO if not o.startswith("data.")] + MICRO_EVALUATOR + real
                 + [f"data.heldout={heldout}", f"hydra.run.dir={tmp_path / 'h'}"])
        assert info.value.code == 2 and f"data.heldout=['{heldout[1:-1]}']: name diseases of the data" in \
            capsys.readouterr().err
    main([o for o in MICRO if not o.startswith("data.")] + MICRO_EVALUATOR + real + [f"hydra.run.dir={out}"])
    samples = read_manifest(out / "samples" / "manifest.csv")[0]
    assert set(samples["disease"]) == {"MONDO:0011438", "healthy"}
    assert "samples: 12 panel diseases have no real faces the evaluator learned" in (out / "train.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generation"]["seen_disease_n"] == 1 and len(metrics["samples"]["not_measured"]) == 12
    assert "not drawn or measured: panel diseases without real faces" in (out / "evaluation" / "report.md").read_text()


def test_one_seed_trains_the_same_weights_in_two_processes(tmp_path):
    """Seeds make runs reproducible: two processes with other string-hash seeds (the order of a set of names) and
    their own caches (VAE trained afresh) write byte-identical weights and samples. One thread: with two, a kernel's
    split of work lets long runs drift in the last bits (docs/training.md, "With two threads one machine does not
    repeat itself")."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    runs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "KGFACE_CACHE_DIR": str(tmp_path / f"cache{hash_seed}")}
        done = subprocess.run([sys.executable, "-m", "kgface.train", *MICRO, "num_threads=1", f"hydra.run.dir={out}"],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(out)
    weights = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*.safetensors"))
    assert {"adapter.safetensors", "model/unet/diffusion_pytorch_model.safetensors",
            "model/vae/diffusion_pytorch_model.safetensors"} <= {str(w) for w in weights}
    for rel in weights:
        a, b = load_file(runs[0] / rel), load_file(runs[1] / rel)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), rel
    assert (runs[0] / "samples/grid.png").read_bytes() == (runs[1] / "samples/grid.png").read_bytes()


def test_another_jobs_folder_is_not_reset_by_a_train_run(tmp_path, capsys):
    # a train run resets its OUT (metrics.json, evaluator, report, samples): pointed at an evaluation, a trial or a
    # folder inside a run, it refuses before removing anything
    from kgface.train import main

    evaluation, trial, run = tmp_path / "evaluation", tmp_path / "trial", tmp_path / "run"
    described, profiled = tmp_path / "described", tmp_path / "profiled"
    for folder, files in ((evaluation, ("metrics.json", "report.md")), (trial, ("trial.csv", "report.md")),
                          (run, ("data.json", "profiles.json", "config.yaml")), (described, ("descriptions.json",)),
                          (profiled, ("profiles.json", "profiles.ttl"))):
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}", encoding="utf-8")
    for out, words in ((evaluation, "holds another kgface output (metrics.json of an evaluation)"),
                       (trial, "holds another kgface output (trial.csv)"),
                       (described, "holds another kgface output (descriptions.json of kgface.describe)"),
                       (profiled, "holds another kgface output (profiles.ttl)"),
                       (run / "evaluation", f"lies in the kgface.train run {run.resolve()}")):
        with pytest.raises(SystemExit) as info:
            main(MICRO + [f"hydra.run.dir={out}"])
        assert info.value.code == 2 and words in capsys.readouterr().err
    assert (evaluation / "metrics.json").is_file() and (trial / "report.md").is_file()


def test_bad_overrides_are_clear_errors(tmp_path, capsys):
    from kgface.train import main

    with pytest.raises(SystemExit) as info:
        main(MICRO + ["conditioning=nonsense", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2 and "conditioning=nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["model=sd15", f"hydra.run.dir={tmp_path / 'b'}", "progress=false"])
    assert info.value.code == 2 and "model.pretrained" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # atlas heads without an atlas: before any data is built
        main(["experiment=benchmark", "data.atlas.faces=0", f"hydra.run.dir={tmp_path / 'c'}", "progress=false"])
    assert info.value.code == 2 and "data.atlas.faces" in capsys.readouterr().err
    assert not (tmp_path / "c" / "profiles.json").exists()
    for override, named in (("encoder.age_groups=3", "encoder.age_groups=3: the faces carry 4 age groups"),
                            ("trainer.batch_size=1", "encoder.center_tokens=true with trainer.batch_size=1")):
        with pytest.raises(SystemExit) as info:  # a shape error at step 1; centering that never centred
            main(MICRO + [override, f"hydra.run.dir={tmp_path / 'f'}"])
        assert info.value.code == 2 and named in capsys.readouterr().err
        assert not (tmp_path / "f" / "profiles.json").exists()
    with pytest.raises(SystemExit) as info:  # a text model of another width: a shape error at step 1, naming nothing
        main(MICRO + ["+encoder.in_dim=256", f"hydra.run.dir={tmp_path / 'g'}"])
    assert info.value.code == 2 and "gives 384-d text vectors but the KG encoder reads 256-d ones: add " \
        "+encoder.in_dim=384" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a 1.5 was drawn at 1.5 and labelled stage 1 in the samples
        main(MICRO + ["samples.stages=[0,1.5]", f"hydra.run.dir={tmp_path / 'd'}"])
    assert info.value.code == 2 and "samples.stages=[0, 1.5]" in capsys.readouterr().err
    assert not (tmp_path / "d" / "profiles.json").exists()
    # a rerun into a finished folder that fails on the way: the earlier run's metrics.json (written last, the mark
    # of a whole run) does not stay beside the new config
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text("{}")
    (tmp_path / "e" / "config.yaml").write_text("seed: 0\n")  # a train run's (an evaluation's folder is refused)
    # ... nor its generator, samples, report or data.json, which `run=OUT` would load under the new config (they
    # stayed until the new generator began to train, minutes later); its checkpoints stay for trainer.resume
    old = ["model/x", "encoder/x", "adapter.safetensors", "samples/grid.png", "report.md", "data.json", "loss.png",
           "evaluation/report.md", "checkpoints/step-0000002/x", "samples/val/step-0000002.png", "logs/events"]
    for rel in old:
        (tmp_path / "e" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "e" / rel).write_text("old")
    (tmp_path / "e" / "checkpoints/step-0000002/state.json").write_text('{"step": 2}')
    # a rerun that cannot train (checkpoints of an earlier run and no trainer.resume; one past trainer.steps) is
    # refused before it removes anything: it failed in the trainer, after the last run's outputs were gone
    for extra, words in (([], "holds checkpoints of an earlier run (step-0000002); trainer.resume=latest"),
                         (["trainer.resume=latest", "trainer.steps=1"], "step-0000002 is past trainer.steps=1")):
        with pytest.raises(SystemExit) as info:
            main(MICRO + extra + [f"hydra.run.dir={tmp_path / 'e'}"])
        assert info.value.code == 2 and words in capsys.readouterr().err
        assert all((tmp_path / "e" / rel).exists() for rel in old + ["metrics.json"])
    with pytest.raises(SystemExit) as info:
        main(MICRO + ["data.diseases=[ORPHA:870,ORPHA:99999999]", f"hydra.run.dir={tmp_path / 'e'}",
                      "trainer.resume=latest"])
    assert info.value.code == 2 and "unknown disease 'ORPHA:99999999'" in capsys.readouterr().err
    assert (tmp_path / "e" / "config.yaml").is_file() and not (tmp_path / "e" / "metrics.json").exists()
    # ... and what the resumed training continues: its validation grids and TensorBoard logs
    assert [rel for rel in old if (tmp_path / "e" / rel).exists()] == [
        "checkpoints/step-0000002/x", "samples/val/step-0000002.png", "logs/events"]


def test_learned_frequencies_condition_the_generator_a_run_trains(evaluated_run, tmp_path):
    """profile.source=learned: a run's learned_profiles.json replaces the KG frequencies the generator is trained and
    loaded with (conditioning_profiles.json), while profiles.json keeps the KG's for judging."""
    from kgface.diffusion.run_loading import load_run
    from kgface.train import main

    learned_file = evaluated_run / "evaluation" / "learned_profiles.json"
    learned = {d: {e["hpo_id"]: e["learned_frequency"] for e in entry["phenotypes"]}
               for d, entry in json.loads(learned_file.read_text())["diseases"].items()}
    out = tmp_path / "run"
    main(list(MICRO) + ["profile.source=learned", f"profile.learned={learned_file}", f"hydra.run.dir={out}"])
    kg = {p["disease_id"]: {q["hpo_id"]: q["frequency"] for q in p["phenotypes"]}
          for p in json.loads((out / "profiles.json").read_text())["profiles"]}
    _, cond, drawable, _ = load_run(out)  # drawable: held-out diseases too, which generation composes
    used = {p.disease_id: {q.hpo_id: q.frequency for q in p.phenotypes} for p in drawable}
    trained = {p.disease_id: {q.hpo_id: q.frequency for q in p.phenotypes} for p in cond.profiles}
    assert "ORPHA:648" in used and "ORPHA:648" not in trained and all(trained[d] == used[d] for d in trained)
    changed = 0
    for d, table in learned.items():
        for h, f in table.items():
            if d == "ORPHA:648":  # held out: the KG's (its learned ones come from the faces its target reads)
                assert used[d][h] == kg[d][h]
                continue
            assert used[d][h] == pytest.approx(f)
            changed += kg[d][h] is None or abs(kg[d][h] - f) > 1e-6
    assert changed  # the learned file differs from the KG somewhere (e.g. a phenotype the micro heads never detect)
    assert (out / "conditioning_profiles.json").is_file()


def test_a_checkpoint_resumes_only_the_training_it_was_part_of(evaluated_run, tmp_path, capsys):
    """trainer.resume=latest under another conditioning, seed or data config continued the old weights under the
    new config.yaml; now refused, before anything of the run is removed. trainer.* may change."""
    import shutil

    from kgface.train import main

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    state = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert set(state["setup"]) == {"version", "conditioning", "seed", "data", "kg", "encoder", "profile", "model",
                                   "trainer", "objective", "model_weights", "encoder_weights"}
    for override, words in (("seed=1", "(seed differ"), ("conditioning=text", "(conditioning differ"),
                            ("data.heldout=[]", "(data.* differ"),
                            ("trainer.mark_weight=1.0",
                             "(trainer.observed_phenotypes / atlas_share / mark_weight differ"),
                            ("trainer.cfg_drop_both=0.2", "(trainer.cfg_drop_tokens / cfg_drop_text / cfg_drop_both / "
                                                          "age_drop / min_snr_gamma differ")):
        with pytest.raises(SystemExit) as info:
            main(list(MICRO) + ["trainer.resume=latest", "trainer.steps=6", override, f"hydra.run.dir={run}"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "was trained under other settings " + words in err, err
        assert (run / "metrics.json").is_file() and (run / "evaluator").is_dir()  # nothing removed


def test_a_text_checkpoint_whose_sentences_differ_is_refused_before_the_data(tmp_path, capsys):
    """Text prompts' sentences are known once the descriptions are written: a resume whose LLM wrote others was
    refused only when the generator trained, after the data set, VAE and evaluator."""
    from kgface.train import main, training_setup

    run = tmp_path / "run"
    setup = {**training_setup(compose("train", MICRO + ["conditioning=text"]), "text"), "descriptions": "other"}
    (run / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run / "checkpoints" / "step-0000002" / "state.json").write_text(json.dumps({"step": 2, "setup": setup}))
    with pytest.raises(SystemExit) as info:
        main(list(MICRO) + ["conditioning=text", "trainer.resume=latest", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "(descriptions.json's sentences (llm.*) differ" in err, err
    assert (run / "descriptions.json").is_file() and not (run / "data.json").exists()  # before the data


def test_the_training_setup_names_the_text_model_by_its_files_not_its_path(tmp_path):
    import shutil

    from kgface.config import compose
    from kgface.encoders.text import default_text_model_path
    from kgface.train import training_setup

    copy = tmp_path / "minilm"
    shutil.copytree(default_text_model_path(), copy)
    same = training_setup(compose("train", MICRO + [f"encoder.text_model={copy}"]), "kg")
    assert same == training_setup(compose("train", MICRO), "kg")  # the same model elsewhere: the same setup
    small = sorted(p for p in copy.rglob("*.json") if p.stat().st_size < 1 << 20)[0]
    small.write_text(small.read_text() + " ")  # another model under the same folder
    other = training_setup(compose("train", MICRO + [f"encoder.text_model={copy}"]), "kg")
    assert other["encoder"] != same["encoder"] and {k: v for k, v in other.items() if k != "encoder"} == \
        {k: v for k, v in same.items() if k != "encoder"}
    small.write_text(small.read_text()[:-1])  # back to the same model; now its 90 MB weights change in the middle,
    big = max(copy.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)  # known by their size alone
    with open(big, "r+b") as f:
        f.seek(big.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    changed = training_setup(compose("train", MICRO + [f"encoder.text_model={copy}"]), "kg")
    assert changed["encoder"] == same["encoder"] and changed["encoder_weights"] != same["encoder_weights"]  # sizes
    assert {k: v for k, v in changed.items() if k != "encoder_weights"} == \
        {k: v for k, v in same.items() if k != "encoder_weights"}  # agree: only the sampled bytes tell


def test_the_training_setup_holds_what_changes_the_learning_and_nothing_else(tmp_path, monkeypatch, hpo_kg, catalog):
    """Settings that do not change what is learned (gradient checkpointing; profile.blend under
    profile.source=kg, where profile.learned is refused; the encoder of a text run) do not block a resume; a folder
    named relatively from its parent is the folder named absolutely; a text run still records the prompt encoder's files (model.text_model)."""
    from omegaconf import OmegaConf

    from kgface.config import compose
    from kgface.train import training_setup

    base = training_setup(compose("train", MICRO), "kg")
    for override in ("model.gradient_checkpointing=true", "profile.blend=0.9",
                     "model.sample.steps=3", "model.schedule.timestep_spacing=trailing"):
        assert training_setup(compose("train", MICRO + [override]), "kg") == base, override
    assert training_setup(compose("train", MICRO + ["model.adapter_scale=0.5"]), "kg")["model"] != base["model"]
    wider = compose("train", MICRO + ["encoder.hidden=48"])
    assert training_setup(wider, "kg")["encoder"] != base["encoder"]
    assert "encoder" not in training_setup(wider, "text") and "encoder" not in training_setup(wider, "class")
    assert training_setup(wider, "text") == training_setup(compose("train", MICRO), "text")
    assert training_setup(wider, "kg_shuffled")["encoder"] == training_setup(wider, "kg")["encoder"]
    # what each step is fed (trainer.observed_phenotypes, ...) counts; steps and rates do not; class tokens read
    # neither the atlas nor the observed sets
    for override in ("trainer.observed_phenotypes=true", "trainer.mark_weight=2.0"):
        assert training_setup(compose("train", MICRO + [override]), "kg")["trainer"] != base["trainer"], override
    assert training_setup(compose("train", MICRO + ["trainer.steps=9", "trainer.lr=1e-5"]), "kg") == base
    # what each step minimises counts in its own group (checkpoints written before it resume: not compared)
    for override in ("trainer.cfg_drop_tokens=0.2", "trainer.cfg_drop_text=0.1", "trainer.cfg_drop_both=0.1",
                     "trainer.min_snr_gamma=0"):
        other = training_setup(compose("train", MICRO + [override]), "kg")
        assert other["objective"] != base["objective"] and {**other, "objective": 0} == {**base, "objective": 0}
    # age_drop only where the loop draws it: a KG encoder with age groups
    aged = MICRO + ["encoder.age_groups=4"]
    assert training_setup(compose("train", MICRO + ["trainer.age_drop=0.3"]), "kg") == base
    assert training_setup(compose("train", aged + ["trainer.age_drop=0.3"]), "kg")["objective"] != \
        training_setup(compose("train", aged), "kg")["objective"]
    assert training_setup(compose("train", aged + ["trainer.age_drop=0.3"]), "text")["objective"] == \
        training_setup(compose("train", aged), "text")["objective"]
    assert training_setup(compose("train", aged + ["trainer.age_drop=0.3"]), "kg_shuffled")["objective"] != \
        training_setup(compose("train", aged), "kg_shuffled")["objective"]  # the control trains as kg, with ages
    assert training_setup(compose("train", MICRO + ["trainer.observed_phenotypes=true"]), "class") == \
        training_setup(compose("train", MICRO), "class")
    # text prompts' sentences count by what they say (recorded once the run has them), not by the LLM's settings
    from kgface.prompts import template_descriptions
    from kgface.train import descriptions_digest

    from kgface.kg import ProfileBuilder

    builder = ProfileBuilder(hpo_kg, catalog)
    profiles = [builder.build("ORPHA:870"), builder.build("MONDO:0011438")]
    said = {p.disease_id: template_descriptions(p) for p in profiles}
    same = {p.disease_id: template_descriptions(p) for p in profiles}
    assert descriptions_digest(said) == descriptions_digest(same)
    first = same[profiles[0].disease_id]
    first.stages[2].description = first.stages[2].description.replace("face", "person")
    assert descriptions_digest(said) != descriptions_digest(same)
    (tmp_path / "faces").mkdir()
    monkeypatch.chdir(tmp_path)
    named = {}
    for how, root in (("relative", "faces"), ("absolute", str(tmp_path / "faces"))):
        cfg = compose("train", MICRO)
        OmegaConf.update(cfg, "data.root", root, force_add=True)
        named[how] = training_setup(cfg, "kg")["data"]
    assert named["relative"] == named["absolute"] != base["data"]
    copy = tmp_path / "prompt_model"
    import shutil

    from kgface.encoders.text import default_text_model_path

    shutil.copytree(default_text_model_path(), copy)
    same = training_setup(compose("train", MICRO + [f"model.text_model={copy}"]), "text")
    assert same == training_setup(compose("train", MICRO), "text")
    small = sorted(p for p in copy.rglob("*.json") if p.stat().st_size < 1 << 20)[0]
    small.write_text(small.read_text() + " ")
    assert training_setup(compose("train", MICRO + [f"model.text_model={copy}"]), "text")["model"] != same["model"]


def test_a_learned_profile_table_counts_by_its_bytes(evaluated_run, tmp_path):
    import shutil

    from kgface.config import compose
    from kgface.train import training_setup

    learned = evaluated_run / "evaluation" / "learned_profiles.json"
    copy = tmp_path / "learned_profiles.json"
    shutil.copy(learned, copy)
    setups = [training_setup(compose("train", MICRO + ["profile.source=blend", f"profile.learned={p}"]), "kg")
              for p in (learned, copy)]
    assert setups[0] == setups[1] != training_setup(compose("train", MICRO), "kg")
    data = json.loads(copy.read_text())
    entry = next(iter(data["diseases"].values()))["phenotypes"][0]
    entry["learned_frequency"] = 1.0 - float(entry["learned_frequency"])  # another table under the same name
    copy.write_text(json.dumps(data))
    changed = training_setup(compose("train", MICRO + ["profile.source=blend", f"profile.learned={copy}"]), "kg")
    assert changed["profile"] != setups[0]["profile"]
    blend = training_setup(compose("train", MICRO + ["profile.source=blend", "profile.blend=0.2",
                                                     f"profile.learned={learned}"]), "kg")
    assert blend["profile"] != setups[0]["profile"]
    entry["learned_frequency"] = 80  # meant as 80%: it was clipped to 1.0 in silence
    copy.write_text(json.dumps(data))
    from kgface.errors import UserError
    from kgface.runtime import learned_table

    with pytest.raises(UserError, match=r"has learned_frequency 80; frequencies lie in \[0, 1\]"):
        learned_table(compose("train", MICRO + ["profile.source=learned", f"profile.learned={copy}"]))


def test_a_rerun_killed_while_saving_leaves_no_generator_to_load(evaluated_run, tmp_path, monkeypatch):
    """A rerun into a finished folder (trainer.resume=latest) removes the last generator's files before it trains:
    killed between model/ and the adapter, the folder is refused as unfinished instead of loading the new UNet
    with the old adapter and encoder under the new config.yaml."""
    import shutil
    from pathlib import Path

    from kgface.diffusion import adapter
    from kgface.diffusion.run_loading import RunError, load_run
    from kgface.train import main

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    load_run(run)  # a finished run loads
    assert (run / "evaluator").is_dir() and (run / "evaluation" / "report.md").is_file()
    (run / "conditioning_profiles.json").write_text("[]")  # as a profile.source=learned run leaves it

    real = adapter.save_kg_adapter

    def killed(unet, folder, *args, **kwargs):  # model/ saves the adapter apart on its way: only the run's one dies
        if Path(folder) == run:
            raise KeyboardInterrupt
        return real(unet, folder, *args, **kwargs)

    monkeypatch.setattr(adapter, "save_kg_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        main(list(MICRO) + ["trainer.resume=latest", "trainer.steps=6", f"hydra.run.dir={run}"])
    assert (run / "model").is_dir() and not (run / "adapter.safetensors").exists()  # the new UNet, no adapter
    with pytest.raises(RunError, match="did not finish"):
        load_run(run)
    # nor does it keep the last run's outputs this one (evaluate=false, profile.source=kg) does not rewrite
    assert not any((run / n).exists() for n in ("evaluator", "conditioning_profiles.json", "samples"))
    assert sorted(p.name for p in (run / "evaluation").iterdir()) == ["learned_profiles.json", "learned_profiles.png"]


def test_experiment_and_model_groups_compose():
    cfg = compose("train", ["model=sdxl", "model.pretrained=/x", "conditioning=class"])
    assert cfg.model.name == "sdxl" and cfg.model.resolution == 1024 and cfg.conditioning == "class"
    # one token count: model.num_tokens; an encoder.num_tokens override would have been ignored, so it is refused
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="encoder.num_tokens"):
        compose("train", ["encoder.num_tokens=16"])


def test_the_learning_rate_follows_the_model_unless_set():
    # tiny trains a UNet from scratch (2e-3), a pretrained base trains LoRA (1e-4); the benchmark keeps its measured 3e-4
    assert compose("train", []).trainer.lr == 2e-3
    assert compose("train", ["model=sd15", "model.pretrained=/x"]).trainer.lr == 1e-4
    assert compose("train", ["experiment=benchmark"]).trainer.lr == 3e-4
    assert compose("train", ["model=sd15", "model.pretrained=/x", "trainer.lr=5e-4"]).trainer.lr == 5e-4


def test_baselines_experiment_trains_each_conditioning(tmp_path):
    from kgface.train import main

    out = tmp_path / "run"
    (out / "model" / "unet").mkdir(parents=True)  # a single run's generator left in the folder: run=OUT loaded it
    (out / "adapter.json").write_text("{}")
    args = MICRO + MICRO_EVALUATOR + ["experiment=baselines", "trainer.steps=2", "trainer.checkpoint_every=2",
                                      "trainer.atlas_share=0.5", "trainer.observed_phenotypes=true",
                                      f"hydra.run.dir={out}"]
    main(args)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"kg", "text", "class", "kg_text", "kg_shuffled"}
    assert not (out / "model").exists() and not (out / "adapter.json").exists()
    # class tokens cannot use the atlas
    for mode, n in {"kg": 8, "text": 8, "kg_text": 8, "kg_shuffled": 8, "class": 0}.items():
        assert metrics["baselines"][mode]["train"]["atlas_images"] == n, mode
        # nor observed phenotype sets; the control trains on the images' true sets and draws from shuffled profiles
        assert (metrics["baselines"][mode]["train"]["observed_phenotype_sets"] > 1) == (mode != "class"), mode
    assert "real_top1" in metrics["evaluator"]  # the instrument is measured once, beside the baselines
    learned = [m for m in ("kg", "text", "class", "kg_text", "kg_shuffled")
               if (out / m / "evaluation" / "learned_profiles.json").exists()]
    assert learned == ["kg"]  # and so are the profiles learned from the real test faces (its first conditioning)
    generation = [k for k in REQUIRED_KEYS if not k.startswith(("evaluator.", "transform.", "controls.", "vae_"))]
    assert len(generation) == 10
    for mode in ("kg", "text", "kg_text", "kg_shuffled", "class"):  # the same generation keys per conditioning
        lost = [k for k in generation if not _has(metrics["baselines"][mode], k)]
        assert lost == (["generation.heldout_top1"] if mode == "class" else []), mode  # class: no unseen disease
    # each generator's checkpoint resumes under its own name (the control's was recorded as kg, so a killed
    # baselines rerun with trainer.resume=latest was refused before anything trained)
    from kgface.diffusion.trainer import resume_checkpoint
    from kgface.train import trainer_settings

    again = compose("train", args + ["trainer.resume=latest"])
    for mode in ("kg", "kg_shuffled", "text"):
        ckpt = resume_checkpoint(out / mode, trainer_settings(again, mode))
        assert ckpt is not None and ckpt.name == "step-0000002", mode
        assert json.loads((ckpt / "state.json").read_text())["setup"]["conditioning"] == mode
    shuffled = json.loads((out / "kg_shuffled" / "shuffled_profiles.json").read_text())
    for mode in ("kg", "kg_shuffled"):  # the control trains and draws as kg, but its report says what it is
        report = (out / mode / "evaluation" / "report.md").read_text()
        assert f"kgface evaluation ({mode})" in report and f"conditioning={mode};" in report
    truth = {p["disease_id"]: p for p in json.loads((out / "profiles.json").read_text())["profiles"]}
    for p in shuffled:  # the control's KG: same diseases, every one with another disease's phenotypes
        if p["disease_id"] != "healthy":
            assert p["phenotypes"] != truth[p["disease_id"]]["phenotypes"], p["disease_id"]
    assert (out / "kg" / "encoder" / "model.safetensors").exists()
    assert (out / "kg_text" / "encoder" / "model.safetensors").exists()
    assert (out / "kg_text" / "adapter.safetensors").exists()  # the prompt + the KG branch
    assert (out / "class" / "class_tokens.safetensors").exists()
    assert not (out / "text" / "adapter.safetensors").exists()  # text conditioning has no KG branch
    from kgface.data.manifest import read_manifest

    cls, _ = read_manifest(out / "class" / "samples" / "manifest.csv")
    # KG tokens against each other conditioning, from each run's counts (class tokens: no held-out draw)
    comparison = metrics["baselines_comparison"]
    assert comparison["reference"] == "kg" and set(comparison["modes"]) == {"text", "class", "kg_text", "kg_shuffled"}
    assert set(comparison["modes"]["text"]) == {"heldout_top1", "seen_disease_top1"}
    assert set(comparison["modes"]["class"]) == {"seen_disease_top1"}
    held = comparison["modes"]["text"]["heldout_top1"]
    kg, text = metrics["baselines"]["kg"]["generation"], metrics["baselines"]["text"]["generation"]
    assert held["counts"] == [round(kg["heldout_top1"] * kg["heldout_n"]), kg["heldout_n"],
                              round(text["heldout_top1"] * text["heldout_n"]), text["heldout_n"]]
    from kgface.evaluation.intervals import compare_proportions

    assert held["p_greater"] == pytest.approx(compare_proportions(*held["counts"])["p_greater"], rel=1e-3)
    assert "## `kg` against the other conditionings" in (out / "report.md").read_text()
    # the paired test, recomputed from both runs' per-image scores (same requests, same noise)
    import pandas as pd

    from kgface.evaluation.intervals import paired_comparison

    for key in ("heldout", "seen_disease"):
        hits = {}
        for mode in ("kg", "text"):
            g = pd.read_csv(out / mode / "evaluation" / "scores_generated.csv", dtype=str, keep_default_na=False)
            g = g[g["group"] == key].sort_values(["requested_disease", "requested_stage", "seed"])
            assert len(g) == metrics["baselines"][mode]["generation"][f"{key}_n"] > 0
            hits[mode] = list(g["pred_disease"] == g["requested_disease"])
        want = paired_comparison(hits["kg"], hits["text"])
        got = comparison["modes"]["text"][f"{key}_top1"]["paired"]
        assert got == {**want, "p_greater": pytest.approx(want["p_greater"], rel=1e-3)}, key
    assert "ORPHA:648" not in set(cls["disease"])  # class conditioning cannot draw the held-out disease


def test_atlas_share_observed_sets_and_marks_need_the_phantom_and_sane_values(tmp_path, capsys):
    from kgface.train import main

    for bad, word in (["data.atlas.faces=0", "trainer.atlas_share=0.5"], "data.atlas.faces"), \
            (["trainer.atlas_share=1.0"], "[0, 1)"), \
            (["data.name=folder", "trainer.observed_phenotypes=true"], "trainer.observed_phenotypes"), \
            (["data.name=folder", "trainer.mark_weight=10"], "stage-0 twin"), \
            (["trainer.mark_weight=-2"], "trainer.mark_weight=-2.0: use a weight >= 0"), \
            (["trainer.mark_weight=ten"], "trainer.mark_weight=ten: not a number"), \
            (["trainer.atlas_share=10%"], "trainer.atlas_share=10%: not a number"), \
            (["trainer.lr=true"], "trainer.lr=True: not a number"), \
            (["model.vae_train.adv_weight=-1"], "model.vae_train.adv_weight=-1"):
        with pytest.raises(SystemExit) as info:
            main(MICRO + bad + [f"hydra.run.dir={tmp_path / 'x'}"])
        assert info.value.code == 2 and word in capsys.readouterr().err
        assert not (tmp_path / "x" / "profiles.json").exists()


def test_the_shuffled_control_needs_two_diseases_however_the_panel_is_written():
    from kgface.config import compose
    from kgface.errors import UserError
    from kgface.run_checks import preflight

    for panel in ("kg.panel=ORPHA:870", "kg.panel=[ORPHA:870,healthy]"):  # one id: a panel of one, not its letters
        with pytest.raises(UserError, match=r"baselines=kg_shuffled needs at least 2 diseases .* lists (1|2)\)"):
            preflight(compose("train", ["baselines=[kg,kg_shuffled]", "data.diseases=null", panel]))


def test_preflight_reads_the_atlas_settings(monkeypatch, caplog, tmp_path):
    from kgface.config import compose
    from kgface.errors import UserError
    from kgface.run_checks import preflight

    preflight(compose("train", MICRO + ["data.atlas=null"]))  # no atlas at all: fine
    # a relative text model is recorded absolute: kgface.generate reloads the encoder from any directory
    for folder in (tmp_path / "models" / "minilm", tmp_path / "m"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose("train", MICRO + ["encoder.text_model=models/minilm", "model.text_model='~/m'"])
    preflight(cfg)
    assert cfg.encoder.text_model == str(Path.cwd() / "models" / "minilm")
    assert cfg.model.text_model == str(Path.home() / "m")
    # a text model path that does not exist: before the data and the VAE, naming its own key
    with pytest.raises(UserError, match=r"^model.text_model: .*/no/such/minilm does not exist; set model.text_model"):
        preflight(compose("train", MICRO + ["model.text_model=/no/such/minilm"]))
    # the encoder's values, by building it once (they failed after the data, the VAE and the evaluator)
    for override, says in (("encoder.tokens=phenotype", "encoder.tokens must be one of"),
                           ("encoder.conv=gat", "encoder.conv must be one of"),
                           ("encoder.heads=3", r"encoder.hidden \(32\) must be divisible by encoder.heads \(3\)"),
                           ("encoder.disease_text=names", "encoder.disease_text must be one of"),
                           ("encoder.unknown_frequency=50", "encoder.unknown_frequency=50: a share in"),
                           ("encoder.unknown_frequency=nan", "encoder.unknown_frequency=nan: not a finite number"),
                           ("model.num_tokens=0", "model.num_tokens=0: a whole number >= 1")):
        with pytest.raises(UserError, match=rf"^{says}"):
            preflight(compose("train", MICRO + [override]))
    # ... and these, found at step 0 or after the VAE: an overflowing step seed, a branch trained at scale 0 (no
    # gradient: tokens that change nothing), a UNet that attends to nothing, text models of another width
    for override, says in (("seed=20261207153000", r"seed=20261207153000: at most 2\^44 - 1"),
                           ("model.adapter_scale=0", "model.adapter_scale=0 trains nothing of the token branch"),
                           ("model.tiny.unet_attention_levels=[false,false]",
                            r"model.tiny.unet_attention_levels=\[False, False\]: at least one level"),
                           ("+model.tiny.cross_attention_dim=512",
                            r"model.text_model gives 384-d token states, the tiny UNet attends to 512-d ones"),
                           ("+encoder.in_dim=768", "encoder.text_model=.* gives 384-d text vectors but the KG "
                                                   "encoder reads 768-d ones: add \\+encoder.in_dim=384")):
        with pytest.raises(UserError, match=rf"^{says}"):
            preflight(compose("train", MICRO + [override]))
    preflight(compose("train", MICRO + ["conditioning=text", "model.adapter_scale=0"]))  # no token branch to train
    preflight(compose("train", MICRO + ["seed=17592186044415"]))
    import torch

    before = torch.random.get_rng_state()
    preflight(compose("train", MICRO))
    assert torch.equal(torch.random.get_rng_state(), before)  # the seed stream a run draws from is untouched
    # the probe's min_stage: 2.5 was truncated to 2 and true read as 1, after the data and the VAE
    for bad, says in (("2.5", "2.5: a whole stage from 0 to 3"), ("true", "True: not a number"),
                      ("abc", "abc: not a number")):
        with pytest.raises(UserError, match=rf"^evaluator.probe.min_stage={says}"):
            preflight(compose("train", MICRO + ["evaluate=true", f"evaluator.probe.min_stage={bad}"]))
    preflight(compose("train", MICRO + ["evaluate=true", "evaluator.probe.min_stage=3"]))
    # the LLM settings are checked before the run folder is written (describe did, train did not)
    with pytest.raises(UserError, match=r"^llm.model is not set"):
        preflight(compose("train", MICRO + ["llm=openai"]))
    # one explicit checkpoint for several conditionings: each would load the same weights (kg's into the control)
    with pytest.raises(UserError, match=r"^trainer.resume=x/step-0000500 with baselines of 2 conditionings"):
        preflight(compose("train", MICRO + ["experiment=baselines", "baselines=[kg,kg_shuffled]",
                                            "trainer.resume=x/step-0000500"]))
    preflight(compose("train", MICRO + ["experiment=baselines", "baselines=[kg,kg_shuffled]", "trainer.resume=latest"]))
    with pytest.raises(UserError, match=r"^baselines=kg_shuffled needs at least 2 diseases"):  # before any training
        preflight(compose("train", MICRO + ["experiment=baselines", "baselines=[kg,kg_shuffled]",
                                            "data.diseases=[MONDO:0011438,healthy]"]))
    with pytest.raises(UserError, match=r"^baselines=kg_shuffled needs at least 2 diseases .* lists 1\)"):
        preflight(compose("train", MICRO + ["experiment=baselines", "baselines=[kg,kg_shuffled]",
                                            "data.diseases=MONDO:0011438"]))  # one id, not its 13 letters
    for bad, words in (("trainer.mixed_precision=fp8", "trainer.mixed_precision=fp8 is unknown"),
                       ("trainer.log_every=0", "trainer.log_every=0: a whole number >= 1"),
                       ("trainer.grad_accum=0", "trainer.grad_accum=0: a whole number >= 1"),
                       # null where the loop casts the key: a TypeError naming nothing, after data, VAE, evaluator
                       ("trainer.warmup_steps=null", "trainer.warmup_steps=None: a whole number >= 0"),
                       ("trainer.keep_checkpoints=null", "trainer.keep_checkpoints=None: a whole number >= 0"),
                       ("trainer.batch_size=null", "trainer.batch_size=None: a whole number >= 1"),
                       ("trainer.weight_decay=null", "trainer.weight_decay=null: a number >= 0"),
                       ("model.adapter_scale=null", "model.adapter_scale=None: not a number"),
                       ("model.adapter_scale=nan", "model.adapter_scale=nan: not a finite number"),
                       # the samples are drawn after training: these failed after it, with a traceback
                       ("model.sample.steps=0", "model.sample.steps=0: a whole number >= 1"),
                       ("model.sample.guidance=lots", "model.sample.guidance=lots: not a number"),
                       ("samples.per_cell=0", "samples.per_cell=0: a whole number >= 1"),
                       ("samples.control_seeds=-1", "samples.control_seeds=-1: a whole number >= 0"),
                       ("samples.transform_strength=1.5", "samples.transform_strength=1.5: an SDEdit strength"),
                       # one seed per run and one token count for encoder and adapter: a copy's override was replaced
                       ("+trainer.seed=3", "trainer.seed=3 is not read: the run takes it from seed (0)"),
                       ("+encoder.num_tokens=5", "encoder.num_tokens=5 is not read: the run takes it from model.num"),
                       ("encoder.out_dim=256", "encoder.out_dim=256 is not read: the KG tokens take the UNet's"),
                       # a typo trained with the default, silently (from_pretrained refuses unknown keys)
                       ("+encoder.hiden=512", "encoder.hiden is not a setting of the KG encoder; use one of"),
                       # guidance dropout's shares are disjoint slices of one draw: past 1 they would overlap
                       ("trainer.cfg_drop_text=-0.1", "trainer.cfg_drop_text=-0.1: a share of the training samples"),
                       ("trainer.age_drop=half", "trainer.age_drop='half': a share of the training samples"),
                       ("trainer.cfg_drop_text=0.9", "trainer.cfg_drop_tokens + cfg_drop_text + cfg_drop_both = 1.05"),
                       # the loop's numbers: steps=0 saved an untrained generator; the others failed with tracebacks
                       ("trainer.steps=0", "trainer.steps=0: a whole number >= 1"),
                       ("trainer.steps=abc", "trainer.steps='abc': a whole number >= 1"),
                       ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1: a whole number >= 0"),
                       ("trainer.lr=abc", "trainer.lr=abc: not a number"),
                       ("trainer.encoder_lr=-1", "trainer.encoder_lr=-1: a learning rate >= 0"),
                       ("+trainer.num_threads=2", "trainer.num_threads=2: set num_threads= instead"),
                       ("trainer.ema_decay=1", "trainer.ema_decay=1: a decay in [0, 1)"),
                       ("num_threads=two", "num_threads='two': a whole number >= 0"),
                       ("seed=x", "seed='x': a whole number >= 0"),
                       # a doubled conditioning trained into the first's folder; a bare name was read letter by letter
                       ("baselines=[kg,kg]", "baselines lists kg twice"),
                       ("baselines=kg", "baselines=kg: a list of conditionings")):
        with pytest.raises(UserError, match="^" + re.escape(words)):
            preflight(compose("train", MICRO + [bad]))
    with pytest.raises(UserError, match="^trainer.lr, encoder_lr and adapter_lr are all 0: nothing would train"):
        preflight(compose("train", MICRO + ["trainer.lr=0", "trainer.encoder_lr=0"]))
    preflight(compose("train", MICRO + ["trainer.lr=0", "trainer.adapter_lr=1e-3"]))  # the adapter alone: fine
    import torch

    if not torch.cuda.is_available():  # accelerate would quietly train fp32 under a config saying fp16
        with pytest.raises(UserError, match=r"^trainer.mixed_precision=fp16 needs a CUDA GPU"):
            preflight(compose("train", MICRO + ["trainer.mixed_precision=fp16"]))
    with pytest.raises(UserError, match=r"^llm.max_attempts=0 must be >= 1"):
        preflight(compose("train", MICRO + ["llm=openai", "llm.model=m", "llm.max_attempts=0"]))
    for bad in ("-1", "abc"):  # the sampler runs after training: refused before it
        with pytest.raises(UserError, match=r"^model.sample.eta="):
            preflight(compose("train", MICRO + [f"model.sample.eta={bad}"]))
    with pytest.raises(UserError, match=r"data.atlas.per_face must be"):
        preflight(compose("train", MICRO + ["data.atlas.per_face=[5,1]"]))
    preflight(compose("train", MICRO + ["model.vae_train=null"]))  # null: the defaults
    with pytest.raises(UserError, match=r"needs images of at least 12 px .*model.vae_train.adv_weight=0"):
        preflight(compose("train", MICRO + ["model.vae_train.adv_weight=0.5", "data.size=8",
                                            "model.tiny.image_size=8"]))
    with pytest.raises(UserError, match=r"data.size=64 but model.tiny.image_size is 32"):
        preflight(compose("train", MICRO + ["data.size=64"]))
    with pytest.raises(UserError, match=r"data.atlas must be a mapping"):
        preflight(compose("train", MICRO + ["data.atlas=5"]))
    with pytest.raises(UserError, match=r"face_identity='maybe': use one of auto, dlib, none"):
        preflight(compose("train", MICRO + ["evaluate=true", "face_identity=maybe"]))
    with pytest.raises(UserError, match=r"^evaluator.vision.tower='vit': expected one of open_clip, cnn$"):
        preflight(compose("train", MICRO + ["evaluate=true", "evaluator.vision.tower=vit"]))
    preflight(compose("train", MICRO + ["evaluate=true", "evaluator.vision.tower=cnn"]))
    with pytest.raises(UserError, match=r"^evaluator.phenotype_heads=both: use all, atlas or zero_shot$"):
        preflight(compose("train", MICRO + ["evaluator.phenotype_heads=both"]))
    preflight(compose("train", MICRO + ["evaluate=true", "evaluator.phenotype_heads=zero_shot", "data.atlas=null"]))
    # an evaluator.* key no code reads keyed another cache entry: a refit of the CLIP that read the defaults
    with pytest.raises(UserError, match=r"^evaluator.train.class_wieght is not a setting of evaluator=tiny_clip; "
                                        r"known: train.steps, "):
        preflight(compose("train", MICRO + ["+evaluator.train.class_wieght=0.5"]))
    with pytest.raises(UserError, match=r"^evaluator.treshold is not a setting of evaluator=tiny_clip; known: name"):
        preflight(compose("train", MICRO + ["+evaluator.treshold=0.4"]))
    with pytest.raises(UserError, match=r"^evaluator.train is not a setting of evaluator=openclip"):
        preflight(compose("train", MICRO + ["evaluator=openclip", "+evaluator.train.steps=5"]))
    preflight(compose("train", MICRO + ["+evaluator.train.class_weight=0.5"]))  # documented, not in the file
    # refused here, before a rerun resets the run folder (they came from the data and KG builders, after it)
    for override, words in (("model.tiny.unet_heads=4", "model.tiny.unet_heads=4: a list, one entry per block"),
                            ("model.tiny.norm_num_groups=null", "model.tiny.norm_num_groups=null: give a value"),
                            ("model.tiny.vae_block_out_channels=[8,16]",
                             "model.tiny.vae_block_out_channels=[8, 16]: each a whole number divisible by "
                             "model.tiny.norm_num_groups=16"),
                            ("+data.per_clas=10", "data=phantom: unknown settings ['data.per_clas']"),
                            ("data.seed=-1", "data.seed must be an integer >= 0, got -1"),
                            ("kg.path=/x.ttl", "kg.path=/x.ttl is not read by kg=hpo"),
                            ("kg.features=/f.csv", "kg.features=/f.csv is read by kg=primekg only")):
        with pytest.raises((UserError, KGError), match="^" + re.escape(words)):
            preflight(compose("train", MICRO + [override]))
    preflight(compose("train", ["experiment=benchmark"]))  # every shipped config holds known keys only
    with pytest.raises(UserError, match=r"zero_terminal_snr=true needs model.schedule.prediction_type=v_prediction"):
        preflight(compose("train", MICRO + ["model.schedule.zero_terminal_snr=true"]))
    with pytest.raises(UserError, match=r"^model.schedule.spacing is unknown"):
        preflight(compose("train", MICRO + ["+model.schedule.spacing=trailing"]))
    v_recipe = MICRO + ["model.schedule.prediction_type=v_prediction", "model.schedule.zero_terminal_snr=true",
                        "model.schedule.timestep_spacing=trailing"]
    with caplog.at_level(logging.WARNING, logger="kgface.run_checks"):
        preflight(compose("train", v_recipe + ["trainer.lr=1e-3"]))
        assert not [r for r in caplog.records if r.name == "kgface.run_checks"]
        preflight(compose("train", v_recipe))  # the default model's rate, 2e-3: measured to diverge with v
    assert [r.getMessage() for r in caplog.records if r.name == "kgface.run_checks"] == [
        "model.schedule: v_prediction with zero_terminal_snr at trainer.lr=0.002: on the default tiny model at 2e-3 "
        "the loss jumped at step ~200 and the samples held no faces, where trainer.lr=1e-3 trained; consider "
        "trainer.lr=1e-3 or lower"]
    with pytest.raises(UserError, match=r"phenotype_heads=atlas needs a phenotype atlas.*or evaluator.phenotype_heads"):
        preflight(compose("train", MICRO + ["evaluate=true", "evaluator.phenotype_heads=atlas", "data.atlas=null"]))
    monkeypatch.setenv("WORLD_SIZE", "2")  # what a multi-process launch sets: refused before any data is built
    with pytest.raises(UserError, match=r"WORLD_SIZE=2: kgface trains on one device per run"):
        preflight(compose("train", MICRO))


def test_shuffled_edges_is_a_seeded_derangement_of_the_phenotype_sets():
    from kgface.kg.profiles import FacialProfile, Phenotype, healthy_profile
    from kgface.diffusion.conditioning import shuffled_edges

    def prof(i):
        return FacialProfile(f"D:{i}", f"disease {i}", "hpo",
                             [Phenotype(hpo_id=f"HP:{i:07d}", name=f"p{i}", region="eyes", visual="x", frequency=0.5)])

    profiles = [prof(i) for i in range(5)] + [healthy_profile("hpo")]
    a, b = shuffled_edges(profiles, 0), shuffled_edges(profiles, 0)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]  # seeded
    assert [p.disease_id for p in a] == [p.disease_id for p in profiles]
    moved = [p.phenotypes[0].hpo_id for p in a[:5]]
    assert sorted(moved) == sorted(p.phenotypes[0].hpo_id for p in profiles[:5])  # a permutation...
    assert all(m != p.phenotypes[0].hpo_id for m, p in zip(moved, profiles[:5]))  # ...with no fixed point
    assert a[5].healthy and a[5].phenotypes == []
    from kgface.errors import UserError

    with pytest.raises(UserError, match=r"kg_shuffled control needs at least 2 diseases"):  # it would be kg itself
        shuffled_edges([prof(0), healthy_profile("hpo")], 0)


def test_chance_rate_of_change_of_two_label_sets():
    from kgface.run_measure import chance_changed

    assert chance_changed(["a"] * 4, ["a"] * 4) == 0.0  # both always "a": independent draws never differ
    assert chance_changed(["a"] * 4, ["b"] * 4) == 1.0
    assert abs(chance_changed(["a", "b"] * 2, ["a", "b", "b", "a"]) - 0.5) < 1e-9
    assert abs(chance_changed(["a", "a", "a", "b"], ["a", "b", "c", "d"]) - (1 - 0.75 * 0.25 - 0.25 * 0.25)) < 1e-9
