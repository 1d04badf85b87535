"""Phantom renderer speed on one core: images per second at 64 and 128 px, healthy and with 10 effects.

    python bench/phantom_speed.py [--n 400]

Identities are sampled once outside the timed loop (a dataset builder samples each identity once too).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from kgface.data.phantom import render_face, sample_identity

TEN_EFFECTS = {
    "eye_slant[direction=1]": 0.8, "epicanthus": 0.7, "nasal_bridge_depressed": 0.6, "nose_length[direction=-1]": 0.5,
    "tongue_protrusion": 0.6, "short_neck": 0.7, "ear_height[direction=1]": 0.5, "round_face": 0.5,
    "erythema[pattern=central]": 0.6, "acne": 0.5,
}


def images_per_second(identities, effects, size, n) -> float:
    start = time.perf_counter()
    for k in range(n):
        render_face(identities[k % len(identities)], effects, size=size)
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    identities = [sample_identity(0, i) for i in range(50)]
    for identity in identities:  # warm-up: each identity's lesion sites are computed once and cached (acne.py), so
        render_face(identity, TEN_EFFECTS)  # the first arm timed must not pay them for the later ones
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, one core, "
          f"supersample 4, {args.n} images each")
    print("| size | healthy (img/s) | 10 effects (img/s) |")
    print("|---|---|---|")
    for size in (64, 128):
        healthy = images_per_second(identities, {}, size, args.n)
        ill = images_per_second(identities, TEN_EFFECTS, size, args.n)
        print(f"| {size} | {healthy:.0f} | {ill:.0f} |")


if __name__ == "__main__":
    main()
