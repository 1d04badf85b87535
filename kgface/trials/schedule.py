"""The treatment schedule of an N-of-1 trial: blocks of days, each under one treatment (docs/trials.md).

A patient's schedule is a reference block (`Baseline`, no treatment; required: `baseline_days` must exceed the
analysis's `skip_days`, the effects are differences from it) followed by `cycles` cycles of the treatment blocks,
with `washout_days` untreated days (`Washout`) between consecutive treatment blocks:

    order: alternating   every cycle in the listed order           Baseline A B A B
    order: randomised    every cycle a random permutation (per     Baseline A B B A   (the usual N-of-1 design:
                         patient, from the trial's seed)                              randomised pairs for two)
    order: [A, B, B, A]  this sequence, repeated `cycles` times

Everything is checked before anything is simulated: durations must be whole numbers of days (blocks >= 1 day),
every treatment the order names must be declared, every declared treatment must be given, and each compared level
(the reference and every treatment) must keep days after the analysis drops the first `skip_days` of each block.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

WASHOUT = "Washout"
ORDERS = ("alternating", "randomised")


class ScheduleError(UserError):
    """A schedule that cannot be run or analysed as given."""


@dataclass(frozen=True)
class Block:
    index: int        # 1-based position in the patient's schedule
    treatment: str
    start: int        # 0-based study day of the block's first day
    days: int


@dataclass(frozen=True)
class Schedule:
    treatments: tuple[str, ...]
    order: str | tuple[str, ...]
    cycles: int
    block_days: int
    baseline_days: int
    washout_days: int
    reference: str = "Baseline"

    @property
    def treatment_blocks(self) -> int:
        """Treatment blocks per patient (the reference block not counted)."""
        return (len(self.order) if isinstance(self.order, tuple) else len(self.treatments)) * self.cycles

    @property
    def order_text(self) -> str:
        """`order` as the config writes it, for messages: `alternating`, `randomised` or `[A, B, A]`."""
        return self.order if isinstance(self.order, str) else "[" + ", ".join(self.order) + "]"

    @property
    def days(self) -> int:
        """Days per patient."""
        n = self.treatment_blocks
        return self.baseline_days + n * self.block_days + (n - 1) * self.washout_days

    def blocks(self, rng: np.random.Generator) -> list[Block]:
        """One patient's blocks; `rng` draws the randomised order (unused otherwise)."""
        if isinstance(self.order, tuple):
            sequence = list(self.order) * self.cycles
        elif self.order == "alternating":
            sequence = list(self.treatments) * self.cycles
        else:
            sequence = [str(t) for _ in range(self.cycles) for t in rng.permutation(list(self.treatments))]
        out: list[Block] = []
        day = 0
        if self.baseline_days:
            out.append(Block(1, self.reference, 0, self.baseline_days))
            day = self.baseline_days
        for k, t in enumerate(sequence):
            if k and self.washout_days:
                out.append(Block(len(out) + 1, WASHOUT, day, self.washout_days))
                day += self.washout_days
            out.append(Block(len(out) + 1, t, day, self.block_days))
            day += self.block_days
        return out


def days_of(blocks: list[Block]) -> dict[str, np.ndarray]:
    """Per study day: `day` (1-based), `block`, `day_in_block` (1-based), `treatment`."""
    day, block, in_block, treatment = [], [], [], []
    for b in blocks:
        for k in range(b.days):
            day.append(b.start + k + 1)
            block.append(b.index)
            in_block.append(k + 1)
            treatment.append(b.treatment)
    return {"day": np.asarray(day), "block": np.asarray(block), "day_in_block": np.asarray(in_block),
            "treatment": np.asarray(treatment, dtype=object)}


def _days(value, key: str, minimum: int) -> int:
    try:
        f = float(value)
        if isinstance(value, bool):  # float(True) = 1: a flag is not a duration
            raise TypeError
    except (TypeError, ValueError, OverflowError):  # float() of a huge integer overflows
        raise ScheduleError(f"{key}={value!r} is not a number of days") from None
    if not math.isfinite(f):  # int(nan) / int(inf) would raise a traceback below
        raise ScheduleError(f"{key}={value!r} is not a number of days")
    if f != int(f):
        raise ScheduleError(f"{key}={value} must be a whole number of days")
    if f < minimum:
        raise ScheduleError(f"{key}={int(f)}: " + ("durations cannot be negative" if f < 0 else
                                                    f"must be at least {minimum}"))
    return int(f)


def _names(value, key: str, alternatives: str = "") -> tuple[str, ...]:
    """A list of treatment names; a string would otherwise be split into its characters, a number fail obscurely."""
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    if not ok or not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in value):
        raise ScheduleError(f"{key}={value!r} must be {alternatives}a list of treatment names, e.g. [A, B]")
    return tuple(str(t) for t in value)


def schedule_from_config(c, skip_days: int = 0) -> Schedule:
    """The validated schedule of a `trial.schedule` config (a dict or DictConfig); `skip_days` is the analysis's
    run-in, checked here so that a schedule leaving a compared level without analysable days fails before running."""
    reference = str(c.get("reference", "Baseline"))
    treatments = _names(c.get("treatments") or [], "trial.schedule.treatments")
    if not treatments:
        raise ScheduleError("trial.schedule.treatments is empty; name at least one treatment, e.g. [A, B]")
    if reference == WASHOUT:  # its rows would be dropped with the gaps, leaving the fit without a reference
        raise ScheduleError(f"trial.schedule.reference={WASHOUT} is reserved for the untreated gaps; name the "
                            "reference otherwise, e.g. Baseline")
    reserved = {reference, WASHOUT} & set(treatments)
    if reserved:
        raise ScheduleError(f"trial.schedule.treatments names {sorted(reserved)[0]!r}, which is reserved for the "
                            f"reference ({reference}) or the untreated gaps ({WASHOUT})")
    if len(set(treatments)) != len(treatments):
        raise ScheduleError(f"trial.schedule.treatments {list(treatments)} lists a treatment twice")
    raw = c.get("order", "alternating")
    if isinstance(raw, str):
        if raw not in ORDERS:
            raise ScheduleError(f"trial.schedule.order={raw} is unknown; use {' | '.join(ORDERS)} or a list of "
                                f"treatments, e.g. [A, B, B, A]")
        order: str | tuple[str, ...] = raw
    else:
        order = _names(raw, "trial.schedule.order", f"{' | '.join(ORDERS)} or ")
        if not order:
            raise ScheduleError("trial.schedule.order is an empty list; give the treatment sequence, e.g. [A, B, B, A]")
        unknown = sorted(set(order) - set(treatments))
        if unknown:
            raise ScheduleError(f"trial.schedule.order names unknown treatment(s) {', '.join(unknown)}; the "
                                f"treatments are {', '.join(treatments)} (the reference {reference} is the first "
                                "block, set by baseline_days)")
        missing = [t for t in treatments if t not in order]
        if missing:
            raise ScheduleError(f"trial.schedule.order never gives {', '.join(missing)}: its effect cannot be "
                                "estimated; add it to the order or drop it from treatments")
    s = Schedule(treatments=treatments, order=order, cycles=_days(c.get("cycles", 1), "trial.schedule.cycles", 1),
                 block_days=_days(c.get("block_days"), "trial.schedule.block_days", 1),
                 baseline_days=_days(c.get("baseline_days", 0), "trial.schedule.baseline_days", 0),
                 washout_days=_days(c.get("washout_days", 0), "trial.schedule.washout_days", 0),
                 reference=reference)
    skip = _days(skip_days, "trial.analysis.skip_days", 0)
    if s.baseline_days <= skip:
        raise ScheduleError(f"the reference block ({reference}) has {s.baseline_days} days and the analysis drops the "
                            f"first {skip} days of each block: nothing is left to compare the treatments with; "
                            f"set trial.schedule.baseline_days > {skip}")
    if s.block_days <= skip:
        raise ScheduleError(f"trial.schedule.block_days={s.block_days} but the analysis drops the first {skip} days "
                            f"of each block (trial.analysis.skip_days): no treatment day would be analysed")
    return s
