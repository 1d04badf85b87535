"""Walks over the is_a hierarchy: ancestors (nearest first) and the shortest path up to a region root."""
from __future__ import annotations

from collections import deque

from .obo import Term

PHENOTYPIC_ABNORMALITY = "HP:0000118"
ONSET = "HP:0003674"  # Onset: clinical-course terms (aspect C) also include Progressive, Death in infancy, Stillbirth


def ancestors(terms: dict[str, Term], hpo_id: str) -> list[str]:
    """All is_a ancestors, breadth-first (nearest first), without the term itself."""
    seen, order, queue = {hpo_id}, [], deque([hpo_id])
    while queue:
        term = terms.get(queue.popleft())
        for parent in term.parents if term else ():
            if parent not in seen:
                seen.add(parent)
                order.append(parent)
                queue.append(parent)
    return order


def path_to(terms: dict[str, Term], hpo_id: str, *target_sets: set[str]) -> list[str]:
    """Shortest is_a path [hpo_id, ..., root] to the nearest term of the first target set that can be reached;
    falls back to Phenotypic abnormality, and to [hpo_id] for a term with no known parents."""
    for targets in (*target_sets, {PHENOTYPIC_ABNORMALITY}):
        if hpo_id in targets:
            return [hpo_id]
        back, queue = {hpo_id: None}, deque([hpo_id])
        while queue:
            node = queue.popleft()
            term = terms.get(node)
            for parent in term.parents if term else ():
                if parent in back:
                    continue
                back[parent] = node
                if parent in targets:
                    path, cur = [], parent
                    while cur is not None:
                        path.append(cur)
                        cur = back[cur]
                    return path[::-1]
                queue.append(parent)
    return [hpo_id]


def descendants(terms: dict[str, Term], hpo_id: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for t in terms.values():
        for p in t.parents:
            children.setdefault(p, []).append(t.id)
    out, stack = set(), [hpo_id]
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def onset_terms(terms: dict[str, Term]) -> set[str]:
    """Onset (HP:0003674) and its descendants: the clinical-course terms that say when a disease starts."""
    return {ONSET} | descendants(terms, ONSET)
