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
    except UnicodeDecodeError as exc:
        raise KGFormatError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None


@dataclass
class VisibleCatalog:
    entries: dict[str, VisibleEntry]
    regions: dict[str, dict]
    folder: Path | None = None  # where it was read from (for errors); rows: hpo_id -> line of visible_phenotypes.csv
    rows: dict[str, int] | None = None

    def check_terms(self, terms: dict, aliases: dict[str, str], source: str) -> None:
        """Every listed id and region root a live term of the graph's ontology: an alt id, an obsolete id or a typo
        would match no annotated edge (edges carry live ids), and its phenotypes would turn hidden in silence."""
        where = self.folder or Path("kg_data")
        listed = [(f"{where / 'visible_phenotypes.csv'}:{(self.rows or {}).get(h, '?')}", h) for h in self.entries]
        listed += [(f"{where / 'regions.csv'} (region {name})", r["root_hpo_id"]) for name, r in self.regions.items()]
        for at, hpo_id in listed:
            term = terms.get(hpo_id)
            if hpo_id in aliases:
                raise KGFormatError(f"{at}: {hpo_id} is an alternative or obsolete id of {aliases[hpo_id]} in the "
                                    f"{source} graph's ontology; list {aliases[hpo_id]} instead")
            if term is None or getattr(term, "obsolete", False):
                raise KGFormatError(f"{at}: {hpo_id} is not a live term of the {source} graph's ontology; fix the id "
                                    "(or use the HPO release it was listed from)")

    @classmethod
    def load(cls, kg_data_dir: str | Path) -> "VisibleCatalog":
        kg_data_dir = Path(kg_data_dir)
        regions = {r["region"]: r for r in _read_csv(kg_data_dir / "regions.csv", REGION_COLUMNS)}
        entries: dict[str, VisibleEntry] = {}
        rows: dict[str, int] = {}
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
            rows[row["hpo_id"]] = i
        return cls(entries=entries, regions=regions, folder=kg_data_dir, rows=rows)

    def region_roots(self) -> dict[str, str]:
        return {name: r["root_hpo_id"] for name, r in self.regions.items()}

    def match(self, hpo_id: str, ancestors: set[str] | list[str]) -> VisibleEntry | None:
        """The catalogue entry an annotated term falls under (itself, else its nearest listed ancestor when that
        one includes descendants), or None when a photograph cannot show it. A nearest listed ancestor marked
        `include_descendants=no` ends the search: its children are not visible under a farther entry's wording
        (blepharochalasis under palpebral edema (no) read as periorbital edema's "puffy swelling" before
        2026-12-07)."""
        if hpo_id in self.entries:
            return self.entries[hpo_id]
        for anc in ancestors:  # ancestors come nearest first
            entry = self.entries.get(anc)
            if entry is not None:
                return entry if entry.include_descendants else None
        return None
