"""The manifest: one CSV row per image, the same format for phantom, real and generated sets.

Columns (docs/data.md): path (relative to the manifest's folder), identity, disease (a KG id or `healthy`), stage
(int 0..3), severity (float 0..3), lesion_count (int, empty = not counted), split (train/val/test), source,
phenotypes (JSON: HPO id -> intensity in [0,1]; `{}` when unknown, as for real photos), age_group (optional).
Generated manifests add the request: mode, requested_disease, requested_stage, seed, source_image.

Reading validates every row: a bad label is an error (or, with on_error="skip", a counted, logged skip), never a
silently wrong label. Across rows: an image (compared by its resolved file) is listed once, healthy is stage 0
with no phenotype shown, age_group is empty or one of AGE_GROUPS, and a non-empty identity stays in one split (a person
in train and test leaks).
"""
from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..cache import atomic_path
from ..errors import UserError
from .phantom.identity import AGE_GROUPS

log = logging.getLogger(__name__)

COLUMNS = ["path", "identity", "disease", "stage", "severity", "lesion_count", "split", "source", "phenotypes",
           "age_group"]
GENERATED_COLUMNS = ["mode", "requested_disease", "requested_stage", "seed", "source_image"]
REQUIRED = ["path", "disease", "stage", "split"]
SPLITS = ("train", "val", "test")
N_STAGES = 4
ATLAS_FILE = "phenotype_atlas.csv"  # beside manifest.csv: the phantom's phenotype atlas (same columns, no disease)


class ManifestError(UserError):
    """A manifest row or file that cannot be used as it is."""


@dataclass
class ReadReport:
    rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (CSV line, reason)


def write_manifest(rows: pd.DataFrame | list[dict], path: str | os.PathLike) -> Path:
    """Write atomically; missing optional columns are filled (identity '', lesion_count empty, phenotypes {})."""
    df = pd.DataFrame(rows).copy()
    # read_manifest's frame writes back as it was read: its own abspath column (a machine's path, derived again on
    # reading) is dropped and its -1 for "not counted" is the empty cell again
    df = df.drop(columns=["abspath"], errors="ignore")
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = "{}" if col == "phenotypes" else ""
    # -1 ("not counted") and a missing count are the empty cell, also as a float column's -1.0 or NaN (ints beside
    # None), which the reader refused; a missing phenotype set is {} (NaN was written "NaN")
    df["lesion_count"] = ["" if _blank(v) or _minus_one(v) else v for v in df["lesion_count"]]
    df["phenotypes"] = ["{}" if _blank(v) else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                        for v in df["phenotypes"]]
    extra = [c for c in df.columns if c not in COLUMNS]
    with atomic_path(path, suffix=".csv") as tmp:
        df[COLUMNS + extra].to_csv(tmp, index=False)
    return Path(path)


def _number(value, column: str) -> float:
    """A finite float from a cell; ValueError naming the column otherwise (inf would overflow int(), nan compare
    false everywhere)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{column} '{value}' is not a finite number")
    return number


def _phenotypes(text) -> dict[str, float]:
    try:
        ph = json.loads(text) if isinstance(text, str) else dict(text)
    except json.JSONDecodeError:
        raise ValueError(f"phenotypes is not JSON: {str(text)[:60]}") from None
    except (TypeError, ValueError):
        raise ValueError(f"phenotypes is not a JSON object: {str(text)[:60]}") from None
    # null, nested objects, lists, strings and booleans are not intensities (float() would raise or accept true)
    if not isinstance(ph, dict) or any(not str(k).startswith("HP:") or isinstance(v, bool)
                                       or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0
                                       for k, v in ph.items()):
        raise ValueError("phenotypes must map HP ids to intensities in [0,1]")
    return {str(k): float(v) for k, v in ph.items()}


def safe_relpath(name: str) -> str | None:
    """`name` as a normalised posix path inside its root, or None if it is empty, absolute or climbs out with `..`.

    The check is lexical (no symlink resolution), so datasets made of symlinks still load."""
    text = str(name).strip().replace("\\", "/")
    drive = len(text) > 1 and text[0].isalpha() and text[1] == ":" and (len(text) == 2 or text[2] == "/")
    if not text or text.startswith("/") or drive:
        return None
    norm = posixpath.normpath(text)
    if norm == "." or norm == ".." or norm.startswith("../"):
        return None
    return norm


def _check_row(row: dict, root: Path, known_diseases: set[str] | None, check_files: bool) -> dict:
    """Validate and type one row; raises ValueError with the reason."""
    out = dict(row)
    rel = str(row["path"]).strip()
    if not rel:
        raise ValueError("empty path")
    if "\\" in rel:  # every reader joins the row's path to the folder as written: a backslash is no separator here
        raise ValueError(f"path '{rel}' uses '\\'; write paths with '/' (posix)")
    text = rel
    if os.path.isabs(text):  # accepted inside the manifest's folder (as it is spelled, or resolved)
        for base in (os.path.abspath(root), str(root.resolve())):
            try:
                inside = os.path.relpath(os.path.normpath(text), base)
            except ValueError:  # another drive (Windows)
                continue
            if inside != ".." and not inside.startswith("../"):
                text = inside
                break
    safe = safe_relpath(text)
    if safe is None:
        raise ValueError(f"path '{rel}' escapes the dataset root {root}")
    full = root.resolve() / safe  # lexical below the root: an image that is a symlink (a shared store) is allowed
    if ".." in Path(text).parts and os.path.realpath(root / text) != os.path.realpath(full):
        # `dir/../a.png` through a symlinked dir: the OS opens another file than the lexical reading names
        raise ValueError(f"path '{rel}' climbs with '..' out of a linked folder; write it without '..'")
    if check_files and not full.is_file():
        raise ValueError(f"image '{rel}' does not exist")
    out["abspath"] = str(full)
    # a short CSV row leaves its last cells NaN (keep_default_na=False or not): the string "nan" is no disease
    disease = "" if _blank(row["disease"]) else str(row["disease"]).strip()
    if not disease:
        raise ValueError("empty disease (use a KG id or 'healthy')")
    if disease.lower() == "healthy" and disease != "healthy":  # 'Healthy' would be a disease class of its own
        raise ValueError(f"disease '{disease}': write healthy faces as 'healthy' (lower case)")
    if known_diseases is not None and disease not in known_diseases:
        raise ValueError(f"disease '{disease}' is not one of the known labels")
    out["disease"] = disease
    try:
        stage_value = _number(row["stage"], "stage")
    except ValueError:
        raise ValueError(f"stage '{row['stage']}' is not an integer") from None
    if not 0 <= stage_value < N_STAGES or stage_value != int(stage_value):
        raise ValueError(f"stage {row['stage']} is outside 0..{N_STAGES - 1}")
    stage = int(stage_value)
    if disease == "healthy" and stage != 0:
        raise ValueError(f"disease 'healthy' has stage {stage}; healthy is stage 0")
    out["stage"] = stage
    sev = row.get("severity", "")
    sev_given = not (sev in ("", None) or pd.isna(sev))
    out["severity"] = _number(sev, "severity") if sev_given else float(stage)
    if not 0.0 <= out["severity"] <= N_STAGES - 1:
        raise ValueError(f"severity {sev} is outside 0..{N_STAGES - 1}")
    if disease == "healthy" and out["severity"] != 0:  # the generator is asked for healthy faces at severity 0 only
        raise ValueError(f"disease 'healthy' has severity {sev}; healthy is severity 0 (or empty)")
    text = ""  # stage_known in lower case ("": true)
    if "stage_known" in row:  # anything but "false" would count as a grade: "0" or "no" must not
        known = row["stage_known"]
        text = "" if _blank(known) else str(known).strip().lower()
        if text not in ("", "true", "false"):
            raise ValueError(f"stage_known '{known}' is not true or false (empty: true)")
        if disease == "healthy" and text == "false":
            raise ValueError("disease 'healthy' has stage_known false; healthy is stage 0, known")
    if sev_given and text != "false":
        from ..prompts.wording import stage_of  # (imported here: the data layer's import stays free of kg / prompts)

        if stage_of(out["severity"]) != stage:  # trained twice: the prompt reads the stage, the KG tokens the severity
            raise ValueError(f"severity {sev} lies in stage {stage_of(out['severity'])}'s bin [s - 0.5, s + 0.5) but "
                             f"stage is {stage}; correct one, or leave severity empty (it is then the stage); a set "
                             "written by an older kgface: rebuild it (kgface.dataset) or draw it again "
                             "(kgface.generate)")
    _heldout_flag(row.get("heldout", ""))
    lc = row.get("lesion_count", "")
    if lc == "" or _blank(lc):
        out["lesion_count"] = -1
    else:
        try:
            count = _number(lc, "lesion_count")
        except ValueError:
            count = -1.0
        if count < 0 or count != int(count):
            raise ValueError(f"lesion_count {lc} is not a non-negative integer")
        out["lesion_count"] = int(count)
    out["split"] = str(row["split"]).strip()
    if out["split"] not in SPLITS:
        raise ValueError(f"split '{row['split']}' is not one of {', '.join(SPLITS)}")
    out["phenotypes"] = _phenotypes(row.get("phenotypes", "") or "{}")
    shown = sorted(h for h, v in out["phenotypes"].items() if v > 0)
    if disease == "healthy" and shown:  # a sign on a healthy face would train the heads that healthy shows it
        raise ValueError(f"disease 'healthy' lists phenotype {shown[0]} at {out['phenotypes'][shown[0]]:g}; healthy "
                         "faces show none (phenotypes {}, or the disease's id)")
    # stripped: 'p1' and 'p1 ' are one person (a padded cell must not pass the identity leakage check as two)
    out["identity"] = str(row.get("identity", "") if not pd.isna(row.get("identity", "")) else "").strip()
    age = row.get("age_group", "")
    age = "" if _blank(age) else str(age)
    if age not in ("", *AGE_GROUPS):  # consumers map an unknown group to 'unknown' silently
        raise ValueError(f"age_group '{age}' is not one of {', '.join(AGE_GROUPS)} (or empty)")
    return out


def marked_heldout(df: pd.DataFrame) -> set[str]:
    """The diseases a manifest frame's `heldout` column marks (cells read as `_heldout_flag` reads them: any case,
    spaces around); none without the column."""
    if "heldout" not in df:
        return set()
    return set(df.loc[df["heldout"].astype(str).str.strip().str.lower() == "true", "disease"])


def _heldout_flag(value) -> bool:
    """A `heldout` cell: true, false or empty (false); anything else (1 / yes, which read as seen) is refused."""
    text = "" if _blank(value) else str(value).strip().lower()
    if text not in ("", "true", "false"):
        raise ValueError(f"heldout '{value}' is not true or false (empty: false)")
    return text == "true"


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _minus_one(value) -> bool:
    try:
        return float(str(value).strip()) == -1
    except ValueError:
        return False


def stage_known(df) -> "np.ndarray":
    """Rows whose stage was observed (a bool array). Real photos without a grade carry stage_known=False and a
    placeholder stage (kgface.data.real: 2); a stage head, caption, stage metric or training log must not read that
    placeholder as a label. read_manifest keeps the column as text, so "False" is parsed, never bool()'ed."""
    import numpy as np

    if "stage_known" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return df["stage_known"].astype(str).str.strip().str.lower().ne("false").to_numpy()


def _row_lines(path: Path, n_rows: int) -> list[int]:
    """The file line of each of the n_rows data rows pandas read (blank and whitespace-only lines skipped, as the
    reader skips them), so an error names the line an editor shows; where that count does not match (a quoted cell
    over several lines), row i + 2."""
    try:
        text = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return list(range(2, n_rows + 2))
    filled = [k + 1 for k, line in enumerate(text) if line.strip()]
    return filled[1:] if len(filled) == n_rows + 1 else list(range(2, n_rows + 2))


def read_manifest(path: str | os.PathLike, known_diseases: set[str] | None = None, on_error: str = "raise",
                  check_files: bool = True, source: str | None = None) -> tuple[pd.DataFrame, ReadReport]:
    """Read and validate a manifest. on_error: `raise` (default) or `skip` (count, log, and drop bad rows).
    source: the override that named the file (e.g. `real`), so an error says what to change; by default the
    data config's keys."""
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ManifestError(f"on_error must be 'raise' or 'skip', got '{on_error}'")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        where = f"{source}=" if source else "the data.manifest / run path"
        raise ManifestError(f"{path}: manifest not found; check {where}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable CSV manifest ({str(exc).splitlines()[0]})") from None
    except OSError as exc:  # a folder, an unreadable file
        where = f"; give {source}= a manifest.csv file" if source else ""
        raise ManifestError(f"{path}: cannot read it as a manifest ({type(exc).__name__}: {exc.strerror}){where}"
                            ) from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: lacks columns {missing}; a manifest needs {', '.join(REQUIRED)} (docs/data.md)")
    if df.empty:
        raise ManifestError(f"{path}: the manifest has no rows")
    report, rows, seen, splits, held_out = ReadReport(rows=len(df)), [], {}, {}, {}
    lines = _row_lines(path, len(df))
    for line, row in zip(lines, df.to_dict("records")):
        try:
            checked = _check_row(row, path.parent, known_diseases, check_files)
            # one image under two spellings (./img/a.png, img//a.png, two links to one file) is still one image
            real = os.path.realpath(checked["abspath"])
            if real in seen:
                raise ValueError(f"duplicate path '{row['path']}' (first on line {seen[real]})")
            ident, split = checked["identity"], checked["split"]
            if ident and splits.get(ident, (split,))[0] != split:  # empty identity = unknown person: no check
                first_split, first_line = splits[ident]
                raise ValueError(f"identity '{ident}' is in {split} here and in {first_split} on line {first_line}; "
                                 "one person in two splits leaks faces from training into evaluation, so put all "
                                 "its rows in one split")
            # a disease is held out as a whole (evaluation reads any true row as the disease's): a mixed column, or a
            # held-out healthy class, reshuffled the seen-disease metrics in silence
            held = _heldout_flag(row.get("heldout", ""))
            if held and checked["disease"] == "healthy":
                raise ValueError("disease 'healthy' has heldout true; healthy faces are never held out")
            if held_out.get(checked["disease"], (held,))[0] != held:
                first, first_line = held_out[checked["disease"]]
                raise ValueError(f"disease '{checked['disease']}' has heldout {str(held).lower()} here and "
                                 f"{str(first).lower()} on line {first_line}; a disease is held out as a whole")
            held_out.setdefault(checked["disease"], (held, line))
            seen[real] = line
            splits.setdefault(ident, (split, line))
            rows.append(checked)
        except ValueError as exc:
            if on_error == "raise":
                fix = f"fix the row or give {source}= another manifest" if source else \
                    "fix the row or read with on_error=skip"
                raise ManifestError(f"{path}:{line}: {exc}; {fix}") from None
            report.skipped.append((line, str(exc)))
            log.warning("%s:%d skipped: %s", path, line, exc)
    if not rows:
        raise ManifestError(f"{path}: every row was skipped ({len(report.skipped)}); first: {report.skipped[0][1]}")
    df = pd.DataFrame(rows)
    df.attrs["root"] = str(path.parent.resolve())  # the folder relative columns (path, source_image) are read from
    df.attrs["manifest"] = str(path)  # what an error about the set names
    return df, report
