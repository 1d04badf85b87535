"""images_digest: the key of the caches built from a dataset's pixels."""
import os

import numpy as np
from PIL import Image

from kgface.data.fingerprint import images_digest


def write_set(folder, values):
    folder.mkdir()
    for i, v in enumerate(values):
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(folder / f"{i}.png")
    (folder / "manifest.csv").write_text("path,split\n" + "".join(f"{i}.png,train\n" for i in range(len(values))))
    return folder / "manifest.csv"


def test_the_digest_follows_the_pixels_not_the_location(tmp_path):
    a = write_set(tmp_path / "a", [10, 20, 30])
    b = write_set(tmp_path / "b", [10, 20, 30])
    assert images_digest(a) == images_digest(b)  # the same images elsewhere: the same key
    os.symlink(tmp_path / "a", tmp_path / "link")  # reached through a symlink (a cluster's home, a cache folder)
    linked = tmp_path / "link" / "manifest.csv"
    resolved = [tmp_path / "a" / f"{i}.png" for i in range(3)]  # read_manifest's abspath column is resolved
    assert images_digest(linked) == images_digest(linked, resolved) == images_digest(a)
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "b" / "1.png")  # new pixels, same manifest
    assert images_digest(b) != images_digest(a)
