"""kgface.kg.ontology on a small hand-made is_a graph with a diamond, two roots and a cycle-free long branch."""
from kgface.kg.obo import Term
from kgface.kg.ontology import ONSET, PHENOTYPIC_ABNORMALITY, ancestors, descendants, onset_terms, path_to

#            HP:0000118 (Phenotypic abnormality)
#              /        \
#          HEAD          EYE ---- (region root)
#            |          /
#          FACE -------                      ONSET
#         /    \                           /      \
#      NOSE    MOUTH                   ADULT     CHILD
#         \    /                                    |
#          DIAMOND -- LONG1 -> LONG2 -> LONG3 -> HEAD   INFANT
HEAD, EYE, FACE, NOSE, MOUTH, DIAMOND = "H:head", "H:eye", "H:face", "H:nose", "H:mouth", "H:diamond"
TERMS = {t.id: t for t in [
    Term(PHENOTYPIC_ABNORMALITY), Term(HEAD, parents=[PHENOTYPIC_ABNORMALITY]),
    Term(EYE, parents=[PHENOTYPIC_ABNORMALITY]), Term(FACE, parents=[HEAD, EYE]), Term(NOSE, parents=[FACE]),
    Term(MOUTH, parents=[FACE]), Term(DIAMOND, parents=[NOSE, MOUTH, "H:long1"]),
    Term("H:long1", parents=["H:long2"]), Term("H:long2", parents=["H:long3"]), Term("H:long3", parents=[HEAD]),
    Term(ONSET), Term("H:adult", parents=[ONSET]), Term("H:child", parents=[ONSET]),
    Term("H:infant", parents=["H:child"])]}


def test_ancestors_are_nearest_first_each_once():
    up = ancestors(TERMS, DIAMOND)
    assert up[:3] == [NOSE, MOUTH, "H:long1"]  # breadth-first: the parents before any grandparent
    assert sorted(up) == sorted({NOSE, MOUTH, "H:long1", FACE, "H:long2", "H:long3", HEAD, EYE,
                                 PHENOTYPIC_ABNORMALITY})
    assert len(up) == len(set(up)) and DIAMOND not in up
    assert up.index(FACE) < up.index(HEAD) < up.index(PHENOTYPIC_ABNORMALITY)
    assert ancestors(TERMS, "H:unknown") == [] and ancestors(TERMS, PHENOTYPIC_ABNORMALITY) == []


def test_path_to_takes_the_shortest_route_to_the_first_reachable_target_set():
    assert path_to(TERMS, DIAMOND, {HEAD}) == [DIAMOND, NOSE, FACE, HEAD]  # 3 steps, not 4 through the long branch
    assert path_to(TERMS, DIAMOND, {"H:nowhere"}, {EYE}) == [DIAMOND, NOSE, FACE, EYE]  # first set unreachable
    assert path_to(TERMS, DIAMOND) == [DIAMOND, NOSE, FACE, HEAD, PHENOTYPIC_ABNORMALITY]  # the fallback root
    assert path_to(TERMS, FACE, {FACE}) == [FACE]
    assert path_to(TERMS, "H:infant", {HEAD}) == ["H:infant"]  # no route to any root: the term alone


def test_descendants_and_onset_terms():
    assert descendants(TERMS, FACE) == {NOSE, MOUTH, DIAMOND}
    assert descendants(TERMS, HEAD) == {FACE, NOSE, MOUTH, DIAMOND, "H:long1", "H:long2", "H:long3"}
    assert descendants(TERMS, DIAMOND) == set()
    assert onset_terms(TERMS) == {ONSET, "H:adult", "H:child", "H:infant"}
