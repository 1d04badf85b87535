"""load_rgb on every awkward image kind, face_crop with and without a detector, get_detector."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from kgface.data.images import ImageError, face_box, face_crop, get_detector, load_rgb
from kgface.errors import UserError


def _rgb(w=40, h=30):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 5
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 7
    return Image.fromarray(arr, "RGB")


def test_rgb_jpeg_loads_unchanged_in_size(tmp_path):
    _rgb().save(tmp_path / "a.jpg", quality=95)
    img = load_rgb(tmp_path / "a.jpg")
    assert img.mode == "RGB" and img.size == (40, 30) and img.info["source_mode"] == "RGB"


@pytest.mark.parametrize("mode,name", [("L", "g.png"), ("LA", "la.png"), ("P", "p.png"), ("CMYK", "c.jpg"),
                                       ("RGBA", "a.png"), ("1", "b.png")])
def test_other_modes_become_rgb(tmp_path, mode, name, caplog):
    _rgb().convert(mode).save(tmp_path / name)
    with caplog.at_level(logging.DEBUG, logger="kgface.data.images"):
        img = load_rgb(tmp_path / name)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert img.info["source_mode"] == mode
    assert f"converted {mode} to RGB" in caplog.text


def test_transparent_pixels_become_white(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[:4, :, :3] = (200, 10, 10)
    arr[:4, :, 3] = 255                      # top half opaque red, bottom half fully transparent black
    Image.fromarray(arr, "RGBA").save(tmp_path / "t.png")
    out = np.asarray(load_rgb(tmp_path / "t.png"))
    assert tuple(out[0, 0]) == (200, 10, 10)
    assert tuple(out[7, 7]) == (255, 255, 255)


@pytest.mark.parametrize("mode, key", [("RGB", (0, 0, 0)), ("L", 0)])
def test_colour_keyed_png_pixels_become_white_too(tmp_path, mode, key):
    arr = np.full((4, 4, 3), 120, np.uint8)
    arr[:2] = 0  # the key colour: transparent by the file's tRNS chunk
    Image.fromarray(arr).convert(mode).save(tmp_path / "k.png", transparency=key)
    out = np.asarray(load_rgb(tmp_path / "k.png"))
    assert (out[:2] == 255).all() and (out[2:] == 120).all()


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    arr = np.tile(np.array([0, 257 * 100, 65535], np.uint16), (4, 1))
    Image.fromarray(arr).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as raw:
        assert raw.mode == "I;16"
    out = np.asarray(load_rgb(tmp_path / "d.png"))
    assert out.shape == (4, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]      # Pillow's own I;16 -> L would clip 25700 to 255


def test_dark_16_bit_grey_png_keeps_its_16_bit_scale(tmp_path):
    # every pixel under 256 on the 16-bit scale is near black; read by its own maximum it came out as 0..200
    Image.fromarray(np.tile(np.array([0, 100, 200], np.uint16), (4, 1))).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as raw:
        assert raw.mode == "I;16"
    assert np.asarray(load_rgb(tmp_path / "dark.png"))[0, :, 0].tolist() == [0, 0, 1]


def test_a_png_opened_as_32_bit_grey_keeps_its_16_bit_scale():
    # some Pillow versions open a 16-bit grey PNG as I, not I;16: a PNG's I is 16-bit data whatever its maximum;
    # another format's I with values up to 255 is read as 8-bit
    from kgface.data.images import _to_rgb

    img = Image.fromarray(np.tile(np.array([0, 100, 200], np.int32), (2, 1)), "I")
    assert np.asarray(_to_rgb(img, "PNG"))[0, :, 0].tolist() == [0, 0, 1]
    assert np.asarray(_to_rgb(img, "TIFF"))[0, :, 0].tolist() == [0, 100, 200]


def test_float_image_in_unit_range_is_scaled(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(tmp_path / "f.tif")
    assert np.asarray(load_rgb(tmp_path / "f.tif"))[0, 0, 0] in (127, 128)


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to view): the size swaps, and so does the picture, which the size
    alone cannot tell from orientations 5, 7 or 8: the stored image's bright left column must end up on top."""
    arr = np.zeros((30, 40, 3), dtype=np.uint8)
    arr[:, :8] = 255  # the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    out = np.asarray(load_rgb(tmp_path / "o.png"))
    assert out.shape == (40, 30, 3) and out[:8].min() == 255 and out[-8:].max() == 0


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: unreadable or truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_not_an_image_and_missing_file_are_errors(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not a JPEG")
    with pytest.raises(ImageError, match=r"fake\.jpg: not an image file"):
        load_rgb(tmp_path / "fake.jpg")
    with pytest.raises(ImageError, match=r"gone\.png: image file does not exist"):
        load_rgb(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_rgb(tmp_path)


def test_centre_crop_is_the_middle_square_resized():
    img = _rgb(40, 30)
    box, found = face_box(img)
    assert box == (5, 0, 30, 30) and not found
    out = face_crop(img, 16)
    assert out.size == (16, 16) and out.mode == "RGB"
    expected = img.crop((5, 0, 35, 30)).resize((16, 16), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_detector_crop_centres_the_largest_face_and_stays_inside():
    img = _rgb(100, 80)
    faces = [(10, 10, 8, 8), (60, 20, 20, 20)]                      # the largest face wins
    box, found = face_box(img, lambda im: faces, margin=0.25)
    assert found and box == (55, 15, 30, 30)                        # side 20 * 1.5, centred on (70, 30)
    box, _ = face_box(img, lambda im: [(85, 0, 20, 20)], margin=0.5)  # near the corner: moved inside
    assert box == (60, 0, 40, 40)
    box, _ = face_box(img, lambda im: [(0, 0, 90, 90)], margin=0.5)   # larger than the image: clamped
    assert box == (5, 0, 80, 80)                                    # centred on x=45, top clamped
    box, found = face_box(img, lambda im: [], margin=0.5)             # no face: centre crop
    assert not found and box == (10, 0, 80, 80)
    assert face_crop(img, 12, detector=lambda im: faces).size == (12, 12)


def test_get_detector():
    assert get_detector("none") is None and get_detector(None) is None
    with pytest.raises(UserError, match="unknown face detector 'mtcnn'"):
        get_detector("mtcnn")


def test_haar_without_opencv_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(UserError, match=r'pip install -e "\.\[face\]"'):
        get_detector("haar")


def test_haar_detector_runs_when_opencv_is_installed():
    import importlib.util

    assert importlib.util.find_spec("cv2"), 'opencv comes with pip install -e ".[dev]": CI runs these tests'
    detector = get_detector("haar")
    faces = detector(_rgb(64, 64))
    assert faces == []  # a gradient has no face; the call must still work
    assert face_crop(_rgb(64, 48), 32, detector).size == (32, 32)


def test_haar_crop_finds_an_off_centre_phantom_face():
    import importlib.util

    assert importlib.util.find_spec("cv2"), 'opencv comes with pip install -e ".[dev]": CI runs these tests'
    from kgface.data.phantom import render_face, sample_identity

    canvas = Image.new("RGB", (400, 260), (90, 110, 130))
    canvas.paste(render_face(sample_identity(seed=0, identity_id=0), {}, size=200), (190, 40))
    (left, top, side, _), found = face_box(canvas, get_detector("haar"), margin=0.25)
    assert found
    cx, cy = left + side / 2, top + side / 2
    assert abs(cx - 290) < 30 and abs(cy - 140) < 40          # centred on the pasted face, not the canvas
    assert left >= 150                                          # the centre crop would start at x=70


def test_a_broken_exif_block_is_an_error_naming_the_file(tmp_path, monkeypatch):
    # Pillow's EXIF parser raises struct.error / SyntaxError / ZeroDivisionError on some phone files; the build must
    # name the file (and skip it with on_error=skip), not stop on a traceback
    import struct

    from PIL import ImageOps

    _rgb(8, 8).save(tmp_path / "x.jpg")

    def broken(img):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(ImageError, match=r"x\.jpg: cannot orient or convert the RGB image \(error: unpack requires"):
        load_rgb(tmp_path / "x.jpg")
