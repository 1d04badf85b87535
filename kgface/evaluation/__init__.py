"""The evaluator: one instrument for real and generated faces (disease, stage, phenotypes, set-level metrics).

It never imports the generator it measures (kgface.diffusion, kgface.encoders). See docs/evaluation.md.
- `clip_model`: the tiny from-scratch open_clip model (or a pretrained one from a local file) and its training loop.
- `towers`: image towers beside open_clip's own (`evaluator.vision.tower=cnn`, a full-resolution CNN).
- `probes`: calibrated disease probe, CORAL stage head, per-phenotype heads.
- `inputs`: images, labels and the rows each head learns from; `EvaluatorInputError`.
- `evaluator`: `Evaluator` (score / save / load), `load_evaluator`; `fitting`: `fit_evaluator` (trained, cached).
- `metrics`: pure metric functions; `validity`: the instrument's validity on real images; `sets`: `evaluate_sets`.
- `learned_profiles`: phenotype frequencies learned from samples; `report`: metrics.json + report.md/html.
- `face_identity`: dlib face embeddings, a second identity instrument (optional extra; `face_identity=`).
"""
from .clip_model import ImageEncoder, build_clip, train_clip
from .evaluator import Evaluator, ScoredSet, load_evaluator
from .fitting import fit_evaluator, train_evaluator
from .inputs import EvaluatorInputError, load_images
from .learned_profiles import learn_profiles, perturb_profiles, perturbation_check, write_learned
from .report import write_report
from .sets import evaluate_sets
from .validity import instrument_validity, oracle_top1

__all__ = [
    "ImageEncoder", "build_clip", "train_clip", "Evaluator", "EvaluatorInputError", "ScoredSet", "fit_evaluator",
    "load_evaluator", "load_images", "train_evaluator", "learn_profiles", "perturb_profiles", "perturbation_check",
    "write_learned", "write_report", "evaluate_sets", "instrument_validity", "oracle_top1",
]
