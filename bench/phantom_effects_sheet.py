"""Write the phantom effect contact sheet: every catalogue effect at intensity 0, 0.5 and 1 on two identities.

    python bench/phantom_effects_sheet.py [--out docs/img/phantom_effects.png] [--size 64] [--keys KEY ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from kgface.cache import atomic_path
from kgface.data.phantom import all_effect_keys, render_face, sample_identity

INTENSITIES = (0.0, 0.5, 1.0)


def contact_sheet(keys, identities, size=64, per_row=2, label_w=170) -> Image.Image:
    cell_w = label_w + len(identities) * len(INTENSITIES) * size + 12
    rows = (len(keys) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * cell_w, rows * (size + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, key in enumerate(keys):
        x0, y0 = (k % per_row) * cell_w, (k // per_row) * (size + 4) + 4
        draw.text((x0 + 4, y0 + size // 2 - 6), key, fill=(0, 0, 0))
        x = x0 + label_w
        for ident in identities:
            for t in INTENSITIES:
                sheet.paste(render_face(ident, {key: t}, size=size), (x, y0))
                x += size
            x += 6
    return sheet


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/phantom_effects.png")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--keys", nargs="*", default=None, help="effect keys (default: every catalogue variant)")
    ap.add_argument("--identities", type=int, nargs=2, default=(3, 7), help="two identity ids of seed 0")
    args = ap.parse_args()
    keys = args.keys or all_effect_keys()
    identities = [sample_identity(0, i) for i in args.identities]
    sheet = contact_sheet(keys, identities, args.size)
    with atomic_path(args.out) as tmp:  # a temporary name, renamed: no half-written picture in docs/img
        fmt = Path(args.out).suffix.lstrip(".").upper() or "PNG"
        sheet.save(tmp, format={"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt), optimize=True)
    print(f"wrote {args.out}: {len(keys)} effect keys x {len(identities)} identities x {len(INTENSITIES)} intensities")


if __name__ == "__main__":
    main()
