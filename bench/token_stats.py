"""Re-estimate a run's token-centring statistics under its saved (EMA) encoder weights, into a copy of the run.

    python bench/token_stats.py RUN OUT [--batches 300] [--seed 0]

The EMA averages the encoder's parameters only: the running mean / variance its token centring (encoder.center_tokens)
reads at inference were tracked under the raw weights of the last ~10 training batches (momentum 0.1). This copies
RUN to OUT (without checkpoints/, samples/, evaluation/) and replaces OUT/encoder's statistics by their average over
`--batches` draws of trainer.batch_size training rows (uniform, as the trainer draws them) under the saved weights,
and prints how far they moved (in standard deviations). Compare the two with `bench/heldout_draws.py RUN OUT`.
Figures in docs/encoder.md ("Token centring and the EMA") came from this script.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from kgface.diffusion.run_loading import load_run

    run, out = Path(args.run), Path(args.out)
    if out.resolve() == run.resolve():
        raise SystemExit("OUT must be another folder than RUN (RUN's encoder is kept as it is)")
    if out.exists():
        raise SystemExit(f"{out} exists; name a new folder")
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints", "samples", "evaluation"))
    _, cond, _, cfg = load_run(out)
    encoder = cond.encoder
    bn = getattr(encoder, "token_center", None) if encoder is not None else None
    if bn is None:
        shutil.rmtree(out)
        raise SystemExit(f"{run}: its encoder centres no tokens (encoder.center_tokens=false, tokens=phenotypes, "
                         "or no KG conditioning): nothing to re-estimate")
    if len(cond._graphs) != len(cond.profiles):
        shutil.rmtree(out)
        raise SystemExit(f"{run}: trained on observed phenotype sets or atlas faces, whose rows this script does not "
                         "rebuild")
    manifest = Path(json.loads((run / "data.json").read_text())["manifest"])
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    index = {p.disease_id: i for i, p in enumerate(cond.profiles)}
    df = df[(df["split"] == "train") & df["disease"].isin(index)]
    rows = torch.tensor([index[d] for d in df["disease"]])
    severity = torch.tensor(pd.to_numeric(df["severity"], errors="coerce").fillna(
        df["stage"].astype(float)).to_numpy(), dtype=torch.float32)
    before = bn.running_mean.clone(), bn.running_var.clone()
    momentum, batch = bn.momentum, int(cfg.trainer.batch_size)
    g = torch.Generator().manual_seed(args.seed)
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
    encoder.save_pretrained(out / "encoder")
    print(f"wrote {out} (compare: python bench/heldout_draws.py {run} {out})")


if __name__ == "__main__":
    main()
