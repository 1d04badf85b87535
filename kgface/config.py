"""Hydra wiring shared by the entry modules (`python -m kgface.<stage>`), and the parsers of override values
(`as_list`, `as_number`) and `container` (a config node as plain Python) that they and the code they call share.

An entry module defines `run(cfg, out_dir)` and wires it with `main = entry("<config name>")(run)`. Then:
- `python -m kgface.profiles diseases='[ORPHA:870]' hydra.run.dir=OUT` runs it through Hydra (overrides, run dir);
- `main(["diseases=[ORPHA:870]", "hydra.run.dir=OUT"])` does the same from Python (tests import `main`);
- `compose("profiles", [...])` returns the composed config without running anything.
A user error (bad file, unknown id, missing weights) prints one line `kgface.<stage>: error: ...` and exits 2.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import UserError
from .kg.errors import KGError
from .resources import conf_dir

USER_ERRORS = (UserError, KGError, FileNotFoundError)
USER_OS_ERRORS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # the user's to fix: one line


def as_list(value, key: str) -> list:
    """A list-valued override (`seeds=[0,1]`, `stages=3`, `keep=[eyes]`) as a list; an unquoted `{HP:...: 0.8}`, which
    Hydra parses as a dict, is an error naming `key`."""
    if value is None:
        return []
    if isinstance(value, DictConfig):
        raise UserError(f"{key}= parsed as a dict ({OmegaConf.to_container(value)}); write a quoted list, e.g. "
                        f"'{key}=[\"HP:0000316=0.8\",\"HP:0000508=0.3\"]'")
    if isinstance(value, (ListConfig, list, tuple)):
        return list(value)
    return [value]


def disease_list(value, key: str = "diseases", allow_empty: bool = False) -> list[str] | None:
    """A diseases override as a list: null = the panel (None), one id (`diseases=ORPHA:870`) = a list of one; an
    empty list only where it means none (data.heldout=[])."""
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (ListConfig, list, tuple)):
        items = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else list(value)
        if (items or allow_empty) and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in items):
            return [str(i) for i in items]
    rest = f"{key}=[] to hold none out" if allow_empty else f"{key}=null for the kg's default panel"
    raise UserError(f"{key}={value}: give disease ids or names, e.g. {key}='[ORPHA:870,MONDO:0011438]', or {rest}")


def heldout_diseases(cfg) -> set[str]:
    """A job config's `data.heldout` as a set: what the generator and its VAE never train on (kgface.train and the
    bench scripts that ask for its cached VAE read it alike)."""
    return set(disease_list(cfg.data.get("heldout"), "data.heldout", allow_empty=True) or [])


def container(node) -> dict:
    """A config node as plain Python (interpolations resolved); None as {}."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def as_number(value, key: str, hint: str = "") -> float:
    """A numeric override as a finite float, or a one-line error naming `key` and, with `hint`, what to give (nan
    and inf pass no range check)."""
    what = f"; {hint}" if hint else ""
    if isinstance(value, bool):  # `trainer.lr=true` is YAML's boolean, whose float is 1.0
        raise UserError(f"{key}={value}: not a number{what}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # float() of a huge integer overflows
        raise UserError(f"{key}={value}: not a number{what}") from None
    if not math.isfinite(number):
        raise UserError(f"{key}={value}: not a finite number{what}")
    return number


def as_eta(value, key: str) -> float:
    """A sampler's eta (fresh noise per DDIM step) as a float >= 0, or a one-line error naming `key`: the train job's
    `model.sample.eta` (checked before training, since the samples are drawn after it) and generate's `eta=`."""
    eta = as_number(value, key)
    if not eta >= 0:
        raise UserError(f"{key}={value}: fresh noise per DDIM step is >= 0 (0 = deterministic DDIM, 1 = ancestral)")
    return eta


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """The config an entry would run with (Hydra's compose API; no run directory, no logging set-up)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None, job_name=config_name):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's run directory when running under Hydra, else `cfg.out_dir` (for direct calls of run())."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    out = cfg.get("out_dir") if isinstance(cfg, DictConfig) else None
    if not out:
        raise UserError("no output directory: run through Hydra or set out_dir")
    return Path(out)


@contextlib.contextmanager
def claim_output(out_dir: Path):
    """Hold OUT for this job: two jobs writing one folder at once (one hydra.run.dir given twice; the default
    outputs/<stage>/<time> is unique to the microsecond) would interleave their files. An advisory lock on the
    folder itself: the lock writes nothing into OUT, and the kernel drops it when the process ends, so a killed job
    leaves no stale lock. Hydra has written the refused job's OUT/.hydra/ before this runs. Where locks are not
    available (no fcntl, a file system without them) the job runs as before."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another kgface job is writing into this folder now; wait for it, or give "
                            "this one hydra.run.dir=OTHER") from None
        except OSError:  # e.g. ENOLCK on some network file systems: no lock, as before
            pass
        yield
    finally:
        os.close(fd)


def entry(config_name: str) -> Callable:
    """Decorator turning `run(cfg, out_dir)` into a Hydra main that also accepts an override list."""

    def wrap(run: Callable) -> Callable:
        @functools.wraps(run)
        def task(cfg: DictConfig):
            try:
                out_dir = output_dir(cfg)
                with claim_output(out_dir):
                    return run(cfg, out_dir)
            except USER_ERRORS as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"kgface.{config_name}: error: {message}", file=sys.stderr)
                sys.exit(2)
            except OSError as exc:  # a folder this user may not write (a shared cache), a full or read-only disk
                if exc.errno not in USER_OS_ERRORS:
                    raise
                # a failing write() names no file
                where = "" if exc.filename else " (writing under paths.cache_dir or hydra.run.dir)"
                print(f"kgface.{config_name}: error: {exc}{where}; check permissions and free space there, or set "
                      "paths.cache_dir / hydra.run.dir elsewhere", file=sys.stderr)
                sys.exit(2)

        def main(overrides: list[str] | None = None):
            try:  # found when called, not at import: a bad KGFACE_ASSETS is then this job's one-line error
                config_path = str(conf_dir())
            except FileNotFoundError as exc:
                print(f"kgface.{config_name}: error: {exc}", file=sys.stderr)
                sys.exit(2)
            hydra_main = hydra.main(version_base=None, config_path=config_path, config_name=config_name)(task)
            if overrides is None:
                return hydra_main()
            saved = sys.argv
            sys.argv = [saved[0] if saved else config_name, *overrides]
            try:
                GlobalHydra.instance().clear()
                return hydra_main()
            finally:
                sys.argv = saved

        main.run = run
        return main

    return wrap
