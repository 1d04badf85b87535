"""Contact sheets: labelled rows of images, the one picture-writer behind the dataset's contact sheet, a training
run's sample and validation grids and `kgface.generate`'s grids (the report's matplotlib figures are separate).

A sheet is a list of rows, each a label and its images left to right; optional column titles over the first row,
a title line, and a caption under each cell. Images are PIL images or uint8 tensors [3, H, W].
"""
from __future__ import annotations

from PIL import Image, ImageDraw

CAPTION_H = 12


def to_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    return Image.fromarray(img.permute(1, 2, 0).cpu().numpy())  # uint8 [3, H, W]


def labelled_sheet(rows: list[tuple[str, list]], columns: list[str] | None = None, title: str = "",
                   captions: list[list[str]] | None = None, cell: int | None = None, label_width: int = 180,
                   gap: int = 2) -> Image.Image:
    """rows: (label, images) pairs, one sheet row each; columns: titles over the cells; captions: a line under each
    cell (same shape as rows); cell: the side every image is resized to (default: the first image's width)."""
    first = next((im for _, ims in rows for im in ims), None)
    side = int(cell or (to_pil(first).width if first is not None else 16))
    ncol = max([len(ims) for _, ims in rows] + [len(columns or [])] + [1])
    head = 16 if (title or columns) else gap
    row_h = side + gap + (CAPTION_H if captions else 0)
    sheet = Image.new("RGB", (label_width + ncol * (side + gap), head + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill="black")
    for k, name in enumerate(columns or []):
        draw.text((label_width + k * (side + gap) + 2, 2), name, fill="black")
    for r, (label, images) in enumerate(rows):
        y = head + r * row_h
        draw.text((4, y + 2), label, fill="black")
        for c, img in enumerate(images):
            pil = to_pil(img)
            if pil.size != (side, side):
                pil = pil.resize((side, side))
            x = label_width + c * (side + gap)
            sheet.paste(pil, (x, y))
            if captions:
                draw.text((x, y + side), captions[r][c], fill="black")
    return sheet
