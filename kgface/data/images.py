"""Reading real photographs safely and cropping them around the face.

- `load_rgb(path)` opens, verifies and fully decodes an image, applies its EXIF orientation and returns it as 8-bit RGB.
  Other modes are converted (noted at debug level, and in `img.info["source_mode"]`): L/LA/P/PA/1/CMYK/YCbCr/...
  through Pillow; transparent images (RGBA, LA, PA, P with transparency) are composited onto white; 16-bit grey (I;16*)
  is scaled by 1/257 always, 32-bit grey (I) by 1/257 when its values exceed 255; float (F) images are scaled by 255
  when they lie in [0, 1]. A missing, unreadable, truncated or oversized file raises `ImageError` naming the file.
- `face_crop(img, size, detector=None, margin=0.25)`: without a detector the centred square of side min(W, H); with one
  a square around the largest detected face (side max(w, h) * (1 + 2 margin), moved inside the image, at most
  min(W, H)); no face found falls back to the centred square. Then a LANCZOS resize to size x size.
- `get_detector("none" | "haar")`: `haar` is OpenCV's frontal-face Haar cascade, whose XML ships inside
  opencv-python-headless (< 5; 5.x ships no cascades), installed by `pip install -e ".[face]"`.
"""
from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]                     # x, y, width, height in pixels
Detector = Callable[[Image.Image], Sequence[Box]]   # all faces found in an RGB image
DETECTORS = ("none", "haar")
FACE_EXTRA = 'pip install -e ".[face]" (opencv-python-headless<5)'


class ImageError(UserError):
    """An image file that cannot be used: missing, not an image, truncated or corrupt."""


def _open_checked(path: Path) -> Image.Image:
    """Open, verify the container, reopen and decode every pixel (verify() leaves the image unusable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                probe.verify()
            with Image.open(path) as img:  # load() keeps the pixels; leaving the block closes the file
                img.load()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated"), SyntaxError or ValueError.
        raise ImageError(f"{path}: unreadable or truncated image ({exc})") from None
    return img


def _to_rgb(img: Image.Image, source_format: str | None = None) -> Image.Image:
    """8-bit RGB. source_format: the file's format (Pillow's img.format, lost by a transposed copy): a PNG opened
    as 32-bit grey (I: how some Pillow versions open a 16-bit grey PNG) holds 16-bit data whatever its maximum."""
    mode = img.mode
    keyed = "transparency" in img.info  # a PNG's colour key (tRNS): its pixels are transparent, as an alpha's are
    if mode == "RGB" and not keyed:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if mode.startswith("I;16"):
            # the format says 0..65535, so every such image gets the same scale: one read by its own maximum would
            # brighten a dark exposure whose pixels all stay under 256 by 257 times
            arr = arr / 257.0
        elif mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif mode == "I" and (source_format == "PNG" or top > 255.0):
            # PNG has no 32-bit grey: its I is 16-bit data, scaled as I;16 is (a dark exposure too); another
            # format's I is read as 16-bit when its values pass 255
            arr = arr / 257.0
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "RGB", "L", "1") and keyed)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at `path` as a fully decoded 8-bit RGB PIL image, upright per its EXIF orientation."""
    path = Path(path)
    img = _open_checked(path)
    source_mode, source_format = img.mode, img.format
    try:
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img, source_format)
    except (OSError, ValueError, SyntaxError, struct.error, ZeroDivisionError, IndexError, KeyError, TypeError) as exc:
        # a broken EXIF block raises any of these from Pillow's parser: one file's problem, named, not a traceback
        raise ImageError(f"{path}: cannot orient or convert the {source_mode} image ({exc.__class__.__name__}: "
                         f"{exc})") from None
    if source_mode != "RGB":
        log.debug("%s: converted %s to RGB", path, source_mode)
    rgb.info["source_mode"] = source_mode
    return rgb


def face_box(img: Image.Image, detector: Detector | None = None, margin: float = 0.25) -> tuple[Box, bool]:
    """The square crop (x, y, side, side) for `face_crop` and whether a face was found (False: the centred square)."""
    width, height = img.size
    limit = min(width, height)
    if detector is not None:
        faces = [tuple(int(v) for v in f) for f in detector(img) if f[2] > 0 and f[3] > 0]
        if faces:
            x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
            side = min(limit, int(round(max(w, h) * (1.0 + 2.0 * margin))))
            left = int(round(x + w / 2.0 - side / 2.0))
            top = int(round(y + h / 2.0 - side / 2.0))
            left = min(max(left, 0), width - side)
            top = min(max(top, 0), height - side)
            return (left, top, side, side), True
    return ((width - limit) // 2, (height - limit) // 2, limit, limit), False


def face_crop(img: Image.Image, size: int, detector: Detector | None = None, margin: float = 0.25) -> Image.Image:
    """A size x size RGB crop centred on the largest face (with `detector`) or on the image centre (without)."""
    (left, top, side, _), _found = face_box(img, detector, margin)
    crop = img.crop((left, top, left + side, top + side))
    return crop.resize((int(size), int(size)), Image.Resampling.LANCZOS)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (weights ship inside opencv-python-headless < 5)."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size_fraction: float = 0.1):
        try:
            import cv2
        except ImportError:
            raise UserError(f"detector=haar needs OpenCV: {FACE_EXTRA}; or use detector=none (centre crop)") from None
        base = getattr(getattr(cv2, "data", None), "haarcascades", "")
        file = os.path.join(base, cascade)
        if not base or not os.path.isfile(file):
            raise UserError(f"detector=haar: OpenCV {cv2.__version__} ships no Haar cascade '{cascade}' "
                            f"(opencv 5.x dropped them): {FACE_EXTRA}")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(file)
        if self._cascade.empty():
            raise UserError(f"detector=haar: OpenCV could not load {file}")
        self.scale_factor, self.min_neighbors, self.min_size_fraction = scale_factor, min_neighbors, min_size_fraction

    def __call__(self, img: Image.Image) -> list[Box]:
        grey = np.asarray(img.convert("L"))
        side = max(8, int(min(grey.shape) * self.min_size_fraction))
        found = self._cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(side, side))
        return [tuple(int(v) for v in f) for f in (found if len(found) else [])]


def get_detector(name: str | None) -> Detector | None:
    """`none` (or None): no detector, centre crop. `haar`: OpenCV's Haar cascade (`pip install -e ".[face]"`)."""
    key = "none" if name is None else str(name).strip().lower()
    if key == "none":
        return None
    if key == "haar":
        return HaarDetector()
    raise UserError(f"unknown face detector '{name}'; choose one of {', '.join(DETECTORS)}")
