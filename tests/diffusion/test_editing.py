"""kgface.diffusion.editing on constructed images with known answers: pixel scores, region and edit masks, input
files and their preparation (the entry-level behaviour, on a trained micro run, is tests/test_generate.py)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from kgface.diffusion.editing import edit_mask, input_files, prepare_image, psnr, region_mask, ssim
from kgface.errors import UserError


def _face(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, size, size), dtype=np.uint8))


def test_psnr_and_ssim_known_answers():
    a = _face()
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    b = (a.int() + 1).clamp(max=255).to(torch.uint8)
    b[a == 255] = 254  # every pixel off by exactly one grey level
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-3)  # 48.13 dB
    assert ssim(a, 255 - a) < 0 < ssim(a, b) < 1  # an inverted image anti-correlates


def test_region_mask_is_the_union_of_its_boxes():
    eyes = region_mask(["eyes"], 64)
    # eyes: rows 0.34-0.50, columns 0.18-0.82 of the side -> rows 22:32, columns 12:52
    assert eyes.shape == (1, 64, 64) and float(eyes.sum()) == 10 * 40 and float(eyes[0, 22:32, 12:52].min()) == 1
    cheeks = region_mask(["cheeks"], 64)
    assert float(cheeks[0, 40, 32]) == 0 and float(cheeks[0, 40, 10]) == 1 == float(cheeks[0, 40, 50])  # two boxes
    assert float(region_mask(["eyes", "cheeks"], 64).sum()) == float((eyes + cheeks).clamp(max=1).sum())
    with pytest.raises(UserError, match="mask region 'nostril' is unknown"):
        region_mask(["nostril"], 64)


def test_edit_mask_keeps_regions_exactly_and_feathers_inward():
    assert edit_mask(None, None, 64) is None  # no mask: the whole image may change
    m = edit_mask(None, ["eyes"], 64)
    eyes = region_mask(["eyes"], 64).bool()
    assert float(m[eyes].max()) == 0  # kept pixels stay the input's exactly
    assert float(m[0, 0, 0]) == 1 and float(m.min()) == 0 and float(m.max()) == 1
    ring = m[0, 21, 12:52]  # the row just above the eyes: feathered, strictly between 0 and 1
    assert float(ring.min()) > 0 and float(ring.max()) < 1
    only = edit_mask(["mouth"], None, 64)
    assert float(only[~region_mask(["mouth"], 64).bool()].max()) == 0  # nothing outside the mask changes
    with pytest.raises(UserError, match="leaves nothing to change"):
        edit_mask(["eyes"], ["eyes"], 64)
    # one region without brackets (as keep=eyes reads), and messages that name the key
    assert torch.equal(edit_mask("mouth", None, 64), only)
    with pytest.raises(UserError, match=r"^mask=jaw is neither an image file nor a region \(.*mask=\[region"):
        edit_mask("jaw", None, 64)
    with pytest.raises(UserError, match=r"^keep region .jaw. is unknown; use regions from"):
        edit_mask(None, ["jaw"], 64)


def test_edit_mask_from_a_png(tmp_path):
    png = tmp_path / "mask.png"
    half = np.zeros((32, 32), dtype=np.uint8)
    half[:, 16:] = 255
    Image.fromarray(half).save(png)
    m = edit_mask(str(png), None, 32)
    assert float(m[0, :, :16].max()) == 0 and float(m[0, :, 17:].min()) == 1  # the white half
    assert torch.allclose(m[0, 1:-1, 16], torch.tensor(6 / 9))  # feathered at its edge, inside the white half


def test_a_png_mask_lines_up_with_the_cropped_photo_and_keeps_its_transparent_pixels(tmp_path):
    """A 64x48 photo keeps its centred 48x48 square; a 64x48 mask drawn on it was squeezed across all 64 columns,
    so the edit landed elsewhere. Strokes on a transparent layer: transparent was read as white (change all)."""
    photo = np.zeros((48, 64, 3), dtype=np.uint8)
    photo[:, 32:] = 255  # the photo's right 32 columns are white: its cropped square's right half
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(photo[..., 0]).save(tmp_path / "mask.png")  # a mask painted over exactly that region
    img = prepare_image(tmp_path / "photo.png", 32)
    m = edit_mask(str(tmp_path / "mask.png"), None, 32)
    white = img[0].float() > 127
    assert white[:, :15].sum() == 0 and white[:, 17:].all()
    assert float(m[0, :, :15].max()) == 0 and float(m[0, 1:-1, 18:].min()) == 1  # the same half: lined up
    layer = np.zeros((32, 32, 4), dtype=np.uint8)
    layer[..., :3] = 255  # white everywhere, opaque only in the top 8 rows: a stroke on a transparent layer
    layer[:8, :, 3] = 255
    Image.fromarray(layer, mode="RGBA").save(tmp_path / "layer.png")
    m = edit_mask(str(tmp_path / "layer.png"), None, 32)
    assert float(m[0, :7].min()) == 1 and float(m[0, 9:].max()) == 0


def test_input_files_and_prepared_images(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("RGBA", (40, 48), (200, 10, 10, 255)).save(folder / "b.png")
    Image.new("RGB", (32, 32), (0, 0, 0)).save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    assert [(p.name, ident) for p, ident in input_files(str(folder))] == [("a.jpg", "a"), ("b.png", "b")]
    img = prepare_image(folder / "b.png", 32)  # RGBA, 40x48: converted, centre-cropped and resized
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and img[0].float().mean() > 150
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        input_files(str(empty))
    with pytest.raises(UserError, match="does not exist"):
        input_files(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match="this mode needs input="):
        input_files(None)


def test_override_values():
    from omegaconf import OmegaConf

    from kgface.config import as_list, as_number

    assert as_list(None, "seeds") == [] and as_list(3, "seeds") == [3]
    assert as_list(OmegaConf.create([1, 2]), "seeds") == [1, 2]
    with pytest.raises(UserError, match="phenotypes= parsed as a dict"):
        as_list(OmegaConf.create({"HP": "0000316: 0.8"}), "phenotypes")
    assert as_number("2.5", "stage") == 2.5
    with pytest.raises(UserError, match="strength=half: not a number"):
        as_number("half", "strength")
    with pytest.raises(UserError, match="strength=True: not a number"):  # YAML's true: float(True) was 1.0
        as_number(True, "strength")
