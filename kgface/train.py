"""`python -m kgface.train` — the main job (Hydra overrides; `accelerate launch -m kgface.train ...` on GPUs).

The default run is the embedded benchmark, end to end on a 2-core CPU:
profiles -> descriptions -> phantom data -> VAE (cached) -> latents -> KG encoder + adapter + UNet training ->
samples (diseases x stages, held-out diseases too) -> evaluation (when the evaluator is available) -> report.
Everything lands under the Hydra run directory (layout in docs/training.md); later commands take it as `run=OUT`.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .cache import atomic_path, remove_path, write_json_atomic, write_text_atomic
from .config import container, entry, heldout_diseases
from .run_checks import atlas_share_of, mark_weight_of, preflight
from .run_files import check_train_output_dir
from .run_measure import draw_and_measure, validation_grids
from .run_report import plot_loss, write_run_report
from .runtime import KG_FILE_KEYS, make_cache, profile_source


def build_conditioning(cfg: DictConfig, backbone, profiles, cache, mode: str | None = None, full_prompts=(),
                       descriptions=None):
    """The conditioner for `mode` (default cfg.conditioning) over the training profiles (encoder from cfg.encoder);
    full_prompts: indices of observed-set and phenotype-atlas profiles (their text prompts name every phenotype);
    descriptions: the stage sentences of the language layer (kgface.prompts) the other text prompts read."""
    from .diffusion.conditioning import KG_MODES, Conditioner
    from .diffusion.phenotype_sets import observed_phenotypes_of

    mode = mode or cfg.conditioning
    num_tokens = int(cfg.model.get("num_tokens", 8))
    encoder = builder = None
    if mode in KG_MODES:
        from .encoders import KGEncoder

        enc_cfg = {**container(cfg.encoder), "num_tokens": num_tokens}
        torch.manual_seed(int(cfg.seed))
        encoder = KGEncoder.from_config(enc_cfg, out_dim=backbone.cross_attention_dim)
        builder = encoder.graph_builder(cache=cache)
    cond = Conditioner(mode, profiles, backbone, encoder, builder, num_tokens=num_tokens, full_prompts=full_prompts,
                       phenotype_draws=observed_phenotypes_of(cfg), descriptions=descriptions,
                       unknown_frequency=float(cfg.data.get("unknown_frequency", 0.5)))
    if builder is not None:
        builder.warm(profiles)
        from .encoders.text import check_sentence_width

        # e.g. an mpnet folder (768-d), where preflight could not tell from its files
        check_sentence_width(cfg.encoder.get("text_model"), builder.features.dim, int(encoder.config["in_dim"]))
    return cond


def generated_scores(out_dir: Path, modes: list[str]) -> dict:
    """{mode: OUT/<mode>/evaluation/scores_generated.csv's request columns, as strings} for the paired comparison."""
    import pandas as pd

    from .evaluation.intervals import REQUEST
    from .evaluation.report import SCORE_FILES

    found = {}
    for mode in modes:
        path = out_dir / mode / "evaluation" / SCORE_FILES["generated"]
        if path.is_file():
            found[mode] = pd.read_csv(path, usecols=lambda c: c in {"group", "pred_disease", *REQUEST}, dtype=str,
                                      keep_default_na=False)
    return found


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .data.build import phantom_dataset
    from .dataset import panel_profiles
    from .prompts import describe_profiles, save_descriptions

    from .diffusion.trainer import resume_checkpoint

    preflight(cfg)  # settings that cannot work fail now, not after the data, VAE and evaluator are built
    check_train_output_dir(out_dir)  # another job's folder is not reset below
    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    generator_dirs = [out_dir] if len(modes) == 1 else [out_dir / m for m in modes]
    # ... and a rerun that cannot resume, before it removes anything of the last run. A folder continues its own
    # training only from its own checkpoints (a trainer.resume=PATH elsewhere does not make its grids and logs ours)
    resuming = {}
    for folder, mode in zip(generator_dirs, modes):
        ckpt = resume_checkpoint(folder, trainer_settings(cfg, mode))
        resuming[folder] = ckpt is not None and ckpt.resolve().parent == (folder / "checkpoints").resolve()
    t0 = time.perf_counter()
    if int(cfg.get("num_threads") or 0) > 0:
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    # a rerun into a finished folder (trainer.resume=latest, the same hydra.run.dir): until this run writes its own
    # metrics.json, written last, the folder must not pass for a finished run
    (out_dir / "metrics.json").unlink(missing_ok=True)
    # ... nor lend it the last run's outputs this one may not write: learned conditioning profiles (profile.source
    # may be kg now), its evaluator (evaluate may be false)
    for name in ("conditioning_profiles.json", "evaluator", "data.json"):
        remove_path(out_dir / name)
    # ... nor any generator of the last run, before the minutes of data, VAE and evaluator: one killed meanwhile
    # left the old generator and its samples beside the new config.yaml, loadable by `run=OUT` (a baselines run
    # resets each OUT/<mode> and OUT itself, where a single run's generator would be loaded under this config)
    for folder in [out_dir] + (generator_dirs if len(modes) > 1 else []):
        reset_generator_outputs(folder, resuming.get(folder, False))
    write_text_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    cache = make_cache(cfg)
    timings, metrics = {}, {}

    def lap(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    # 1. knowledge -> profiles (the panel + healthy), descriptions
    profiles = panel_profiles(cfg, cache)
    write_json_atomic(out_dir / "profiles.json", {"schema": "kgface.profiles/1", "kg": cfg.kg.source,
                                                  "profiles": [p.to_dict() for p in profiles]})
    conditioned = profile_source(cfg, profiles)  # profile.source=learned|blend: frequencies learned from images
    if conditioned is not profiles and any(a.to_dict() != b.to_dict() for a, b in zip(conditioned, profiles)):
        write_json_atomic(out_dir / "conditioning_profiles.json", [p.to_dict() for p in conditioned])
    # the profiles the generator is conditioned on are the ones described: the text prompts read these sentences
    descriptions = describe_profiles(conditioned, container(cfg.llm), cache)
    save_descriptions(out_dir / "descriptions.json", descriptions)
    from .diffusion.conditioning import TEXT_MODES

    for folder, mode in zip(generator_dirs, modes):
        if mode in TEXT_MODES and cfg.trainer.get("resume"):
            # the sentences text prompts read are known now: a resume whose LLM wrote others fails here, not after
            # the data, VAE and evaluator (the last run's outputs are reset by now, its checkpoints kept; the
            # checkpoint is compared once more when its generator trains)
            resume_checkpoint(folder, trainer_settings(cfg, mode, descriptions))
    lap("profiles_s")

    # 2. data
    heldout = heldout_diseases(cfg)
    if cfg.data.name == "phantom":  # its held-out diseases are checked against the panel when it is built
        manifest = phantom_dataset(cfg, profiles, cache, progress=cfg.progress) / "manifest.csv"
    else:  # real photos: preprocessed into the run directory (their labels must use the panel's KG ids)
        from .data.real import build_real_dataset

        # its heldout column is data.heldout's (a source manifest holding out others is refused)
        manifest = build_real_dataset(cfg.data, out_dir / "data").manifest
    # prompts_read_descriptions: this run's text prompts were trained on descriptions.json (runs before 2026-12-01
    # wrote the file but trained on the template's sentences; generation must then use the template too)
    write_json_atomic(out_dir / "data.json", {"manifest": str(Path(manifest).resolve()), "heldout": sorted(heldout),
                                              "prompts_read_descriptions": True})
    lap("data_s")

    # 3. VAE (tiny: trained once per dataset, cached)
    vae = None
    if cfg.model.name == "tiny":
        from .diffusion.vae import cached_vae

        vae, metrics["vae"], _ = cached_vae(manifest, container(cfg.model.tiny), container(cfg.model.vae_train),
                                            cache, progress=cfg.progress, heldout=heldout)
    lap("vae_s")

    # 4. the evaluator: trained on real images of every disease (held-out ones too), never on generated ones,
    #    before the generator; cached by data and config
    evaluator = None
    if cfg.evaluate:
        from .evaluation import fit_evaluator

        evaluator = fit_evaluator(cfg.evaluator, manifest, profiles, cache, progress=cfg.progress)
        evaluator.save(out_dir / "evaluator")
    lap("evaluator_s")

    # 5-7. the generator, once per conditioning: train, draw, evaluate
    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    for k, mode in enumerate(modes):
        sub = out_dir if len(modes) == 1 else out_dir / mode
        t1 = time.perf_counter()
        result = train_generator(cfg, mode, conditioned, manifest, heldout, vae, cache, sub, evaluator,
                                 measure_real=k == 0, truth=profiles, descriptions=descriptions)
        if len(modes) == 1:
            metrics.update(result)
        else:
            for key in ("evaluator", "vae_ceiling_top1", "vae_ceiling_top1_ci95"):  # the instrument's, measured once
                if key in result:
                    metrics[key] = result.pop(key)
            metrics.setdefault("baselines", {})[mode] = result
        timings[f"generator_{mode}_s"] = time.perf_counter() - t1
    if evaluator is not None and len(modes) > 1 and "kg" in modes:  # is KG conditioning above each other one?
        from .evaluation.intervals import compare_conditionings

        metrics["baselines_comparison"] = compare_conditionings(metrics["baselines"],
                                                                scores=generated_scores(out_dir, modes))

    # 8. report
    metrics["timings"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["timings"]["total_s"] = round(time.perf_counter() - t0, 1)
    metrics["conditioning"] = modes[0] if len(modes) == 1 else modes
    write_run_report(out_dir, metrics, modes)
    write_json_atomic(out_dir / "metrics.json", metrics)  # last, as in the evaluation report: a whole run has it
    cache.record(out_dir)
    print(f"done in {time.perf_counter() - t0:.0f} s: {out_dir / 'report.md'}")
    return metrics


# bump when training_setup hashes differently: an older record then resumes unchecked, with a warning. 3: the
# model's schedule.timestep_spacing left out (the ladder only samples); the kg_shuffled control recorded as
# itself (it trained as kg, so its rerun's resume check refused it). Groups added later (trainer, descriptions) keep
# it: only groups both records hold are compared, so older checkpoints stay checked on the rest
SETUP_VERSION = 3
REGIME_KEYS = ("observed_phenotypes", "atlas_share", "mark_weight")  # trainer.* that change what is learned
# trainer.* that change each step's objective (guidance dropout, the unknown-age share, the loss weighting): their own
# group, so checkpoints written before it was recorded still resume (a group added since is not compared)
OBJECTIVE_KEYS = ("cfg_drop_tokens", "cfg_drop_text", "cfg_drop_both", "age_drop", "min_snr_gamma")


def training_setup(cfg: DictConfig, mode: str) -> dict:
    """What a generator trains on, a hash per config group, recorded in every checkpoint and compared on resume:
    conditioning, seed, data, knowledge graph, encoder (KG conditionings only), profile source, the model (but
    for its sampling settings, rate, gradient checkpointing and base folder path, none of which changes what is
    learned, and which may change between a kill and a resume), the trainer's REGIME_KEYS (what each step is fed;
    class tokens read only mark_weight) and OBJECTIVE_KEYS (what each step minimises); steps, rates and the rest may
    change. Files
    count by what they hold, not by the path they were named by: text models by their files, a learned profile table
    by its bytes and file name (not its folder), a data folder by its absolute path."""
    import os

    from .cache import file_fingerprint, stable_hash
    from .diffusion.conditioning import CONTROL, KG_MODES
    from .runtime import learned_table

    def absolute(value):
        return value if value in (None, "", "???") else os.path.abspath(os.path.expanduser(str(value)))

    data = container(cfg.data) or {}
    data = {**data, **{k: absolute(data[k]) for k in ("root", "path") if k in data}}
    model_cfg = container(cfg.model) or {}
    model = {k: v for k, v in model_cfg.items()
             if k not in ("sample", "lr", "pretrained", "text_model", "gradient_checkpointing")}
    if isinstance(model.get("schedule"), dict):  # the sampler's ladder: training draws every timestep either way
        model["schedule"] = {k: v for k, v in model["schedule"].items() if k != "timestep_spacing"}
    if model_cfg.get("name", "tiny") == "tiny":  # its prompt encoder; a pretrained folder has its own
        model["text_model_files"] = _text_model_files(model_cfg.get("text_model"))
    elif model_cfg.get("pretrained") not in (None, "", "???"):  # the base a LoRA continues: another base is refused
        model["pretrained_files"] = _files_of(model_cfg["pretrained"])
    encoder_cfg = container(cfg.get("encoder")) or {}
    kg_cfg = container(cfg.kg) or {}
    kg = {k: v for k, v in kg_cfg.items() if k not in KG_FILE_KEYS}
    kg["files"] = {k: _files_of(kg_cfg[k]) for k in KG_FILE_KEYS if kg_cfg.get(k) not in (None, "", "???")}
    learned = learned_table(cfg)  # checked in preflight
    profile = {"source": "kg"} if learned is None else {
        "source": learned[0], "blend": learned[2] if learned[0] == "blend" else None,
        "learned": file_fingerprint(Path(str(learned[3])).expanduser())}
    setup = {"version": SETUP_VERSION, "conditioning": str(mode), "seed": int(cfg.seed), "data": stable_hash(data),
             "kg": stable_hash(kg), "profile": stable_hash(profile), "model": stable_hash(model)}
    if mode in KG_MODES or mode == CONTROL:  # text and class tokens never read the encoder's settings
        encoder = {k: v for k, v in encoder_cfg.items() if k != "text_model"}
        encoder["text_model_files"] = _text_model_files(encoder_cfg.get("text_model"))
        setup["encoder"] = stable_hash(encoder)
    trainer = container(cfg.trainer) or {}
    read = REGIME_KEYS if mode != "class" else ("mark_weight",)  # class tokens train without the atlas or sets
    setup["trainer"] = stable_hash({k: trainer.get(k) for k in read})
    # age_drop is drawn only where the loop trains a KG encoder with age groups (the kg_shuffled control trains as kg,
    # ages included); elsewhere it changes nothing and is left out
    ages = (mode in KG_MODES or mode == CONTROL) and int(encoder_cfg.get("age_groups") or 0) > 0
    setup["objective"] = stable_hash({k: trainer.get(k) for k in OBJECTIVE_KEYS if k != "age_drop" or ages})
    # weights files past cache.HASH_LIMIT count by their size alone above: samples of their bytes tell another
    # model of the same size (a base fine-tuned and saved over its folder) apart; a group of its own, so that
    # checkpoints recorded before it resume as they did (the encoder's text model: a group only KG runs hold, as
    # "encoder", so a change of conditioning is not also reported as other weights)
    if model_cfg.get("name", "tiny") == "tiny":
        setup["model_weights"] = stable_hash(_sampled_weights(_text_model_path(model_cfg.get("text_model"))))
    elif model_cfg.get("pretrained") not in (None, "", "???"):
        setup["model_weights"] = stable_hash(_sampled_weights(model_cfg["pretrained"]))
    if mode in KG_MODES or mode == CONTROL:
        setup["encoder_weights"] = stable_hash(_sampled_weights(_text_model_path(encoder_cfg.get("text_model"))))
    return setup


def _sampled_weights(path) -> dict | None:
    """Each file past cache.HASH_LIMIT under `path` by a SHA-256 of 1 MiB at its start, middle and end (weights
    change throughout when a model is fine-tuned; the whole of a 10 GB UNet is not read)."""
    import hashlib

    from . import cache

    if path is None:
        return None
    out = {}
    for name, f in (_listed_files(path) or {}).items():
        size = f.stat().st_size
        if size <= cache.HASH_LIMIT:
            continue
        digest = hashlib.sha256()
        try:
            with open(f, "rb") as handle:
                for offset in (0, size // 2, max(0, size - (1 << 20))):
                    handle.seek(offset)
                    digest.update(handle.read(1 << 20))
        except OSError:  # a file this user cannot read (a shared cache's blob the loader may never open): by size
            digest = None
        out[name] = digest.hexdigest() if digest else None
    return out


def descriptions_digest(descriptions) -> str:
    """What text prompts read of the language layer (each stage's sentence, cited ids, negative prompt): recorded
    with a text conditioning's checkpoints once the run has its descriptions, so a resume whose LLM wrote other
    sentences (another model, a sampled answer not cached) is refused, and one whose model only moved is not."""
    from .cache import stable_hash

    return stable_hash({d: [[s.stage, s.description, list(s.phenotypes), s.negative_prompt] for s in v.stages]
                        for d, v in sorted((descriptions or {}).items())})


def _files_of(path) -> dict | None:
    """A file or folder by its files' names and sizes (small ones by their bytes too), not its path or times (nor
    the name a link resolves to: a Hugging Face snapshot's files are links to blobs named by hash)."""
    from .cache import file_fingerprint

    files = _listed_files(path)
    if files is None:
        return None  # refused where it is read
    return {name: {k: v for k, v in file_fingerprint(f).items() if k not in ("path", "mtime_ns", "name")}
            for name, f in files.items()}


def _listed_files(path) -> dict[str, Path] | None:
    """{name: file} of a file (its name) or a folder (paths relative to it, hidden ones left out, sorted); None
    where there is neither."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return {p.name: p}
    if p.is_dir():
        return {f.relative_to(p).as_posix(): f for f in sorted(p.rglob("*"))
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)}
    return None


def _text_model_files(value) -> dict | None:
    """A text model by its files (name, size; small files by their bytes too), not its path or times: the same
    model copied or reinstalled elsewhere resumes, another model saved under the same folder does not."""
    path = _text_model_path(value)
    return None if path is None else _files_of(path)


def _text_model_path(value) -> Path | None:
    from .encoders.text import TextModelError, resolve_text_model_path

    try:
        return resolve_text_model_path(value)
    except TextModelError:
        return None  # refused where it is loaded


def trainer_settings(cfg: DictConfig, mode: str, descriptions=None) -> dict:
    """The trainer's options for one generator: trainer.*, the run's seed and its training setup; with the run's
    `descriptions`, a text conditioning's setup records the sentences its prompts read (descriptions_digest)."""
    from .diffusion.conditioning import TEXT_MODES

    setup = training_setup(cfg, mode)
    if descriptions is not None and mode in TEXT_MODES:
        setup["descriptions"] = descriptions_digest(descriptions)
    return {**container(cfg.trainer), "seed": int(cfg.seed), "setup": setup}


def reset_generator_outputs(folder: Path, resuming: bool = False) -> None:
    """A rerun into this folder (trainer.resume=latest): the last run's generator files go before this one trains,
    so a half-saved set (a kill between model/ and the adapter) or the old weights under the new config.yaml are
    refused by load_run ("did not finish") rather than read as one generator; its samples, loss curve, shuffled
    profiles and evaluation too (a report would show old figures this run does not redraw), but for
    learned_profiles.json / .png, which profile.learned= may name (learn_and_write keeps them for that reason).
    Checkpoints stay: trainer.resume=latest continues from them. `resuming` (a checkpoint is continued): the
    validation grids drawn before it (samples/val) and the TensorBoard logs stay, the history of the same training;
    a fresh start removes both (its curves would be drawn over the last run's)."""
    from .diffusion.run_loading import GENERATOR_FILES

    for name in (*GENERATOR_FILES, "losses.json", "loss.png", "shuffled_profiles.json", "report.md"):
        remove_path(folder / name)
    if not resuming:
        remove_path(folder / "samples")
        remove_path(folder / "logs")
    elif (folder / "samples").is_dir():
        for path in (folder / "samples").iterdir():
            if path.name != "val":
                remove_path(path)
        if not any((folder / "samples").iterdir()):
            remove_path(folder / "samples")
    if (folder / "evaluation").is_dir():
        for path in (folder / "evaluation").iterdir():
            if not path.name.startswith("learned_profiles."):
                remove_path(path)


def train_generator(cfg: DictConfig, mode: str, profiles, manifest: Path, heldout: set[str], vae, cache,
                    out_dir: Path, evaluator=None, measure_real: bool = True, truth=None, descriptions=None) -> dict:
    """Train one generator (conditioning `mode`) on `profiles`, save it, draw its samples and transformations into
    out_dir, and (with an evaluator) measure them against `truth` (the KG profiles; default `profiles`).
    `descriptions` ({disease_id: StageDescriptions}, the run's descriptions.json): the stage sentences the text
    prompts of conditioning=text|kg_text read (None: the template's)."""
    from .diffusion.adapter import save_kg_adapter
    from .diffusion.backbones import build_backbone, save_model_folder
    from .diffusion.conditioning import CONTROL, shuffled_edges
    from .diffusion.generator import Generator
    from .diffusion.trainer import train
    from .diffusion.phenotype_sets import observed_phenotypes_of
    from .diffusion.training_data import atlas_training_rows, latent_set, observed_training_sets

    out_dir.mkdir(parents=True, exist_ok=True)  # its last generator's files went at the run's start (run)
    torch.manual_seed(int(cfg.seed))
    truth = truth or profiles
    label = mode  # what the report calls it: the control trains and draws as kg
    if mode == CONTROL:  # the KG encoder sees every disease with another disease's phenotypes
        profiles, mode = shuffled_edges(profiles, int(cfg.seed)), "kg"
        write_json_atomic(out_dir / "shuffled_profiles.json", [p.to_dict() for p in profiles])
    backbone = build_backbone(container(cfg.model), vae=vae, num_tokens=int(cfg.model.get("num_tokens", 8)),
                              with_adapter=mode != "text")
    train_profiles = [p for p in profiles if p.disease_id not in heldout]
    share = atlas_share_of(cfg)  # checked in preflight
    # class tokens cannot learn from phenotype-only faces (no class): that baseline trains without the atlas
    atlas = atlas_training_rows(manifest, profiles, cfg.data) if share > 0 and mode != "class" else None
    atlas_profiles = atlas[1] if atlas else []
    # each face conditioned on the phenotypes it shows (class tokens index diseases: that baseline ignores it); the
    # sets come from the images' labels, so the kg_shuffled control trains on true sets and draws from shuffled ones
    observed = observed_training_sets(manifest, [p for p in truth if p.disease_id not in heldout], heldout) \
        if observed_phenotypes_of(cfg) and mode != "class" else None
    extra = (observed[1] if observed else []) + atlas_profiles
    conditioner = build_conditioning(cfg, backbone, train_profiles + extra, cache, mode,
                                     full_prompts=range(len(train_profiles), len(train_profiles) + len(extra)),
                                     descriptions=descriptions)
    data = latent_set(manifest, train_profiles, backbone, heldout, atlas, share, observed,
                      marks=mark_weight_of(cfg) > 0)
    gen = Generator(backbone, conditioner, guidance=float(cfg.model.sample.guidance),
                    steps=int(cfg.model.sample.steps), eta=float(cfg.model.sample.get("eta", 0.0)))
    names = {p.disease_id: p.name + (" (held out)" if p.disease_id in heldout else "") for p in profiles}
    drawable = profiles if mode != "class" else train_profiles  # class tokens cannot draw an unseen disease
    on_validate = validation_grids(cfg, gen, drawable, names, out_dir)
    # recorded under its own name (the control trains as kg, but its checkpoints are the control's: the up-front
    # resume check reads them as such, and a kg run's must not resume them)
    result = train(backbone, conditioner, data, trainer_settings(cfg, label, descriptions), out_dir,
                   progress=cfg.progress, on_validate=on_validate)
    if result["ema"] is not None:
        result["ema"].copy_to()  # the final weights are the EMA weights (checkpoints keep the raw ones)
    recent = result["losses"][-50:]
    metrics = {"train": {"steps": result["steps"], "final_loss": sum(recent) / max(1, len(recent)),
                         "seconds": round(result["seconds"], 1),
                         "train_images": len(data) - (len(atlas[0]) if atlas else 0),
                         "atlas_images": len(atlas[0]) if atlas else 0, "atlas_share": share if atlas else 0.0,
                         "observed_phenotype_sets": len(observed[1]) if observed else 0,
                         "mark_weight": mark_weight_of(cfg),
                         "marked_faces": int((data.marks.flatten(1).amax(1) > 0).sum()) if data.marks is not None
                         else 0}}

    # save: model/, adapter, encoder/ (or the class tokens)
    save_model_folder(backbone, out_dir / "model")
    if mode != "text":
        save_kg_adapter(backbone.unet, out_dir)
    if conditioner.uses_kg:
        conditioner.encoder.save_pretrained(out_dir / "encoder")
    elif mode == "class":
        from safetensors.torch import save_file

        with atomic_path(out_dir / "class_tokens.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in conditioner.class_tokens.state_dict().items()}, str(tmp))
    write_json_atomic(out_dir / "losses.json", result["losses"])
    plot_loss(result["losses"], out_dir / "loss.png")

    # samples: every disease (held-out ones too, except under class conditioning) x stage; transformations
    # the grid's noise follows each disease's place among all the run's profiles: a class run, which skips the
    # held-out diseases, draws the others from the noise every other conditioning draws them from
    metrics.update(draw_and_measure(cfg, gen, truth, drawable, manifest, heldout, names, out_dir, evaluator,
                                    measure_real, mode, trained_on_atlas=bool(atlas),
                                    seed_order=[p.disease_id for p in profiles], label=label))
    return metrics


main = entry("train")(run)

if __name__ == "__main__":
    main()
