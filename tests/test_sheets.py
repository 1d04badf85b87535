"""kgface.sheets: the one labelled contact-sheet writer."""
import numpy as np
import torch
from PIL import Image

from kgface.sheets import CAPTION_H, labelled_sheet


def _img(value: int, size: int = 8) -> torch.Tensor:
    return torch.full((3, size, size), value, dtype=torch.uint8)


def test_cells_land_where_the_layout_says_and_keep_their_pixels():
    rows = [("a", [_img(10), _img(20), _img(30)]), ("b", [_img(40)])]
    sheet = labelled_sheet(rows, columns=["x", "y", "z"], label_width=50, gap=2)
    assert sheet.size == (50 + 3 * (8 + 2), 16 + 2 * (8 + 2))
    arr = np.asarray(sheet)
    assert (arr[16:24, 50 + 10:50 + 18] == 20).all()        # row a, column 2
    assert (arr[16 + 10:16 + 18, 50:58] == 40).all()         # row b, column 1
    assert (arr[16 + 10:16 + 18, 50 + 10:50 + 18] == 255).all()  # row b has no second cell: background


def test_cell_size_resizes_and_captions_add_a_line():
    pil = Image.new("RGB", (4, 4), (1, 2, 3))
    sheet = labelled_sheet([("r", [pil, _img(7, 6)])], captions=[["c1", "c2"]], cell=12, label_width=10, title="t")
    assert sheet.size == (10 + 2 * 14, 16 + 14 + CAPTION_H)
    arr = np.asarray(sheet)
    assert tuple(arr[16 + 5, 10 + 5]) == (1, 2, 3)
    assert (arr[16:16 + 12, 10 + 14:10 + 14 + 12] == 7).all()  # the 6-px tensor filled its 12-px cell
    # each caption is drawn in the band under its row's cells, the title's band above stays clear there
    band = arr[16 + 12:16 + 12 + CAPTION_H]
    assert (band[:, 10:10 + 12] < 128).any() and (band[:, 10 + 14:10 + 14 + 12] < 128).any()
