"""A short reader for OBO ontologies such as HPO's `hp.obo` (terms, names, definitions, synonyms, is_a, obsoletes)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KGFormatError

_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"')
_SYN = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(\w+)')


@dataclass
class Term:
    id: str
    name: str = ""
    definition: str = ""
    synonyms: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    alt_ids: list[str] = field(default_factory=list)
    obsolete: bool = False
    replaced_by: str = ""


HPO_ID = re.compile(r"^HP:\d{7}$")


def term_aliases(terms: dict[str, Term]) -> dict[str, str]:
    """Old id -> live id: alt ids (listed on the live term) and obsolete ids with a `replaced_by`.

    The one resolver every reader uses, so that an id means the same term whichever file it came from. An explicit
    `replaced_by` beats an alt-id listing (2 obsolete HPO stanzas are listed as alt ids of another term); chains are
    followed to their end."""
    alias: dict[str, str] = {}
    for t in terms.values():
        if not t.obsolete:
            for a in t.alt_ids:
                alias.setdefault(a, t.id)
    for t in terms.values():
        if t.obsolete and t.replaced_by:
            alias[t.id] = t.replaced_by
    for start in list(alias):
        seen, target = {start}, alias[start]
        while target in alias and target not in seen:
            seen.add(target)
            target = alias[target]
        alias[start] = target
    return alias


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def parse_obo(path: str | Path) -> dict[str, Term]:
    """Parse the [Term] stanzas of an OBO file; returns live and obsolete terms keyed by id."""
    path = Path(path)
    terms: dict[str, Term] = {}
    current: Term | None = None
    in_term = False
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise KGFormatError(f"{path}: cannot read OBO file ({exc.strerror}); check kg.obo_path") from exc
    with handle:
        try:
            for lineno, raw in enumerate(handle, 1):
                line = raw.rstrip("\n")
                if line.startswith("["):
                    if current is not None:
                        terms[current.id] = current
                    current, in_term = None, line.strip() == "[Term]"
                    continue
                if not in_term or not line or line.startswith("!"):
                    continue
                tag, _, value = line.partition(": ")
                value = value.split(" ! ")[0].strip() if tag in ("is_a", "alt_id", "replaced_by") else value.strip()
                if tag == "id":
                    current = Term(id=value)
                elif current is None:
                    raise KGFormatError(f"{path}:{lineno}: tag '{tag}' before the term's id; the OBO file is malformed")
                elif tag == "name":
                    current.name = value
                elif tag == "def":
                    m = _DEF.match(value)
                    current.definition = _unescape(m.group(1)) if m else value
                elif tag == "synonym":
                    m = _SYN.match(value)
                    if m:
                        current.synonyms.append(_unescape(m.group(1)))
                elif tag == "is_a":
                    current.parents.append(value)
                elif tag == "alt_id":
                    current.alt_ids.append(value)
                elif tag == "is_obsolete":
                    current.obsolete = value == "true"
                elif tag == "replaced_by":
                    current.replaced_by = value
        except UnicodeDecodeError as exc:
            raise KGFormatError(f"{path}: not UTF-8 text near byte {exc.start}; is this really an OBO file?") from exc
    if current is not None:
        terms[current.id] = current
    if not terms:
        raise KGFormatError(f"{path}: no [Term] stanzas found; is this really an OBO file?")
    return terms
