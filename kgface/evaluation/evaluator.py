"""The evaluator: frozen CLIP image features and the heads that read them.

`Evaluator.score(images | DataFrame | manifest path)` returns one row per image: the calibrated disease
probabilities and top-3, the zero-shot disease and presence, the continuous severity and stage (CORAL), and the
per-phenotype presence scores with the detected set. It is made by `kgface.evaluation.fitting.fit_evaluator` (trained
on real images only, cached) and read back by `load_evaluator` (a saved evaluator or a train run's).

Saved as `evaluator.json` (config, classes, phenotype ids, training log) + `probes.safetensors` (+ `clip.safetensors`
for the tiny CLIP; a pretrained open_clip model is re-read from `evaluator.pretrained`) + `trained_on.txt` (content
digests of the images it learned from). No pickle. `pair_presence`: zero-shot presence of one disease against
health alone, from the features and the saved prompt embeddings.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..cache import atomic_folder, file_sha256, write_json_atomic
from .clip_model import ImageEncoder, build_clip, registered_config_name
from .inputs import HEALTHY, EvaluatorInputError, as_frame, image_digest, load_images
from .probes import CoralHead, LinearProbe, PhenotypeHeads, Standardizer

FORMAT = "kgface.evaluator/1"
TRAINED_ON_FILE = "trained_on.txt"


@dataclass
class ScoredSet:
    """A scored image set: per-image predictions, the CLIP features, the images (uint8 NCHW)."""

    table: pd.DataFrame
    features: np.ndarray
    images: torch.Tensor | None = None


@dataclass
class Evaluator:
    cfg: dict
    model: torch.nn.Module
    tokenizer: Callable
    image_size: int
    classes: list[str]
    phenotypes: list[str]
    names: dict[str, str]
    scale: Standardizer
    probe: LinearProbe
    coral: CoralHead
    heads: PhenotypeHeads
    zs_text: torch.Tensor
    info: dict = field(default_factory=dict)
    # content digests of every image that trained or calibrated it (train, val, atlas): a real set scored later
    # must not contain them (check_unseen); None for an evaluator saved before the list was kept
    trained_on: list[str] | None = None

    @property
    def encoder(self) -> ImageEncoder:
        return ImageEncoder(self.model, self.image_size)

    @property
    def threshold(self) -> float:
        return float(self.cfg.get("phenotype_threshold", 0.5))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.encoder(images).numpy()

    def check_labels(self, diseases: Sequence[str], what: str = "set", paths: Sequence[str] | None = None,
                     column: str = "disease") -> None:
        """Refuse labels outside the evaluator's classes; with `paths` (one per label) the first such row is named."""
        refuse_unknown_labels(self.classes, diseases, what, paths, column)

    def check_unseen(self, df: pd.DataFrame, what: str = "real set") -> None:
        """Refuse a real set whose test rows are images this evaluator learned from (their scores would be inflated
        and copies of them would pass the memorisation audit), e.g. another split of its data. A test image with a
        byte-identical copy among the set's own train/val rows is the data's duplicate, not a re-split, and is let
        through (a train run's own evaluation reads it too). No-op for an evaluator saved without its list."""
        if self.trained_on is None or "split" not in df or not len(df):
            return
        seen = set(self.trained_on) - {image_digest(p) for p in df["abspath"][df["split"].isin(["train", "val"])]}
        hits = [p for p in df["abspath"][df["split"] == "test"] if image_digest(p) in seen]
        if hits:
            raise EvaluatorInputError(f"{what}: {len(hits)} of its {int((df['split'] == 'test').sum())} test images "
                                      "trained this evaluator "
                                      f"(e.g. {hits[0]}); score the test split of the data it was trained on, or "
                                      "evaluate without run= to train an evaluator on this set's own train split")

    def score_set(self, source, keep_images: bool = False) -> ScoredSet:
        """Score images (uint8 NCHW tensor), a manifest DataFrame or a manifest path."""
        if isinstance(source, torch.Tensor):
            images, table = source, pd.DataFrame(index=range(len(source)))
            if len(images) == 0:
                raise EvaluatorInputError("no images to score (empty set)")
        else:
            df = as_frame(source)
            if len(df) == 0:
                raise EvaluatorInputError("no images to score (empty manifest)")
            images, table = load_images(list(df["abspath"])), df.reset_index(drop=True).copy()
        feats = self.features(images)
        return ScoredSet(self.predict(feats, table), feats, images if keep_images else None)

    def score(self, source) -> pd.DataFrame:
        """One row per image (the manifest's columns, if any, then the scores): pred_disease, pred_prob, top3,
        p_<class>, zs_disease, zs_presence, severity_pred (continuous, 0..3), stage_pred, ph_<HPO id>, detected
        (list of HPO ids)."""
        return self.score_set(source).table

    def predict(self, feats: np.ndarray, table: pd.DataFrame | None = None) -> pd.DataFrame:
        base = table.reset_index(drop=True) if table is not None else pd.DataFrame(index=range(len(feats)))
        x = self.scale(feats)
        probs = self.probe.proba(x)
        order = np.argsort(-probs, 1, kind="stable")  # a tie goes to the first class, the same in every run
        cls = np.asarray(self.classes)
        cols: dict = {"pred_disease": cls[order[:, 0]], "pred_prob": probs[np.arange(len(probs)), order[:, 0]],
                      "top3": [list(cls[o[:3]]) for o in order]}
        cols.update({f"p_{c}": probs[:, k] for k, c in enumerate(self.classes)})
        # float64: at CLIP's scale 100 a float32 softmax rounds P(healthy) to exactly 0 or 1, and presence AUROCs
        # read ties
        zs = torch.softmax(100.0 * torch.as_tensor(feats, dtype=torch.float64) @ self.zs_text.double().t(),
                           -1).numpy()
        cols["zs_disease"] = cls[zs.argmax(1)]
        cols["zs_presence"] = (1.0 - zs[:, self.classes.index(HEALTHY)] if HEALTHY in self.classes
                               else np.full(len(feats), np.nan))
        cols["severity_pred"] = self.coral.severity(x)
        cols["stage_pred"] = self.coral.stage(x)
        ph = self.heads.proba(x)
        cols.update({f"ph_{h}": ph[:, k] for k, h in enumerate(self.phenotypes)})
        voc = np.asarray(self.phenotypes)
        cols["detected"] = [list(voc[row >= self.threshold]) for row in ph]
        scores = pd.DataFrame(cols)
        return pd.concat([base.drop(columns=[c for c in scores.columns if c in base.columns]), scores], axis=1)

    # --- persistence -------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        state = {**self.scale.state("scale"), **self.probe.state("probe"), **self.coral.state("coral"),
                 **self.heads.state("heads"), "zs_text": self.zs_text}
        with atomic_folder(folder) as tmp:  # the files of one evaluator or of the previous, never a mix
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "probes.safetensors"))
            if self.cfg["name"] == "tiny_clip":
                save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                          str(tmp / "clip.safetensors"))
            if self.trained_on is not None:
                (tmp / TRAINED_ON_FILE).write_text("".join(d + "\n" for d in self.trained_on), encoding="utf-8")
            write_json_atomic(tmp / "evaluator.json", {
                "format": FORMAT, "config": self.cfg, "image_size": self.image_size, "classes": self.classes,
                "phenotypes": self.phenotypes, "names": self.names, "info": self.info,
                # what its heads' features were read with (null: CLIP's): compared on load, where it is rebuilt
                # from open_clip's table of the day
                "normalisation": _norm_record(getattr(self.model, "kgface_norm", None))})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, pretrained_sha256: str | None = None,
             model_config: str | None = None, paths: dict | None = None) -> "Evaluator":
        """`pretrained_sha256`, `model_config`: the weights file's digest and the name register_config_file gave
        evaluator.model when the caller has just computed them (fit_evaluator's cache key): no file is read twice.
        `paths`: evaluator.pretrained / evaluator.model as the caller names them now, in place of the saved ones
        (a cache entry is keyed by the files' bytes, so the same weights copied elsewhere hit the entry of the old
        path: the model is built from the files named now, which the digests then check)."""

        folder = Path(folder)
        meta_path = folder / "evaluator.json"
        if not meta_path.is_file():
            raise EvaluatorInputError(f"{folder}: no evaluator.json (not a saved evaluator)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvaluatorInputError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno}); the evaluator "
                                      "folder is damaged: train it again or point to another") from None
        if meta.get("format") != FORMAT:
            raise EvaluatorInputError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
        cfg = meta["config"]
        if cfg["name"] != "tiny_clip":
            cfg.update({k: v for k, v in (paths or {}).items() if k in ("pretrained", "model") and v})
        fitted_on = meta.get("info", {}).get("pretrained_sha256")
        if cfg["name"] != "tiny_clip" and fitted_on and (
                pretrained_sha256 or weights_sha256(Path(str(cfg["pretrained"])).expanduser())) != fitted_on:
            # the heads were fitted on another model's features
            raise EvaluatorInputError(f"{meta_path}: evaluator.pretrained={cfg['pretrained']} is not the weights "
                                      "file its heads were fitted on (its bytes changed); fit the evaluator again")
        registered = registered_config_name(cfg, model_config)
        if meta.get("info", {}).get("model_config") and registered != meta["info"]["model_config"]:
            raise EvaluatorInputError(f"{meta_path}: evaluator.model={cfg['model']} (or its text model's files) is not "
                                      "the config its heads were fitted on (it changed, or the evaluator was saved by "
                                      "a kgface before 2026-12-07, whose names read the text model's folder path); "
                                      "fit the evaluator again")
        model, tokenizer, image_size = build_clip(cfg, load_pretrained=cfg["name"] != "tiny_clip",
                                                  registered=registered)
        if meta.get("normalisation") != _norm_record(getattr(model, "kgface_norm", None)):
            # another open_clip (a tag added with its own normalisation) or a folder from before a fix: the heads
            # would read features off the ones they were fitted on (a folder saved before the record fitted on
            # CLIP's mean/std, as every model did then)
            raise EvaluatorInputError(f"{meta_path}: its heads were fitted on images normalised with "
                                      f"{meta.get('normalisation') or 'CLIP mean/std'}, this open_clip gives evaluator."
                                      f"model={cfg.get('model')} {_norm_record(model.kgface_norm) or 'CLIP mean/std'}"
                                      "; fit the evaluator again")
        if cfg["name"] == "tiny_clip":
            model.load_state_dict(_read_weights(folder / "clip.safetensors"))
        model.eval()
        st = _read_weights(folder / "probes.safetensors")
        # heads and names from one fit: files mixed from two folders would score every image under the wrong names
        sizes = {"probe.bias": len(meta["classes"]), "zs_text": len(meta["classes"]),
                 "heads.bias": len(meta["phenotypes"])}
        wrong = [k for k, n in sizes.items() if k in st and st[k].shape[0] != n]
        if wrong:
            raise EvaluatorInputError(f"{folder / 'probes.safetensors'}: {wrong[0]} holds {st[wrong[0]].shape[0]} "
                                      f"rows, evaluator.json names {sizes[wrong[0]]}; the files are not of one "
                                      "evaluator: save or fit it again")
        listed = folder / TRAINED_ON_FILE  # absent in evaluators saved before it
        trained_on = listed.read_text(encoding="utf-8").split() if listed.is_file() else None
        return cls(cfg=cfg, model=model, tokenizer=tokenizer, image_size=int(meta["image_size"]),
                   classes=list(meta["classes"]), phenotypes=list(meta["phenotypes"]), names=dict(meta["names"]),
                   scale=Standardizer.from_state(st, "scale"), probe=LinearProbe.from_state(st, "probe"),
                   coral=CoralHead.from_state(st, "coral"), heads=PhenotypeHeads.from_state(st, "heads"),
                   zs_text=st["zs_text"], info=meta.get("info", {}), trained_on=trained_on)


def _read_weights(path: Path) -> dict:
    """A saved evaluator's safetensors file, or one line naming it (a folder copied without it, a truncated copy)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise EvaluatorInputError(f"{path}: cannot be read ({str(exc).splitlines()[0][:120]}); the evaluator folder "
                                  "is damaged: copy it whole, or fit the evaluator again") from None


def _norm_record(norm) -> list | None:
    """An image normalisation (mean, std) as JSON writes it back (None: CLIP's)."""
    return None if norm is None else [[round(float(v), 6) for v in part] for part in norm]


def refuse_unknown_labels(classes: Sequence[str], diseases: Sequence[str], what: str = "set",
                          paths: Sequence[str] | None = None, column: str = "disease") -> None:
    """Refuse labels outside `classes` (an evaluator's, or those one fitted on a train split will have); with
    `paths` (one per label) the first such row is named."""
    labels = [str(d) for d in diseases]
    known = set(classes)
    unknown = sorted(set(labels) - known)
    if unknown:
        first = ""
        if paths is not None:
            i = next(k for k, d in enumerate(labels) if d not in known)
            first = f" (first: {list(paths)[i]}, column {column})"
        raise EvaluatorInputError(f"the {what} has labels unknown to the evaluator: {', '.join(unknown[:5])}"
                                  f"{first}; it knows {', '.join(classes)}, the diseases of its train "
                                  "split: leave these rows out, or fit it on data with train images of them")


def pair_presence(feats: np.ndarray, zs_text: torch.Tensor, classes: Sequence[str]) -> np.ndarray:
    """[N, C] zero-shot presence of each class's disease against health alone: a softmax over two prompt
    embeddings, the disease's and the healthy one's (the sigmoid of their logit gap at CLIP's scale 100). Unlike
    zs_presence (1 - P(healthy) over every class), a face that looks like some other disease does not count as
    showing this one. The healthy column is 0.5; without a healthy class every entry is NaN."""
    feats = torch.as_tensor(np.asarray(feats), dtype=torch.float64)  # float64: see Evaluator.predict
    if HEALTHY not in classes:
        return np.full((len(feats), len(classes)), np.nan)
    logits = 100.0 * feats @ zs_text.double().t()
    return torch.sigmoid(logits - logits[:, list(classes).index(HEALTHY)].unsqueeze(1)).numpy()


def weights_sha256(path: Path) -> str:
    """SHA-256 of the evaluator.pretrained weights file (what its heads were fitted on); one line if unreadable."""
    try:
        return file_sha256(path)
    except OSError as exc:  # missing, a folder, unreadable
        raise EvaluatorInputError(f"evaluator.pretrained={path}: not a readable weights file ({exc.strerror}); "
                                  "give a local open_clip weights file") from None


def load_evaluator(path: str | os.PathLike) -> Evaluator:
    """A saved evaluator: its folder, or a train run folder holding it under `evaluator/`, or a baselines run's
    generator subfolder (`run=OUT/kg`: the evaluator of OUT, which judged every conditioning)."""
    p = Path(path)
    if not p.exists():
        raise EvaluatorInputError(f"run={path}: folder not found")
    from ..run_files import is_baselines_generator

    parent = [p.parent / "evaluator"] if is_baselines_generator(p) else []
    for cand in (p, p / "evaluator", *parent):
        if (cand / "evaluator.json").is_file():
            return Evaluator.load(cand)
    raise EvaluatorInputError(f"run={path}: no evaluator.json there, in its evaluator/ folder or (for a baselines "
                              "generator folder) in ../evaluator; pass the train run (trained with evaluate=true)")
