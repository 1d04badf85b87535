"""Simulated multimodal N-of-1 trials: the daily outcome is an image of the patient's face (docs/trials.md).

- `schedule`: blocks of days under one treatment (Baseline, then treatments in alternating / randomised / given
  order, washouts) and their validation.
- `severity`: the severity model (baseline, treatment effects with onset / offset time constants, drift, AR(1)
  noise, clipping), pure functions of a seeded numpy Generator.
- `design`: a `trial=` config as a validated Design; `simulate` gives the daily table without images.
- `images`: baseline faces, one image per patient-day (SDEdit with shared noise), the evaluator's readings.
- `measurement`: calibration of the readings on real images, and the measurement model of the coverage study.
- `analysis`: treatment effects with intervals from true and measured severities (statsmodels OLS), per-patient
  effects, the coverage study; `report`: figures, GIFs and report.md.
The entry module is `kgface.trial` (a package and an entry module cannot share a name).
"""
from .analysis import coverage_study, estimate_effects, patient_effects
from .design import Design, design_from_config, simulate, true_effects
from .measurement import Calibration, MeasurementModel, fit_calibration, fit_measurement_model
from .schedule import Block, Schedule, ScheduleError, schedule_from_config
from .severity import Patient, SeverityModel, Treatment, effect_states, expected_severity, model_from_config

__all__ = [
    "coverage_study", "estimate_effects", "patient_effects", "Design", "design_from_config", "simulate",
    "true_effects", "Calibration", "MeasurementModel", "fit_calibration", "fit_measurement_model", "Block",
    "Schedule", "ScheduleError", "schedule_from_config", "Patient", "SeverityModel", "Treatment", "effect_states",
    "expected_severity", "model_from_config",
]
