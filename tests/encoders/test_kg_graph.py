"""Profile graphs: nodes, relations and weights of a real profile, the healthy graph, intensities, custom sets."""
from __future__ import annotations

import pytest
import torch

from kgface.encoders import HEALTHY_TEXT, NODE_TYPES, RELATIONS, WEIGHT_KINDS, parse_phenotype_spec, phenotype_profile
from kgface.encoders.graph import profile_intensities
from kgface.errors import UserError
from kgface.kg import FacialProfile, Phenotype

T = {name: i for i, name in enumerate(NODE_TYPES)}
R = {name: i for i, name in enumerate(RELATIONS)}
W = {name: i for i, name in enumerate(WEIGHT_KINDS)}


def edges_of(g, relation):
    mask = g.edge_type == R[relation]
    ids = g.node_id
    return {(ids[s], ids[d]): w for s, d, w in zip(g.edge_index[0, mask].tolist(), g.edge_index[1, mask].tolist(),
                                                     g.edge_weight[mask].tolist())}


def test_down_syndrome_graph(graph_builder, profiles):
    down = profiles[0]
    g = graph_builder.graph(down)
    ids, types = g.node_id, g.node_type.tolist()
    assert len(set(ids)) == len(ids) == g.num_nodes == g.x.shape[0] and g.x.shape[1] == 384
    assert ids[0] == "ORPHA:870" and types[0] == T["disease"] and types.count(T["disease"]) == 1
    pheno = {ids[i] for i, t in enumerate(types) if t == T["phenotype"]}
    assert pheno == {p.hpo_id for p in down.phenotypes} and len(pheno) == 19
    has = edges_of(g, "has_phenotype")
    for p in down.phenotypes:  # edge weights are the KG frequencies, both directions
        assert has[("ORPHA:870", p.hpo_id)] == pytest.approx(p.frequency)
        assert edges_of(g, "phenotype_of")[(p.hpo_id, "ORPHA:870")] == pytest.approx(p.frequency)
        assert g.weight[ids.index(p.hpo_id)] == pytest.approx(p.frequency)
        assert g.weight_kind[ids.index(p.hpo_id)] == W["frequency"]
        is_a, sub = edges_of(g, "is_a"), edges_of(g, "has_subclass")
        for child, parent in zip(p.path, p.path[1:]):  # ancestors up to the region root, with reverse edges
            assert is_a[(child, parent)] == 1.0 and sub[(parent, child)] == 1.0
        assert types[ids.index(p.path[-1])] == T["region_root"]
    assert {p.path[-1] for p in down.phenotypes} >= {"HP:0000271", "HP:0000153", "HP:0000366", "HP:0000464"}
    # an ancestor shared by several paths is linked once: a doubled edge would weigh it twice in RGCN's mean and
    # GATv2's attention (edges_of above folds duplicates into one dict entry, so it could not tell)
    triples = list(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), g.edge_type.tolist()))
    assert len(set(triples)) == len(triples)
    paths = [(c, p) for ph in down.phenotypes for c, p in zip(ph.path, ph.path[1:])]
    assert len(paths) > len(set(paths))  # the profile's paths do share steps: the check above has something to catch
    ancestors = {ids[i] for i, t in enumerate(types) if t == T["ancestor"]}
    assert "HP:0000492" in ancestors  # Abnormal eyelid morphology, on Epicanthus' path
    assert g.node_text[ids.index("HP:0000286")].startswith("Epicanthus: A fold of skin")
    assert g.node_text[ids.index("HP:0000492")] == "Abnormal eyelid morphology"


def test_healthy_graph_is_a_lone_disease_node(graph_builder, profiles):
    g = graph_builder.graph(profiles[-1])
    assert g.num_nodes == 1 and g.node_type.tolist() == [T["disease"]] and g.edge_index.shape == (2, 0)
    assert g.node_text == [HEALTHY_TEXT] and g.weight_kind.tolist() == [W["none"]]
    sick = graph_builder.graph(profiles[0])
    assert not torch.allclose(g.x[0], sick.x[0])  # "healthy" is not the generic disease text


def test_intensities_replace_frequencies_and_keep_only_listed_phenotypes(graph_builder, profiles):
    down = profiles[0]
    shown = {"HP:0000286": 0.8, "HP:0000470": 0.1}
    g = graph_builder.graph(down, intensities=shown)
    pheno = {g.node_id[i]: i for i, t in enumerate(g.node_type.tolist()) if t == T["phenotype"]}
    assert set(pheno) == set(shown)
    for hpo_id, value in shown.items():
        assert g.weight[pheno[hpo_id]] == pytest.approx(value) and g.weight_kind[pheno[hpo_id]] == W["intensity"]
        assert edges_of(g, "has_phenotype")[("ORPHA:870", hpo_id)] == pytest.approx(value)
    with pytest.raises(UserError, match="HP:0001250.*phenotype_profile"):
        graph_builder.graph(down, intensities={"HP:0001250": 0.5})


def test_unknown_frequency_is_flagged(graph_builder):
    p = FacialProfile("X:1", "made up", "hpo", phenotypes=[
        Phenotype("HP:0000470", "Short neck", "neck", "", None, path=["HP:0000470", "HP:0025668", "HP:0000464"],
                  path_names=["Short neck", "Abnormal neck morphology", "Abnormality of the neck"])])
    g = graph_builder.graph(p)
    assert g.weight[1] == pytest.approx(0.5) and g.weight_kind[1] == W["frequency_unknown"]
    assert g.node_type.tolist() == [T["disease"], T["phenotype"], T["ancestor"], T["region_root"]]


def test_custom_phenotype_set(profile_builder, graph_builder):
    spec = parse_phenotype_spec(["HP:0000316=0.8", "HP:0000508=0.3"])
    assert spec == {"HP:0000316": 0.8, "HP:0000508": 0.3}
    assert parse_phenotype_spec(["hp:0000316=0.8"]) == {"HP:0000316": 0.8}  # failed later as "not a term"
    assert parse_phenotype_spec(["HP:0000316=0.8", "hp:0000316=0.8"]) == {"HP:0000316": 0.8}  # the same, twice
    with pytest.raises(UserError, match=r"phenotype HP:0000316 given twice with different intensities \(0.8 and "
                                        r"0.2\); give it once"):  # the last was kept in silence
        parse_phenotype_spec(["HP:0000316=0.8", "hp:0000316=0.2"])
    custom = phenotype_profile(profile_builder, spec)
    g = graph_builder.graph(custom, intensities=spec)
    assert [g.node_id[i] for i in (1, 2)] == ["HP:0000316", "HP:0000508"]
    assert g.weight[1:3].tolist() == pytest.approx([0.8, 0.3])
    with pytest.raises(UserError, match="outside"):
        parse_phenotype_spec(["HP:0000316=1.5"])
    with pytest.raises(UserError, match="not visible"):
        phenotype_profile(profile_builder, {"HP:0001250": 1.0})  # seizure


def test_batch_of_16_matches_the_graphs_built_one_by_one(graph_builder, profiles):
    # functional check only: wall-time bounds fail on a shared machine without saying anything about the code
    batch_profiles = (profiles * 4)[:16]
    batch = graph_builder.batch(batch_profiles)
    graphs = [graph_builder.graph(p) for p in batch_profiles]
    assert batch.num_graphs == 16 and batch.x.shape[0] == sum(g.num_nodes for g in graphs)
    assert torch.equal(batch.x, torch.cat([g.x for g in graphs]))
    for key in ("node_type", "weight", "weight_kind", "min_stage", "edge_type", "edge_weight"):
        assert torch.equal(batch[key], torch.cat([g[key] for g in graphs])), key
    offsets = torch.cumsum(torch.tensor([0] + [g.num_nodes for g in graphs[:-1]]), 0)
    assert torch.equal(batch.edge_index, torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], dim=1))
    assert batch.disease_id == [p.disease_id for p in batch_profiles]


def test_disease_text_name_falls_back_through_feature_text(graph_builder, profiles):
    from kgface.encoders import ProfileGraphBuilder

    named = ProfileGraphBuilder(graph_builder.features, disease_text="name")
    primekg_like = FacialProfile("MONDO:0008608", "Down syndrome", "primekg", text={
        "definition": " ", "orphanet_clinical_description": "Facial features include upslanting fissures.",
        "mondo_definition": "A chromosomal disorder caused by trisomy 21. More text."})
    assert named.disease_node_text(primekg_like) == "Down syndrome: A chromosomal disorder caused by trisomy 21."
    only_orphanet = FacialProfile("X:1", "X", "rdf", text={"orphanet_clinical_description": "Broad thumbs."})
    assert named.disease_node_text(only_orphanet) == "X: Broad thumbs."
    assert named.disease_node_text(profiles[0]) == profiles[0].name  # HPO profiles carry no disease text
    assert graph_builder.disease_node_text(primekg_like) == graph_builder.disease_node_text(profiles[0])  # generic


def test_custom_phenotype_set_resolves_alt_ids(profile_builder, graph_builder):
    spec = {"HP:0000312": 0.7, "HP:0000316": 0.2}  # HP:0000312: an alt id of Malar flattening HP:0000272
    custom = phenotype_profile(profile_builder, spec)
    assert [p.hpo_id for p in custom.phenotypes] == ["HP:0000272", "HP:0000316"]
    assert custom.phenotypes[0].name == "Malar flattening"
    assert spec == {"HP:0000312": 0.7, "HP:0000316": 0.2}  # the caller's mapping is left as given
    assert profile_intensities(custom) == {"HP:0000272": 0.7, "HP:0000316": 0.2}
    g = graph_builder.graph(custom, intensities=profile_intensities(custom))
    assert g.node_id[1] == "HP:0000272" and g.weight[1].item() == pytest.approx(0.7)
    with pytest.raises(UserError, match="same term HP:0000272"):
        phenotype_profile(profile_builder, {"HP:0000312": 0.7, "HP:0000272": 0.3})
    # most intense first, ties by id, whatever order they were typed in (a full token set keeps the first ones)
    typed = phenotype_profile(profile_builder, {"HP:0000316": 1.0, "HP:0000272": 1.0, "HP:0000508": 0.3})
    again = phenotype_profile(profile_builder, {"HP:0000508": 0.3, "HP:0000272": 1.0, "HP:0000316": 1.0})
    assert [p.hpo_id for p in typed.phenotypes] == [p.hpo_id for p in again.phenotypes] == [
        "HP:0000272", "HP:0000316", "HP:0000508"]
