"""Re-estimate a run's token-centring statistics under its saved (EMA) encoder weights, into a copy of the run.

    python bench/token_stats.py RUN OUT [--batches 300] [--seed 0]

The EMA averages the encoder's parameters only: the running mean / variance its token centring (encoder.center_tokens)
reads at inference were tracked under the raw weights of the last ~10 training batches (momentum 0.1). This copies
RUN to OUT (without checkpoints/, samples/, evaluation/, metrics.json, report.md: OUT is no evaluated run) and
replaces OUT/encoder's statistics by their average over `--batches` draws of trainer.batch_size training rows
(uniform, as the trainer draws them; an ungraded row at the unknown stage) under the saved weights, and prints how
far they moved (in standard deviations). Runs whose rows this does not rebuild are refused: phenotype-atlas or
observed-set conditioning, an age input. Compare the two with `bench/heldout_draws.py RUN OUT`.
Figures in docs/encoder.md ("Token centring and the EMA") came from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.training_data import row_severities, train_rows

    run, out = Path(args.run), Path(args.out)
    if out.resolve() == run.resolve():
        raise SystemExit("OUT must be another folder than RUN (RUN's encoder is kept as it is)")
    if out.exists():
        raise SystemExit(f"{out} exists; name a new folder")
    _, cond, _, cfg = load_run(run)  # everything checked before OUT is written
    encoder = cond.encoder
    bn = getattr(encoder, "token_center", None) if encoder is not None else None
    if bn is None:
        raise SystemExit(f"{run}: its encoder centres no tokens (encoder.center_tokens=false, tokens=phenotypes, "
                         "or no KG conditioning): nothing to re-estimate")
    t = cfg.trainer
    if t.get("observed_phenotypes") or float(t.get("atlas_share") or 0) > 0 or getattr(encoder, "age_groups", 0):
        raise SystemExit(f"{run}: trained on observed phenotype sets, atlas faces or with ages, whose inputs this "
                         "script does not rebuild")
    if not (run / "data.json").is_file():  # a baselines generator folder: its data.json, evaluator, profiles are OUT's
        raise SystemExit(f"{run}: no data.json (a baselines generator folder?); give a train run folder")
    data = json.loads((run / "data.json").read_text())
    # the rows the trainer drew from, conditioned as it conditioned them (an ungraded row at the unknown stage)
    df = train_rows(Path(data["manifest"]), cond.profiles, set(data.get("heldout") or []))
    index = {p.disease_id: i for i, p in enumerate(cond.profiles)}
    rows = torch.tensor([index[d] for d in df["disease"]])
    severity = row_severities(df)
    before = bn.running_mean.clone(), bn.running_var.clone()
    momentum, batch = bn.momentum, int(cfg.trainer.batch_size)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # encoder dropout draws from the global generators
    bn.reset_running_stats()
    encoder.train()
    with torch.no_grad():
        for k in range(args.batches):
            bn.momentum = 1.0 / (k + 1)  # a running mean with momentum 1/(k+1) is the plain average
            pick = torch.randint(0, len(rows), (batch,), generator=g)
            cond.tokens(rows[pick], severity[pick])
    bn.momentum = momentum
    encoder.eval()
    z = (before[0] - bn.running_mean) / bn.running_var.sqrt()
    ratio = before[1] / bn.running_var
    print(f"{run}: {len(rows)} training rows, {args.batches} batches of {batch}; the saved means moved "
          f"{z.abs().mean():.4f} sd on average (max {z.abs().max():.4f}); saved / re-estimated variance: median "
          f"{ratio.median():.3f} (range {ratio.min():.3f}-{ratio.max():.3f})")
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run, staging, ignore=shutil.ignore_patterns("checkpoints", "samples", "evaluation", "metrics.json",
                                                                 "report.md"))
    encoder.save_pretrained(staging / "encoder")
    os.replace(staging, out)  # whole or not at all: a half-made OUT read as "no change"
    print(f"wrote {out} (compare: python bench/heldout_draws.py {run} {out})")


if __name__ == "__main__":
    main()
