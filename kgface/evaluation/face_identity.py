"""A second identity instrument: dlib's face-recognition ResNet (128-d embeddings), beside the evaluator's CLIP cosine.

Optional (`pip install -e ".[dlib]"`: `dlib-bin` + `face-recognition-models`, part of `.[dev]`). The top-level key
`face_identity` chooses it: `auto` (default) uses it when both packages are installed, `dlib` requires them (a one-line
error naming the extra otherwise), `none` turns it off.

The CLIP features are trained on disease labels, so their cosine mixes "same person" with "same disease"; dlib's
embedding was trained by its authors to tell people apart (0.6 Euclidean distance is their same-person threshold on
photos). Each image is upscaled to at least 160 px (dlib's HOG detector finds faces of ~80 px and up), the largest
detected face is aligned by the 5-point landmark model, and where no face is found the whole frame is taken as the
face (kgface's images are face crops); `face_found` says how often detection succeeded.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .inputs import EvaluatorInputError, to_uint8

log = logging.getLogger(__name__)

MODES = ("auto", "dlib", "none")
EXTRA = 'pip install -e ".[dlib]" (dlib-bin + face-recognition-models)'
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for photos of real people (its authors' LFW evaluation)
MIN_SIZE = 160              # px: images are upscaled to at least this before detection
MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
_loaded: dict[str, object] = {}  # one load per process (preflight's; the evaluation reuses it): the instance or the error


def _package_models() -> Path | None:
    """face_recognition_models' model folder, found without importing it: its __init__ needs pkg_resources, which
    recent setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _model_dir() -> Path | None:
    """That folder when it holds both model files."""
    d = _package_models()
    return d if d is not None and all((d / f).is_file() for f in MODEL_FILES) else None


def available() -> bool:
    """Both packages are installed (the model files present; whether they load is `load_face_identity`'s test)."""
    return importlib.util.find_spec("dlib") is not None and _model_dir() is not None


class DlibFaceIdentity:
    """`embed(images)` -> (N x 128 float array, N bools: a face was detected) for uint8 NCHW RGB images."""

    name = "dlib"

    def __init__(self):
        import dlib

        d = _model_dir()
        if d is None:
            raise UserError(f"face_identity=dlib: the face-recognition-models package is not installed; {EXTRA}")
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(d / MODEL_FILES[0]))
        self.net = dlib.face_recognition_model_v1(str(d / MODEL_FILES[1]))

    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """images: N x C x H x W, uint8 (0-255) or float (0-1, as a VAE round trip gives); C = 1 (grey), 3 or 4
        (alpha dropped)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise EvaluatorInputError(f"face identity: images must be N x C x H x W with C = 1, 3 or 4, got "
                                      f"{tuple(images.shape)}")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise EvaluatorInputError(f"face identity: images must be uint8 or float in [0, 1], got {images.dtype}")
            images = to_uint8(images)
        images = images[:, :3] if images.shape[1] == 4 else images.expand(-1, 3, -1, -1) if images.shape[1] == 1 \
            else images
        feats, found = [], []
        for img in images:
            a = img.permute(1, 2, 0).cpu().numpy()
            h, w = a.shape[:2]
            f = max(1.0, MIN_SIZE / min(h, w))
            if f > 1:
                a = np.asarray(Image.fromarray(a).resize((round(w * f), round(h * f)), Image.BICUBIC))
            a = np.ascontiguousarray(a)
            faces = self.detector(a, 0)
            found.append(len(faces) > 0)
            box = max(faces, key=lambda r: r.area()) if len(faces) else \
                self._dlib.rectangle(0, 0, a.shape[1] - 1, a.shape[0] - 1)
            feats.append(np.asarray(self.net.compute_face_descriptor(a, self.landmarks(a, box)), dtype=np.float64))
        return np.stack(feats) if feats else np.zeros((0, 128)), np.asarray(found, bool)


def _mode(mode) -> str:
    """The config value as written, normalised (None/false read as none)."""
    return "none" if mode is None or mode is False else str(mode).strip().lower()


def resolve(mode) -> str:
    """The config value `face_identity` (auto | dlib | none) as what will run: "dlib" or "none"; a one-line error for
    an unknown value, or for dlib when its extra is missing (checked without loading the models)."""
    m = _mode(mode)
    if m not in MODES:
        raise UserError(f"face_identity={mode!r}: use one of {', '.join(MODES)}")
    if m == "auto":
        return "dlib" if available() else "none"
    if m == "dlib" and not available():
        raise UserError(f"face_identity=dlib: dlib or face-recognition-models is not installed; {EXTRA} "
                        "(or face_identity=auto|none)")
    return m


def load_face_identity(mode) -> DlibFaceIdentity | None:
    """The instrument for the config value `face_identity`, or None; loaded once per process. An install whose
    models do not load is an error under `dlib` and, with a warning, no instrument under `auto`."""
    if resolve(mode) != "dlib":
        return None
    auto = _mode(mode) == "auto"
    if "dlib" not in _loaded:
        try:
            _loaded["dlib"] = DlibFaceIdentity()
        except (ImportError, OSError, RuntimeError) as exc:  # a broken wheel, damaged model files
            _loaded["dlib"] = f"face_identity: dlib's models did not load ({str(exc).splitlines()[0][:200]})"
            if auto:
                log.warning("%s; going on without dlib identity (face_identity=none silences this)", _loaded["dlib"])
    got = _loaded["dlib"]
    if isinstance(got, str):
        if auto:
            return None
        raise UserError(f"{got}; reinstall the extra, {EXTRA}, or set face_identity=auto|none")
    return got


def cap_by_identity(identities, max_images: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `max_images` rows made of whole identities (drawn with `seed`), so every kept
    face keeps its same-identity partners; identities larger than the room left are skipped, and if none fits, a
    random `max_images` rows (partners then may be cut)."""
    ids = np.asarray([str(i) for i in identities])
    if len(ids) <= max_images:
        return np.arange(len(ids))
    rng = np.random.default_rng(seed)
    chosen, n = [], 0
    for u in rng.permutation(np.unique(ids)):
        rows = np.flatnonzero(ids == u)
        if n + len(rows) <= max_images:
            chosen.append(rows)
            n += len(rows)
    if not chosen:
        return np.sort(rng.choice(len(ids), max_images, replace=False))
    return np.sort(np.concatenate(chosen))


def identity_validity(embedder, images: torch.Tensor, identities, max_images: int = 300, seed: int = 0,
                      clip_features: np.ndarray | None = None) -> dict:
    """The instrument on real faces: AUROC of -distance for same vs different identity pairs, the mean distance of
    each kind, and the share of faces detected; on at most `max_images` faces (`cap_by_identity`: ~0.1 s per face on
    2 CPU cores). With `clip_features` (the evaluator's, row for row), `clip_auroc`: the CLIP cosine's AUROC on the same
    faces, so the two instruments are compared on one set of pairs."""
    from .metrics import auroc, unit_rows

    keep = cap_by_identity(identities, max_images, seed)
    ids = np.asarray([str(i) for i in identities])[keep]
    feats, found = embedder.embed(images[torch.from_numpy(keep)])
    iu, ju = np.triu_indices(len(ids), 1)
    same = ids[iu] == ids[ju]
    dist = np.linalg.norm(feats[iu] - feats[ju], axis=1)
    u = unit_rows(feats)  # dlib's embeddings are not unit length
    cos = np.sum(u[iu] * u[ju], 1)
    out = {"n": int(len(ids)), "face_found": float(found.mean()) if len(found) else float("nan")}
    if same.any() and (~same).any():
        out.update({"auroc": auroc(same.astype(int), -dist),
                    "same_mean_distance": float(dist[same].mean()),
                    "different_mean_distance": float(dist[~same].mean()),
                    "different_below_threshold": float((dist[~same] < SAME_PERSON_DISTANCE).mean()),
                    # the cosine of the same embeddings, to read beside the CLIP cosine on one scale
                    "cosine_auroc": auroc(same.astype(int), cos),
                    "same_mean_cosine": float(cos[same].mean()),
                    "different_mean_cosine": float(cos[~same].mean())})
        if clip_features is not None:  # on exactly these pairs (metrics.identity_auroc samples different ones)
            c = unit_rows(np.asarray(clip_features, float)[keep])
            out["clip_auroc"] = auroc(same.astype(int), np.sum(c[iu] * c[ju], 1))
    return out


def pair_distances(embedder, images_a: torch.Tensor, images_b: torch.Tensor) -> dict:
    """Source vs edited face: mean Euclidean distance, the share under dlib's same-person threshold, the mean cosine
    of the two embeddings (the issue's "cosine of dlib face embeddings"; the distance is dlib's own scale), faces
    found."""
    from .metrics import identity_similarity

    fa, ok_a = embedder.embed(images_a)
    fb, ok_b = embedder.embed(images_b)
    d = np.linalg.norm(fa - fb, axis=1)
    both = ok_a & ok_b  # pairs aligned by detected landmarks on both sides (others read a whole frame)
    nan = float("nan")
    return {"identity_distance_dlib": float(d.mean()) if len(d) else nan,
            "identity_same_person_dlib": float((d < SAME_PERSON_DISTANCE).mean()) if len(d) else nan,
            "identity_cosine_dlib": identity_similarity(fa, fb),  # nan without pairs
            "identity_face_found_dlib": float(np.concatenate([ok_a, ok_b]).mean()) if len(d) else nan,
            "identity_distance_dlib_both_found": float(d[both].mean()) if both.any() else nan,
            "identity_dlib_both_found_n": int(both.sum())}
