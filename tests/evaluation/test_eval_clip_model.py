"""kgface.evaluation.clip_model: caption cuts, the tiny CLIP's losses, and evaluator=openclip models read from local
config files (a BiomedCLIP-like config with a Hugging Face text tower, a timm image tower)."""
import json

import numpy as np
import pytest
import torch

from kgface.data.manifest import read_manifest
from kgface.evaluation import Evaluator, EvaluatorInputError, build_clip, fit_evaluator, load_images
from kgface.errors import UserError


def test_captions_cut_counts_captions_longer_than_the_text_tower():
    from kgface.evaluation.clip_model import captions_cut

    _, tokenizer, _ = build_clip({"name": "tiny_clip", "image_size": 32, "embed_dim": 16,
                                  "vision": {"width": 8, "layers": [1, 1, 1, 1]},
                                  "text": {"width": 16, "heads": 2, "layers": 1, "context_length": 77}})
    short, long = "a photo of a face", "a photo of a face showing " + ", ".join(["ptosis"] * 80)
    assert captions_cut(tokenizer, [short, short, short, long]) == 0.25
    assert captions_cut(tokenizer, [short]) == 0.0 and captions_cut(lambda texts: None, [long]) == 0.0
    # another text.context_length: the tokenizer pads to it (ViT-B-32's 77 did not fit a 160-row position table)
    model, longer, _ = build_clip({"name": "tiny_clip", "image_size": 32, "embed_dim": 16,
                                   "vision": {"width": 8, "layers": [1, 1, 1, 1]},
                                   "text": {"width": 16, "heads": 2, "layers": 1, "context_length": 160}})
    tokens = longer([short, long])
    assert tokens.shape == (2, 160) and model.encode_text(tokens).shape == (2, 16)
    assert captions_cut(longer, [short, long]) == 0.5  # measured against 160 tokens: the long one passes them too


def test_the_clip_presence_loss_leaves_unlabelled_rows_out():
    """The tiny CLIP's auxiliary phenotype term: a NaN presence row (a photo without labels) adds nothing; the loss
    equals the one on the labelled rows alone."""
    from kgface.evaluation.clip_model import AuxiliaryHeads

    torch.manual_seed(0)
    heads = AuxiliaryHeads(8, 3, 4)
    emb, classes = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    presence = torch.randint(0, 2, (5, 4)).float()
    with_photo = presence.clone()
    with_photo[2] = float("nan")
    keep = torch.tensor([True, True, False, True, True])
    term = heads.loss(emb, classes, with_photo, None) - heads.loss(emb, classes, None, None)
    alone = torch.nn.functional.binary_cross_entropy_with_logits(heads.phenotypes(emb[keep]), presence[keep])
    assert torch.isfinite(term) and torch.allclose(term, alone)


def test_auxiliary_loss_leaves_out_faces_without_a_disease():
    from kgface.evaluation.clip_model import AuxiliaryHeads, contrastive_loss

    torch.manual_seed(0)
    aux, emb = AuxiliaryHeads(8, 3, 5), torch.randn(6, 8)
    classes = torch.tensor([0, 1, -1, 2, -1, 0])
    presence = (torch.rand(6, 5) > 0.5).float()
    stages = torch.tensor([1.0, 2.0, float("nan"), 3.0, float("nan"), 0.0])
    known = classes >= 0
    full = aux.loss(emb, classes, presence, stages)
    # disease and stage terms from the 4 labelled faces only; phenotype term from all 6
    part = (torch.nn.functional.cross_entropy(aux.disease(emb[known]), classes[known])
            + torch.nn.functional.binary_cross_entropy_with_logits(aux.phenotypes(emb), presence)
            + torch.nn.functional.mse_loss(aux.stage(emb[known]).squeeze(-1), stages[known]))
    assert torch.isfinite(full) and torch.allclose(full, part)
    only_atlas = aux.loss(emb[~known], classes[~known], presence[~known], stages[~known])
    # a batch of atlas faces alone: the phenotype term only (not a zero left where every term was dropped)
    assert torch.allclose(only_atlas, torch.nn.functional.binary_cross_entropy_with_logits(
        aux.phenotypes(emb[~known]), presence[~known])) and only_atlas > 0
    # two disease-less faces are not partial positives of each other
    img = txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    groups = torch.arange(6)
    a = contrastive_loss(img, txt, torch.tensor(1.0), groups, classes, class_weight=0.5)
    b = contrastive_loss(img, txt, torch.tensor(1.0), groups, torch.tensor([0, 1, 3, 2, 4, 0]), class_weight=0.5)
    assert torch.allclose(a, b)


def _tiny_bert(bert):
    """A Hugging Face BERT's config and tokenizer files (no weights) in a local folder, as BiomedCLIP's text tower."""
    from transformers import BertConfig, BertTokenizer

    bert.mkdir()
    words = ["a", "acne", "face", "healthy", "of", "person", "photo", "stage", "with"]  # the rest read as [UNK]
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(str(bert))
    BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(str(bert))
    return bert


def test_an_openclip_config_file_with_a_local_hugging_face_text_tower(tiny_data, tiny_profiles, session_cache_dir,
                                                                      tmp_path, monkeypatch):
    """BiomedCLIP's layout at a tiny size: an open_clip config JSON whose text tower and tokenizer are a Hugging Face
    BERT saved in a local folder (named relative to the JSON), weights in a local file; nothing is downloaded. A hub
    id instead of a folder is a one-line error; an edited config file is another cache entry."""
    import json

    from safetensors.torch import save_file

    from kgface.cache import Cache
    from kgface.config import compose
    from kgface.evaluation.clip_model import register_config_file

    bert = _tiny_bert(tmp_path / "bert")
    folder = tmp_path / "clip"
    folder.mkdir()
    model_cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                 "head_width": 16},
                 "text_cfg": {"hf_model_name": "../bert", "hf_tokenizer_name": "../bert", "hf_proj_type": "linear",
                              "hf_pooler_type": "cls_pooler", "context_length": 16}}
    config = folder / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    model = build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False)[0]
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    cfg = compose("evaluate", ["evaluator=openclip", f"evaluator.model={config}", f"evaluator.pretrained={weights}"])
    cache = Cache(session_cache_dir)
    # the config file and its text model's files are read (and hashed) once per fit or load, not once per use
    from kgface.evaluation import clip_model

    reads = []

    def counted(model):
        reads.append(model)
        return register_config_file(model)

    with monkeypatch.context() as mp:  # (not undo(): the autouse cache-folder patch shares this monkeypatch)
        mp.setattr(clip_model, "register_config_file", counted)  # every caller reaches it through clip_model
        ev = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
        assert ev.encoder.num_features == 24 and reads == [str(config)]
        cached = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
        assert "cache_entry" not in cached.info and reads == [str(config)] * 2  # the second one: from the cache
    # a name this process never registered is not trusted: the file is read
    assert build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False,
                      registered="kgface-openclip-never")[0].kgface_embed_dim == 24
    saved = ev.save(tmp_path / "ev")
    loaded = Evaluator.load(saved)
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:4]))
    assert np.allclose(loaded.features(images), ev.features(images))
    # another config under the same path (an unrelated key added), or another vocabulary, is another model as far
    # as the heads know: a new cache entry, and the saved evaluator refuses to load
    config.write_text(json.dumps({"model_cfg": {**model_cfg, "quick_gelu": False}}))
    other = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert other.info["cache_entry"] != ev.info.get("cache_entry", "")
    with pytest.raises(EvaluatorInputError, match="not the config its heads were fitted on"):
        Evaluator.load(saved)
    config.write_text(json.dumps({"model_cfg": model_cfg}))
    Evaluator.load(saved)  # the same config again
    # the normalisation its heads read images with is saved and compared (open_clip's table may change under it)
    meta = json.loads((saved / "evaluator.json").read_text())
    assert meta["normalisation"] is None  # this config names none: CLIP's
    (saved / "evaluator.json").write_text(json.dumps({**meta, "normalisation": [[0.5] * 3, [0.5] * 3]}))
    with pytest.raises(EvaluatorInputError, match=r"normalised with \[\[0.5, 0.5, 0.5\], .*fit the evaluator again"):
        Evaluator.load(saved)
    # a folder saved before the record: its heads read CLIP's mean/std; a model normalised otherwise is refused
    (saved / "evaluator.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "normalisation"}))
    Evaluator.load(saved)
    with monkeypatch.context() as mp:
        mp.setattr(clip_model, "model_normalisation", lambda c, registered=None: ([0.5] * 3, [0.5] * 3))
        with pytest.raises(EvaluatorInputError, match=r"normalised with CLIP mean/std, this open_clip gives"):
            Evaluator.load(saved)
    (saved / "evaluator.json").write_text(json.dumps(meta))
    (bert / "vocab.txt").write_text((bert / "vocab.txt").read_text().replace("\nface\n", "\nfaces\n"))
    with pytest.raises(EvaluatorInputError, match="not the config its heads were fitted on"):
        Evaluator.load(saved)
    # another normalisation in the file: another model name (and cache key), and every image read with it
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    halves = build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False)[0]
    assert halves.kgface_norm == ((0.5,) * 3, (0.5,) * 3) and model.kgface_norm is None  # None: CLIP's
    half_name = register_config_file(str(config))
    config.write_text(json.dumps({"model_cfg": model_cfg}))
    assert register_config_file(str(config)) != half_name
    from kgface.evaluation.clip_model import ImageEncoder, to_model_input

    unit = to_model_input(images, 32, ((0.0,) * 3, (1.0,) * 3))  # pixels in [0, 1], resized
    assert torch.allclose(to_model_input(images, 32, halves.kgface_norm), unit * 2 - 1, atol=1e-6)
    halves.load_state_dict(model.state_dict())
    assert not np.allclose(ImageEncoder(halves, 32)(images).numpy(), ImageEncoder(model, 32)(images).numpy())
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 2, "std": [0.5] * 3}}))
    with pytest.raises(UserError, match="preprocess_cfg.mean / std must be three numbers each"):
        register_config_file(str(config))
    # what kgface cannot honour is refused: a timm tower fetched from the hub
    config.write_text(json.dumps({**model_cfg, "vision_cfg": {"timm_model_name": "hf-hub:timm/x", "image_size": 32}}))
    with pytest.raises(UserError, match="timm_model_name=hf-hub:timm/x is fetched"):
        register_config_file(str(config))
    # a hub id would be downloaded by open_clip: refused, naming the key to rewrite
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({**model_cfg, "text_cfg": {**model_cfg["text_cfg"],
                                                         "hf_model_name": "microsoft/BiomedNLP-BiomedBERT"}}))
    with pytest.raises(UserError, match=r"text_cfg.hf_model_name=microsoft/BiomedNLP-BiomedBERT is not a local folder"):
        build_clip({"name": "openclip", "model": str(hub), "pretrained": str(weights)})


def test_an_openclip_config_file_with_a_timm_image_tower(tiny_data, tiny_profiles, session_cache_dir, tmp_path):
    """BiomedCLIP's image tower is timm's (vit_base_patch16_224, timm's own token pooling, a linear projection): the
    same config with timm's 0.3M-parameter test_vit beside the local BERT. Built without CLIP weights, neither tower
    looks for base weights (the BERT folder holds none; the config asks for timm's ImageNet weights, which open_clip
    2.x would download); with them, it fits, saves and reloads. test_vit takes any image size (timm builds it with
    dynamic_img_size), so the size itself is not checked here."""
    import json

    import open_clip
    import timm

    from kgface.evaluation.clip_model import register_config_file

    if "test_vit" not in timm.list_models("test_vit"):
        pytest.skip("timm too old for its test_vit (timm >= 1.0)")

    from safetensors.torch import save_file

    from kgface.cache import Cache
    from kgface.config import compose

    _tiny_bert(tmp_path / "bert")
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": True, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 160},
        "text_cfg": {"hf_model_name": "bert", "hf_tokenizer_name": "bert", "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}}))
    registered = open_clip.get_model_config(register_config_file(str(config)))
    assert registered["vision_cfg"]["timm_model_pretrained"] is False
    model, tokenizer, image_size = build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False)
    assert image_size == 160 and model.kgface_embed_dim == 24
    assert type(model.visual).__name__ == "TimmModel" and type(model.text).__name__ == "HFTextEncoder"
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    cfg = compose("evaluate", ["evaluator=openclip", f"evaluator.model={config}", f"evaluator.pretrained={weights}"])
    ev = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, Cache(session_cache_dir),
                       progress=False)
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:4]))
    features = ev.features(images)
    assert features.shape == (4, 24) and np.isfinite(features).all() and features.std(0).max() > 0
    assert np.allclose(Evaluator.load(ev.save(tmp_path / "ev")).features(images), features)


def test_train_blur_blurs_the_chosen_share_and_draws_nothing_when_off():
    """evaluator.train.blur_share: share 1 blurs every face of the batch (a point spreads and keeps its mass), share 0
    returns the batch untouched without a draw from the generator, so runs without it keep their random stream."""
    from kgface.evaluation.clip_model import _blur_some, train_blur

    point = torch.zeros(3, 3, 17, 17)
    point[:, :, 8, 8] = 1.0
    gen = torch.Generator().manual_seed(0)
    soft = _blur_some(point, 1.0, 1.5, gen)
    assert (soft[:, :, 8, 8] < 1.0).all() and (soft[:, :, 8, 9] > 0).all()
    assert torch.allclose(soft.sum((2, 3)), torch.ones(3, 3), atol=1e-4)
    assert point[:, :, 8, 8].eq(1.0).all()  # the input is not modified in place
    state = gen.get_state()
    assert torch.equal(_blur_some(point, 0.0, 1.5, gen), point)  # off: the same faces ...
    assert torch.equal(gen.get_state(), state)  # ... and no draw
    assert train_blur({}) == (0.0, 1.0) and train_blur({"blur_share": 0.5, "blur_sigma": 2}, 64) == (0.5, 2.0)
    assert train_blur({"blur_share": 0, "blur_sigma": "unused"}) == (0.0, 1.0)  # off: the sigma is not read
    for bad, says in (({"blur_share": 1.5}, r"blur_share=1.5: must be a share"),
                      ({"blur_share": "half"}, "blur_share='half': give a finite number"),
                      ({"blur_share": True}, "blur_share=True: give a finite number"),
                      ({"blur_share": 0.5, "blur_sigma": None}, "blur_sigma=None: give a finite number"),
                      ({"blur_share": 0.5, "blur_sigma": float("inf")}, "blur_sigma=inf: give a finite number"),
                      ({"blur_share": 0.5, "blur_sigma": 0}, "blur_sigma=0.0: must be > 0"),
                      ({"blur_share": 0.5, "blur_sigma": -1}, "blur_sigma=-1.0: must be > 0"),
                      ({"blur_share": 0.5, "blur_sigma": 6}, "too wide for the CLIP's 32 px")):
        with pytest.raises(UserError, match=says):
            train_blur(bad, 32)


def test_training_with_blur_moves_the_clip_and_says_so(tiny_cfg, tiny_data):
    """The same seed and steps with blur_share > 0 train other weights (the blurred faces reach the loss), and the
    training log records the setting; without it the log is as before."""
    from omegaconf import OmegaConf

    from kgface.evaluation.clip_model import train_clip

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    cfg["train"]["steps"] = 2
    df = read_manifest(tiny_data / "manifest.csv")[0]
    rows = df[df["split"] == "train"].head(32)
    images, captions = load_images(list(rows["abspath"])), [f"a face of {d}" for d in rows["disease"]]
    weights, logs = [], []
    for share in (0.0, 0.0, 1.0):
        torch.manual_seed(0)  # the same initial weights
        model, tokenizer, _ = build_clip(cfg)
        logs.append(train_clip(model, tokenizer, images, captions,
                               {**cfg, "train": {**cfg["train"], "blur_share": share, "blur_sigma": 1.0}},
                               progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    same, blurred = (weights[0] - weights[1]).abs().max(), (weights[0] - weights[2]).abs().max()
    print(f"max weight change: same settings {same:.2e}, blurred {blurred:.2e}")
    assert same < 1e-6 < 1e-4 < blurred  # (threads may reorder sums: equal up to rounding)
    assert "blur_share" not in logs[0] and logs[2]["blur_share"] == 1.0 and logs[2]["blur_sigma"] == 1.0


def test_a_killed_clip_fit_resumes_to_the_weights_of_an_uninterrupted_one(tiny_cfg, tiny_data, tmp_path,
                                                                          monkeypatch, caplog):
    """A fit killed after its step-4 state resumes there (model, auxiliary heads, optimizer, schedule, data order,
    random streams) and ends where an uninterrupted fit ends; a state of another entry is ignored, a damaged one
    removed."""
    from omegaconf import OmegaConf

    from kgface.evaluation import clip_state
    from kgface.evaluation.clip_model import train_clip

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    cfg["train"] = {**cfg["train"], "steps": 6, "batch_size": 8, "supervised_weight": 1.0, "blur_share": 0.5,
                    "blur_sigma": 1.0}
    df = read_manifest(tiny_data / "manifest.csv")[0]
    rows = df[df["split"] == "train"].head(24)  # 24 faces, batch 8: the kill falls mid-way through the second order
    images, captions = load_images(list(rows["abspath"])), [f"a face of {d}" for d in rows["disease"]]
    labels = list(rows["disease"])
    presence = (np.arange(24 * 3).reshape(24, 3) % 4 == 0).astype(np.float32)
    stages = rows["stage"].to_numpy(dtype=float)

    def fit(**state):
        torch.manual_seed(0)  # the same initial weights
        model, tokenizer, _ = build_clip(cfg)
        log = train_clip(model, tokenizer, images, captions, cfg, progress=False, labels=labels, presence=presence,
                         stages=stages, **state)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), log

    whole, whole_log = fit()
    state = tmp_path / ".key.partial"
    real_save, saved = clip_state.save_state, []

    def save_then_die(folder, step, *args, **kwargs):
        real_save(folder, step, *args, **kwargs)
        saved.append(step)
        if step == 4:
            raise KeyboardInterrupt  # killed right after the step-4 state was written

    with monkeypatch.context() as m:
        m.setattr(clip_state, "save_state", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            fit(state_dir=state, state_every=2, fingerprint="key")
    assert saved == [2, 4] and json.loads((state / "state.json").read_text())["step"] == 4
    resumed, resumed_log = fit(state_dir=state, state_every=2, fingerprint="key")
    assert (resumed - whole).abs().max() < 1e-6  # as the blur test: threads may reorder sums
    assert resumed_log["final_loss"] == pytest.approx(whole_log["final_loss"], abs=1e-5)
    assert resumed_log["first_loss"] == pytest.approx(whole_log["first_loss"], abs=1e-5)  # the losses kept
    real_load, loaded = clip_state.load_state, []
    with monkeypatch.context() as m:  # a resume ends with the same weights too: ask the loader what it gave
        m.setattr(clip_state, "load_state", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
        other, _ = fit(state_dir=state, state_every=0, fingerprint="another entry")  # ignored: trains from step 0
    assert loaded == [None]
    assert (other - whole).abs().max() < 1e-6 and json.loads((state / "state.json").read_text())["step"] == 4
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(state, kept)
    (state / "optimizer.pt").write_bytes(b"damaged")
    with caplog.at_level("WARNING"):
        again, _ = fit(state_dir=state, state_every=0, fingerprint="key")
    assert (again - whole).abs().max() < 1e-6 and not state.exists()
    assert "saved training state does not load" in caplog.text
    # a file of another save (a rival run's, swapped in mid-read): refused whole, not mixed in
    shutil.copytree(kept, state)
    meta = json.loads((state / "state.json").read_text())
    (state / "state.json").write_text(json.dumps({**meta, "step": 2}))
    caplog.clear()
    with caplog.at_level("WARNING"):
        mixed, _ = fit(state_dir=state, state_every=0, fingerprint="key")
    assert (mixed - whole).abs().max() < 1e-6 and not state.exists()
    assert "progress.safetensors belongs to another saved state" in caplog.text

    def disk_full(*args, **kwargs):  # torch.save's own error type for a full disk
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    caplog.clear()
    with monkeypatch.context() as m, caplog.at_level("WARNING"):
        m.setattr(clip_state, "save_state", disk_full)
        unsaved, _ = fit(state_dir=state, state_every=2, fingerprint="key")  # trains on: only resuming is lost
    assert (unsaved - whole).abs().max() < 1e-6 and "training state was not saved at step 2" in caplog.text


def test_fit_evaluator_resumes_a_killed_clip_and_clears_its_state(tiny_cfg, tiny_data, tiny_profiles, tmp_path,
                                                                 monkeypatch, caplog):
    from kgface.cache import Cache
    from kgface.evaluation import clip_state, fitting

    monkeypatch.setattr(fitting, "CLIP_CHECKPOINT_EVERY", 2)
    real_save = clip_state.save_state

    def save_then_die(folder, step, *args, **kwargs):
        real_save(folder, step, *args, **kwargs)
        raise KeyboardInterrupt

    cache = Cache(tmp_path / "cache")
    with monkeypatch.context() as m:
        m.setattr(clip_state, "save_state", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    (partial,) = (tmp_path / "cache" / "evaluator-clip").glob(".*.partial")
    assert json.loads((partial / "state.json").read_text())["step"] == 2
    assert not [p for p in (tmp_path / "cache" / "evaluator-clip").iterdir() if not p.name.startswith(".")]
    with caplog.at_level("INFO", logger="kgface.evaluation.clip_model"):
        ev = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert "resuming at step 2 of" in caplog.text and ev.info["clip"]["steps"] == int(tiny_cfg.evaluator.train.steps)
    assert not partial.exists() and len(list((tmp_path / "cache" / "evaluator-clip").iterdir())) == 1
    # a state a killed rival run left once this CLIP was finished elsewhere: the cached evaluator's load clears it
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({"step": 2}))
    fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert not partial.exists()
    # ... but not while the CLIP entry is gone (pruned): a run training that CLIP again may be resuming from it
    import shutil

    (finished,) = [p for p in (tmp_path / "cache" / "evaluator-clip").iterdir() if not p.name.startswith(".")]
    shutil.rmtree(finished)
    partial.mkdir()
    fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert partial.is_dir()


def test_builtin_models_are_read_with_the_normalisation_their_weights_were_trained_with(caplog):
    """open_clip gives a local weights file CLIP's normalisation unless told; MobileCLIP and PE-Core were trained with
    others (their pretrained tags say which, with nothing downloaded), and their features were off."""
    from kgface.evaluation.clip_model import builtin_normalisation

    assert builtin_normalisation("PE-Core-B-16") == ((0.5,) * 3, (0.5,) * 3)
    assert builtin_normalisation("MobileCLIP-S1") == ((0.0,) * 3, (1.0,) * 3)
    assert builtin_normalisation("ViT-B-16") is None  # CLIP's, as every tag of it
    caplog.clear()
    assert builtin_normalisation("ViT-L-14") is None
    assert "['laion2b_s32b_b82k'] were trained with another" in caplog.text


def test_weights_and_config_paths_are_kept_absolute(tmp_path, monkeypatch):
    """A saved evaluator rereads evaluator.pretrained / a config .json from wherever kgface.evaluate runs: given
    relative, they were resolved against that directory (a run was usable only from the one it trained in)."""
    from kgface.evaluation.clip_model import plain_config

    monkeypatch.chdir(tmp_path)
    c = plain_config({"name": "openclip", "model": "clip/open_clip_config.json", "pretrained": "clip/w.bin"})
    assert c["model"] == str(tmp_path / "clip" / "open_clip_config.json")
    assert c["pretrained"] == str(tmp_path / "clip" / "w.bin")
    assert plain_config({"name": "openclip", "model": "ViT-B-16", "pretrained": None}) == \
        {"name": "openclip", "model": "ViT-B-16", "pretrained": None}  # a built-in name and a missing file: as given


def test_a_config_and_its_text_model_moved_together_keep_their_name(tmp_path):
    """The registered name hashes the config as written and the text model's files by their bytes: the same files
    under another absolute path (a second checkout, a shared cache) were another model, refitted, and a saved
    evaluator refused to load; other tokenizer files are another name still."""
    import shutil

    from kgface.evaluation.clip_model import register_config_file

    (tmp_path / "a").mkdir()
    _tiny_bert(tmp_path / "a" / "bert")
    model_cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
                 "text_cfg": {"hf_model_name": "bert", "hf_tokenizer_name": "bert", "hf_proj_type": "linear",
                              "hf_pooler_type": "cls_pooler", "context_length": 16}}
    (tmp_path / "a" / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = register_config_file(str(tmp_path / "a" / "open_clip_config.json"))
    assert register_config_file(str(tmp_path / "b" / "open_clip_config.json")) == first
    vocab = tmp_path / "b" / "bert" / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("\nface\n", "\nfaces\n"))
    assert register_config_file(str(tmp_path / "b" / "open_clip_config.json")) != first
