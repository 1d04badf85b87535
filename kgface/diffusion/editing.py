"""Edits of input photos by a trained generator, the parts `python -m kgface.generate` and `kgface.trials` share:
input images prepared at the model's size, edit masks (named face regions or a PNG, minus `keep=` regions) and the
pixel scores of an edit against its input (SSIM, PSNR). The sampling itself is `kgface.diffusion.requests`."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import ListConfig

from ..config import as_list
from ..errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Regions of a centred, square face crop as boxes (top, bottom, left, right) in fractions of the side: a heuristic
# for aligned crops (face_crop / the phantom layout), not a face parser.
REGIONS = {
    "hair": [(0.0, 0.18, 0.0, 1.0)],
    "forehead": [(0.12, 0.32, 0.2, 0.8)],
    "brows": [(0.28, 0.38, 0.18, 0.82)],
    "eyes": [(0.34, 0.50, 0.18, 0.82)],
    "nose": [(0.42, 0.66, 0.38, 0.62)],
    "cheeks": [(0.48, 0.72, 0.12, 0.38), (0.48, 0.72, 0.62, 0.88)],
    "mouth": [(0.68, 0.82, 0.30, 0.70)],
    "chin": [(0.80, 0.96, 0.30, 0.70)],
    "ears": [(0.35, 0.65, 0.0, 0.12), (0.35, 0.65, 0.88, 1.0)],
}


def input_files(spec) -> list[tuple[Path, str]]:
    """(image path, identity) for input=IMAGE | DIR | MANIFEST.csv."""
    if spec in (None, ""):
        raise UserError("this mode needs input=IMAGE, a folder of images or a manifest .csv")
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise UserError(f"input={path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not files:
            raise UserError(f"input={path} holds no images ({', '.join(IMAGE_EXTS)})")
        return [(p, p.stem) for p in files]
    if path.suffix.lower() == ".csv":
        from ..data.manifest import read_manifest

        df, _ = read_manifest(path)
        return [(Path(a), str(i) or Path(a).stem) for a, i in zip(df["abspath"], df["identity"])]
    return [(path, path.stem)]


def prepare_image(path: Path, size: int, notes: bool = True) -> torch.Tensor:
    """uint8 [3, size, size]: decoded to RGB and centre-cropped/resized when needed (each with a logged note, unless
    `notes=False`: a run's own dataset, whose size its config chose)."""
    import numpy as np

    from ..data.images import face_crop, load_rgb

    img = load_rgb(path)  # unreadable / truncated / not an image: ImageError (one line)
    if notes and img.info.get("source_mode", "RGB") != "RGB":
        log.warning("%s: converted %s to RGB", path, img.info["source_mode"])
    if img.size != (size, size):
        if notes:
            log.warning("%s: %dx%d is not the model's %dx%d; centre-cropped and resized", path, *img.size, size, size)
        img = face_crop(img, size)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def region_mask(names, size: int, key: str = "mask") -> torch.Tensor:
    """[1, S, S] float: 1 inside the union of the named regions (REGIONS), 0 elsewhere."""
    m = torch.zeros(1, size, size)
    for name in names:
        if str(name) not in REGIONS:
            png = "a PNG or " if key == "mask" else ""
            raise UserError(f"{key} region '{name}' is unknown; use {png}regions from {', '.join(REGIONS)}")
        for top, bottom, left, right in REGIONS[str(name)]:
            m[:, round(top * size):round(bottom * size), round(left * size):round(right * size)] = 1.0
    return m


def edit_mask(mask, keep, size: int, key: str = "mask") -> torch.Tensor | None:
    """Where the output may differ from the input ([1, S, S] in [0, 1], feathered inward), or None (everywhere);
    `key`: the setting errors name (kgface.trial's is trial.mask)."""
    if mask is None and keep is None:
        return None
    if mask is None:
        m = torch.ones(1, size, size)
    elif isinstance(mask, (ListConfig, list, tuple)):
        m = region_mask(mask, size, key)
    elif str(mask) in REGIONS:  # mask=cheeks: one region, unbracketed (as keep=eyes is)
        m = region_mask([str(mask)], size, key)
    else:
        from PIL import Image, ImageChops, ImageOps

        from ..data.images import face_box, load_rgb

        path = Path(str(mask)).expanduser()
        if not path.is_file():
            raise UserError(f"{key}={mask} is neither an image file nor a region ({', '.join(REGIONS)}); give a "
                            f"PNG or {key}=[region,...]")
        img = load_rgb(path).convert("L")  # unreadable: one line naming the file
        with Image.open(path) as raw:  # transparent pixels keep the input (load_rgb lays them on white: change)
            if raw.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in raw.info:
                img = ImageChops.multiply(img, ImageOps.exif_transpose(raw).convert("RGBA").getchannel("A"))
        # the crop the input photo gets (its centred square, load_input), so a mask drawn on the photo lines up
        left, top, side, _ = face_box(img)[0]
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
        import numpy as np

        m = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    if keep is not None:
        m = m * (1 - region_mask(as_list(keep, "keep"), size, key="keep"))
    if float(m.max()) == 0.0:
        raise UserError("the mask leaves nothing to change (mask minus keep is empty)")
    # feather the edge inside the edit region only: pixels outside stay exactly the input's
    soft = torch.nn.functional.avg_pool2d(m[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return torch.minimum(m, soft)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM of two uint8 [3, H, W] images (uniform window, per channel; as skimage's defaults)."""
    x, y = a.float()[None], b.float()[None]
    w = min(window, x.shape[-1], x.shape[-2])
    pool = lambda t: torch.nn.functional.avg_pool2d(t, w, stride=1)  # noqa: E731
    mx, my = pool(x), pool(y)
    n = w * w
    vx = (pool(x * x) - mx * mx) * n / (n - 1)
    vy = (pool(y * y) - my * my) * n / (n - 1)
    cxy = (pool(x * y) - mx * my) * n / (n - 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())
