"""How much of a face an SDEdit transformation keeps, and how often it reaches its target, against its strength.

    python bench/transform_strength.py RUN [--strengths 0.3 0.45 0.6 0.75 0.9] [--identities N] [--out DIR]
                                       [--face-identity auto|dlib|none] [--img PNG] [--threads 1]

The train job transforms `samples.transform_identities` healthy test faces into every disease at stage 3, and a
stage-3 face of each disease back to healthy, at `samples.transform_strength` (0.6), and reports
`transform.target_top1` and `transform.identity_similarity`. This draws the same jobs (same faces, same seeds: the
0.6 column repeats the run's own numbers) at each strength, reads them with the same code (`evaluate_sets`, the run's
evaluator; dlib's same-person rate when the [dlib] extra is installed), and prints them beside the run's identity
ends: two real test faces of one identity at another stage, and of two identities
(`evaluator.identity_same_cosine` / `_different_cosine`). --img writes one healthy face drawn towards its first
diseases, a row per strength. Figures in docs/generation.md came from this script.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75, 0.9])
    ap.add_argument("--identities", type=int, default=None, help="healthy test identities (default: the run's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the sets go (default: outputs/transform_strength/<run folder name>, one per run)")
    ap.add_argument("--face-identity", default="auto", choices=["auto", "dlib", "none"])
    ap.add_argument("--img", type=Path, default=None, help="write the strength sheet here (PNG)")
    ap.add_argument("--columns", type=int, default=6, help="targets shown in the sheet")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from kgface.data.manifest import read_manifest
    from kgface.diffusion.generator import Generator
    from kgface.diffusion.run_loading import heldout_of, load_run
    from kgface.diffusion.samples import fit_label, transform_set, write_set
    from kgface.evaluation import evaluate_sets, load_evaluator
    from kgface.evaluation.face_identity import load_face_identity
    from kgface.evaluation.inputs import HEALTHY
    from kgface.run_files import run_file
    from kgface.run_measure import transform_seed
    from kgface.sheets import labelled_sheet

    backbone, cond, profiles, cfg = load_run(args.run)
    heldout = heldout_of(args.run)
    evaluator = load_evaluator(args.run)
    sample = cfg.model.get("sample", {})
    gen = Generator(backbone, cond, guidance=float(sample.get("guidance", 3.0)), steps=int(sample.get("steps", 20)),
                    eta=float(sample.get("eta", 0.0)))
    data = run_file(args.run, "data.json")  # a baselines generator (OUT/<mode>) keeps it in OUT
    if data is None:
        raise SystemExit(f"{args.run}: no data.json (not a kgface.train output folder)")
    real = read_manifest(json.loads(data.read_text())["manifest"])[0]
    test = real[real["split"] == "test"]
    known = {p.disease_id for p in cond.profiles}
    drawable = profiles if cond.mode != "class" else [p for p in profiles if p.disease_id in known]  # as the run
    n_ids = int(args.identities if args.identities is not None else cfg.samples.get("transform_identities", 0))
    if n_ids <= 0:
        raise SystemExit(f"{args.run}: samples.transform_identities is 0 (the run drew no transformations); give "
                         "--identities N")
    seed = transform_seed(cfg)  # the train job's own transformations
    face_identity = load_face_identity(args.face_identity)
    metrics_file = run_file(args.run, "metrics.json")
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file is not None else {}
    ends = run_metrics.get("evaluator", {})
    results, sheet = [], []
    for strength in args.strengths:
        images, rows = transform_set(gen, drawable, test, n_ids, strength, seed,
                                     seed_order=[p.disease_id for p in profiles])
        if not rows:
            raise SystemExit(f"{args.run}: no healthy test face to transform")
        out = args.out or Path("outputs/transform_strength") / Path(args.run).resolve().name
        manifest = write_set(images, rows, out / f"strength_{strength:g}", heldout)
        m, scored = evaluate_sets(evaluator, generated_df=manifest, profiles=profiles, heldout=heldout,
                                  face_identity=face_identity, return_scored=True)
        t, tr = scored["generated"].table, m["transform"]
        hit = (t["pred_disease"] == t["requested_disease"]).to_numpy()
        to_healthy = (t["requested_disease"] == HEALTHY).to_numpy()
        results.append({"strength": strength, "n": tr["n"], "target_top1": tr["target_top1"],
                        "target_top1_ci95": tr["target_top1_ci95"],
                        "to_disease_top1": float(hit[~to_healthy].mean()) if (~to_healthy).any() else float("nan"),
                        "to_healthy_top1": float(hit[to_healthy].mean()) if to_healthy.any() else float("nan"),
                        "identity_similarity": tr["identity_similarity"],
                        "same_person_dlib": tr.get("identity_same_person_dlib")})
        print(json.dumps(results[-1]))
        first = [i for i, r in enumerate(rows) if r["disease"] != HEALTHY][:args.columns]  # one face, its first targets
        sheet.append((f"strength {strength:g}", [images[i] for i in first]))
        names = [fit_label(evaluator.names.get(rows[i]["disease"], rows[i]["disease"]), 16) for i in first]
        source_image = rows[first[0]]["source_image"] if first else None
    print(f"\nrun {args.run}: {results[0]['n']} transformations per strength; real identity ends: same identity "
          f"{ends.get('identity_same_cosine', float('nan')):.2f}, different identities "
          f"{ends.get('identity_different_cosine', float('nan')):.2f} (evaluator feature cosine)")
    print("| strength | target top-1 (95% CI) | to a disease / to healthy | identity cosine | dlib same person |")
    print("|---|---|---|---|---|")
    for r in results:
        lo, hi = r["target_top1_ci95"]
        dlib = "-" if r["same_person_dlib"] is None else f"{r['same_person_dlib']:.2f}"
        print(f"| {r['strength']:g} | {r['target_top1']:.2f} ({lo:.2f}-{hi:.2f}) | {r['to_disease_top1']:.2f} / "
              f"{r['to_healthy_top1']:.2f} | {r['identity_similarity']:.2f} | {dlib} |")
    if args.img is not None and source_image is None:
        print("no healthy face was drawn towards a disease: no sheet")
    elif args.img is not None:
        from PIL import Image

        from kgface.cache import atomic_path

        src = Image.open(source_image).convert("RGB").resize(tuple(images.shape[-2:][::-1]))
        rows_out = [(label, [src, *edits]) for label, edits in sheet]
        with atomic_path(args.img, suffix=".png") as tmp:
            labelled_sheet(rows_out, columns=["source", *names], label_width=90, cell=100).save(tmp, format="PNG")
        print(f"sheet: {args.img}")


if __name__ == "__main__":
    main()
