"""The gallery of docs/generation.md: one kgface.generate call per mode on a run, copied into docs/img/.

    python bench/gallery.py --run RUN_DIR [--out outputs/gallery] [--img docs/img]
    python bench/gallery.py --micro                  # no trained run: train the test suite's micro run first (~20 s)

Each mode writes a full output folder under --out (images, manifest.csv, grid.png); the grids and the progression
strip are copied to --img as generation_<mode>.png. transform turns the run's stage-3 samples, one per disease (up to
8), back to healthy; compose draws the run's first held-out disease (never trained) from its phenotypes. The micro run is trained
for 4 steps on 32 px phantom faces: its pictures show the layout of each output, not what a trained model draws.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a kgface.train output directory")
    ap.add_argument("--micro", action="store_true", help="train the micro test run into OUT/run and use it")
    ap.add_argument("--out", type=Path, default=Path("outputs/gallery"))
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kgface.cache import atomic_path
    from kgface.generate import main as generate

    run = args.run
    if args.micro:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from kgface.train import main as train
        from tests.test_train_smoke import MICRO

        run = args.out / "run"
        if not (run / "adapter.safetensors").is_file():
            train(list(MICRO)
                  + [f"hydra.run.dir={run}"])
    if run is None:
        ap.error("give --run RUN_DIR or --micro")
    common = [f"run={run}", "progress=false"]
    # transform: the run's own stage-3 samples, one per disease, up to 8 (all would make a sheet of hundreds)
    drawn = sorted((run / "samples" / "images").glob("sample_*.png"))
    first = {}
    for path in [p for p in drawn if "_s3_" in p.name] or drawn:
        first.setdefault(path.name.split("_s")[0], path)
    sources = args.out / "transform_inputs"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    for path in list(first.values())[:8]:
        shutil.copyfile(path, sources / path.name)
    # compose: the run's first held-out disease (never trained: drawn from its phenotypes), else Williams syndrome
    from kgface.run_files import run_file

    data = run_file(run, "data.json")  # a baselines generator (OUT/<mode>) keeps it in OUT
    heldout = json.loads(data.read_text()).get("heldout") if data is not None else None
    composed = (heldout or ["ORPHA:904"])[0]
    calls = {
        "sample": ["mode=sample", "stages=[0,1,2,3]", "seeds=[0,1]"],
        "transform": ["mode=transform", f"input={sources}", "target=healthy", "strength=0.6", "keep=[eyes,hair]"],
        "progression": ["mode=progression", "disease=ORPHA:870", "frames=6", "seeds=[0]"],
        "compose": ["mode=compose", f"disease={composed}", "stages=[1,3]", "seeds=[0,1]",
                    'phenotypes=["HP:0000316=0.8","HP:0000508=0.3"]'],
    }
    args.img.mkdir(parents=True, exist_ok=True)
    for mode, overrides in calls.items():
        out = args.out / mode
        generate(common + overrides + [f"hydra.run.dir={out}"])
        picture = out / "strips" / "seed0.png" if mode == "progression" else out / "grid.png"
        with atomic_path(args.img / f"generation_{mode}.png") as tmp:
            shutil.copyfile(picture, tmp)
        print(f"{mode}: {out} -> {args.img / f'generation_{mode}.png'}")


if __name__ == "__main__":
    main()
