"""Image towers of the tiny CLIP beyond open_clip's own (`evaluator.vision.tower`).

`open_clip` (default): the tower open_clip builds from `vision.layers` (4 ints: its ModifiedResNet, an int: a ViT).
`cnn`: `FullResolutionCNN`, a plain CNN whose first two convolutions see every pixel before any pooling, with global
max pooling at the end. The ModifiedResNet's stem pools to a quarter of the image in its first layers, and the
smallest phenotype marks of the phantoms (a few pixels at 64 px) are lost there: measured with
`bench/phenotype_detectability.py atlas --arch cnn32` (docs/evaluation.md, "A tower that keeps full resolution").
"""
from __future__ import annotations

import torch.nn as nn

TOWERS = ("open_clip", "cnn")


def _block(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class FullResolutionCNN(nn.Sequential):
    """conv(w) conv(w) pool conv(2w) pool conv(2w) pool conv(4w) global-max-pool linear(output_dim).

    Carries `output_dim` and `image_size` as open_clip's towers do, so it can replace `CLIP.visual`. Max pooling
    (not mean) so a mark a few pixels wide is not averaged away over the face.
    """

    def __init__(self, output_dim: int, width: int = 32, image_size: int = 64):
        c = int(width)
        super().__init__(*_block(3, c), *_block(c, c), nn.MaxPool2d(2), *_block(c, 2 * c), nn.MaxPool2d(2),
                         *_block(2 * c, 2 * c), nn.MaxPool2d(2), *_block(2 * c, 4 * c), nn.AdaptiveMaxPool2d(1),
                         nn.Flatten(), nn.Linear(4 * c, output_dim))
        self.output_dim = int(output_dim)
        self.image_size = int(image_size)


def vision_tower(cfg: dict) -> str:
    """The `vision.tower` of a tiny-CLIP config (configs written before the key existed: `open_clip`)."""
    return str((cfg.get("vision") or {}).get("tower") or "open_clip")
