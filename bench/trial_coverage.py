"""Coverage of the trial analysis's 95% intervals under the settings conf/trial/acne_ab.yaml invites changing.

    python bench/trial_coverage.py [--trials 300] [--seed 1]

For each setting (a list of overrides of the default trial config) prints, for A / B / A - B: the pooled analysis's
interval coverage, mean bias and mean interval width over `--trials` simulated trials (`coverage_study`, true
severities, no images), and for two settings the per-patient fits' coverage (`patient_effects` over half as many
trials x 4 patients). Monte-Carlo standard error of a coverage near 0.95: ~0.013 at 300 trials. A few minutes on
one core; docs/trials.md has the figures.
"""
from __future__ import annotations

import argparse
import warnings

TAU3 = {f"severity.treatments.{t}.{k}": 3.0 for t in "AB" for k in ("tau", "tau_off")}
TAU5 = {f"severity.treatments.{t}.{k}": 5.0 for t in "AB" for k in ("tau", "tau_off")}
POOLED = [
    ("default", {}),
    ("AR(1) 0.5", {"severity.noise.ar": 0.5}),
    ("baseline 7 d, blocks 14 d", {"schedule.baseline_days": 7, "schedule.block_days": 14}),
    ("baseline 7 d, blocks 14 d, AR 0.5", {"schedule.baseline_days": 7, "schedule.block_days": 14,
                                           "severity.noise.ar": 0.5}),
    ("baseline 20 d, blocks 10 d", {"schedule.baseline_days": 20}),
    ("tau = tau_off = 3 d", TAU3),
    ("tau = tau_off = 5 d", TAU5),
    ("A.sd 0.3", {"severity.treatments.A.sd": 0.3}),
    ("A.sd 0.3, cluster", {"severity.treatments.A.sd": 0.3, "analysis.cov": "cluster"}),
    ("effects by_patient", {"analysis.effects": "by_patient"}),
    ("A.sd 0.3, effects by_patient", {"severity.treatments.A.sd": 0.3, "analysis.effects": "by_patient"}),
]
PER_PATIENT = [("default", {}), ("AR(1) 0.5", {"severity.noise.ar": 0.5})]


def trial_cfg(overrides: dict):
    from omegaconf import OmegaConf

    from kgface.resources import conf_dir

    cfg = OmegaConf.load(conf_dir() / "trial" / "acne_ab.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    import numpy as np

    from kgface.trials.analysis import NotIdentifiable, coverage_study, patient_effects
    from kgface.trials.design import design_from_config, simulate

    warnings.simplefilter("ignore")  # statsmodels' small-sample notes

    def row(values, fmt):
        return " / ".join(fmt.format(v) for v in values)

    print(f"{'setting':36s} {'coverage A / B / A - B':24s} {'bias':24s} width")
    for name, overrides in POOLED:
        _, s = coverage_study(design_from_config(trial_cfg(overrides)), args.trials, args.seed)
        print(f"{name:36s} {row(s['coverage'], '{:.3f}'):24s} {row(s['bias'], '{:+.3f}'):24s} "
              f"{row(s['ci_width'], '{:.3f}')}")
    for name, overrides in PER_PATIENT:
        design, covered = design_from_config(trial_cfg(overrides)), {}
        for r in range(args.trials // 2):
            table, patients = simulate(design, 1_000_003 * (args.seed + 1) + r)
            try:
                pp = patient_effects(table, "true_severity", design,
                                     truths={k: p.effects for k, p in patients.items()})
            except NotIdentifiable:
                continue
            for effect, g in pp.groupby("effect", sort=False):
                covered.setdefault(effect, []).extend(g["covered"].astype(float))
        n = len(next(iter(covered.values()), []))
        print(f"{'per patient, ' + name:36s} {row([np.mean(v) for v in covered.values()], '{:.3f}'):24s} "
              f"(n = {n} intervals each)")


if __name__ == "__main__":
    main()
