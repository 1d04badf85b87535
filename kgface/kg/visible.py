"""The curated catalogue of phenotypes a face photograph can show (`kg_data/visible_phenotypes.csv`) and the
regions they belong to (`kg_data/regions.csv`).

"Visible" is a curated list, not one HPO subtree: HP:0000271 holds the palate and teeth, while hypertelorism,
ptosis, proptosis and low-set ears sit outside it. An annotated term counts as visible when it is in the list, or
descends from a listed term marked `include_descendants=yes` (then it borrows that entry's region and wording).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .errors import KGFormatError

VISIBLE_COLUMNS = ["hpo_id", "name", "region", "visual", "include_descendants", "source"]
REGION_COLUMNS = ["region", "root_hpo_id", "root_name", "description"]


@dataclass(frozen=True)
class VisibleEntry:
    hpo_id: str
    name: str
    region: str
    visual: str
    include_descendants: bool
    source: str


def _read_csv(path: Path, columns: list[str]) -> list[dict]:
    try:
        with path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise KGFormatError(f"{path}: lacks columns {missing}; expected {', '.join(columns)}")
            return list(reader)
    except OSError as exc:
        raise KGFormatError(f"{path}: cannot read ({exc.strerror}); check kg.kg_data_dir") from exc


@dataclass
class VisibleCatalog:
    entries: dict[str, VisibleEntry]
    regions: dict[str, dict]

    @classmethod
    def load(cls, kg_data_dir: str | Path) -> "VisibleCatalog":
        kg_data_dir = Path(kg_data_dir)
        regions = {r["region"]: r for r in _read_csv(kg_data_dir / "regions.csv", REGION_COLUMNS)}
        entries: dict[str, VisibleEntry] = {}
        path = kg_data_dir / "visible_phenotypes.csv"
        for i, row in enumerate(_read_csv(path, VISIBLE_COLUMNS), start=2):
            if row["region"] not in regions:
                raise KGFormatError(f"{path}:{i}: region '{row['region']}' is not in regions.csv "
                                    f"({', '.join(regions)})")
            if row["hpo_id"] in entries:
                raise KGFormatError(f"{path}:{i}: {row['hpo_id']} is listed twice; keep one row")
            if row["include_descendants"] not in ("yes", "no"):
                raise KGFormatError(f"{path}:{i}: include_descendants must be yes or no")
            entries[row["hpo_id"]] = VisibleEntry(row["hpo_id"], row["name"], row["region"], row["visual"],
                                                  row["include_descendants"] == "yes", row["source"])
        return cls(entries=entries, regions=regions)

    def region_roots(self) -> dict[str, str]:
        return {name: r["root_hpo_id"] for name, r in self.regions.items()}

    def match(self, hpo_id: str, ancestors: set[str] | list[str]) -> VisibleEntry | None:
        """The catalogue entry an annotated term falls under (itself, else its nearest listed ancestor that
        includes descendants), or None when a photograph cannot show it."""
        if hpo_id in self.entries:
            return self.entries[hpo_id]
        for anc in ancestors:  # ancestors come nearest first
            entry = self.entries.get(anc)
            if entry is not None and entry.include_descendants:
                return entry
        return None
