"""Small PrimeKG files in the real on-disk format (kg.csv: 12 columns, every edge in both directions, MONDO and
MONDO_grouped disease ids, bare-integer HPO ids; disease_features.csv: 18 columns)."""
from __future__ import annotations

import csv
from pathlib import Path

KG_HEADER = ["relation", "display_relation", "x_index", "x_id", "x_type", "x_name", "x_source", "y_index", "y_id",
             "y_type", "y_name", "y_source"]
FEATURES_HEADER = ["node_index", "mondo_id", "mondo_name", "group_id_bert", "group_name_bert", "mondo_definition",
                   "umls_description", "orphanet_definition", "orphanet_prevalence", "orphanet_epidemiology",
                   "orphanet_clinical_description", "orphanet_management_and_treatment", "mayo_symptoms",
                   "mayo_causes", "mayo_risk_factors", "mayo_complications", "mayo_prevention", "mayo_see_doc"]

# (index, id, type, name, source)
DOWN = (100, "8608", "disease", "Down syndrome", "MONDO")
GROUPED = (101, "13924_12592", "disease", "Noonan syndrome", "MONDO_grouped")
ACNE = (102, "11438", "disease", "acne vulgaris", "MONDO")
EPI = (103, "23659", "disease", "developmental and epileptic encephalopathy 96", "MONDO")
UPSLANT = (200, "582", "effect/phenotype", "Upslanted palpebral fissure", "HPO")
EPICANTHUS = (201, "286", "effect/phenotype", "Epicanthus", "HPO")
HYPERTELORISM = (202, "316", "effect/phenotype", "Hypertelorism", "HPO")
SPASM = (203, "11097", "effect/phenotype", "Epileptic spasm", "HPO")
PTOSIS = (204, "508", "effect/phenotype", "Ptosis", "HPO")
ACNE_P = (205, "1061", "effect/phenotype", "Acne", "HPO")
GENE = (300, "7157", "gene/protein", "TP53", "NCBI")

EDGES = [  # (relation, display, x, y)
    ("disease_phenotype_positive", "phenotype present", DOWN, UPSLANT),
    ("disease_phenotype_positive", "phenotype present", DOWN, EPICANTHUS),
    ("disease_phenotype_negative", "phenotype absent", DOWN, PTOSIS),
    ("disease_phenotype_positive", "phenotype present", GROUPED, HYPERTELORISM),
    ("disease_phenotype_positive", "phenotype present", GROUPED, PTOSIS),
    ("disease_phenotype_positive", "phenotype present", ACNE, ACNE_P),
    ("disease_phenotype_positive", "phenotype present", EPI, SPASM),
    ("phenotype_phenotype", "parent-child", UPSLANT, EPICANTHUS),
    ("disease_protein", "associated with", DOWN, GENE),
]


def kg_rows() -> list[list[str]]:
    rows = []
    for rel, disp, x, y in EDGES:  # PrimeKG stores every edge in both directions
        for a, b in ((x, y), (y, x)):
            rows.append([rel, disp, str(a[0]), a[1], a[2], a[3], a[4], str(b[0]), b[1], b[2], b[3], b[4]])
    return rows


def write_kg_csv(path: Path, rows: list[list[str]] | None = None, header: list[str] | None = None) -> Path:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(header or KG_HEADER)
        w.writerows(kg_rows() if rows is None else rows)
    return Path(path)


def write_features(path: Path) -> Path:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(FEATURES_HEADER)
        row = dict.fromkeys(FEATURES_HEADER, "")
        row.update(node_index="100", mondo_id="8608", mondo_name="Down syndrome",
                   mondo_definition="A chromosomal disorder caused by trisomy 21.",
                   orphanet_clinical_description="Facial features include upslanting palpebral fissures.")
        w.writerow([row[c] for c in FEATURES_HEADER])
    return Path(path)
