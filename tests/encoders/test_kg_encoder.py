"""KGEncoder with real PyG layers: shapes and gradients per conv, stage/age/intensity sensitivity, healthy vs null,
unseen diseases, permutation invariance, save/load, configs, and a tiny overfit."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from kgface.encoders import CONVS, KGEncoder
from kgface.errors import UserError
from kgface.resources import conf_dir

D, K = 32, 8


def tiny(conv="rgcn", **kw):
    torch.manual_seed(0)
    return KGEncoder(conv=conv, **{"out_dim": D, "hidden": 32, "layers": 2, "num_tokens": K, "heads": 4, **kw}).eval()


@pytest.fixture(scope="module")
def batch(graph_builder, profiles):
    return graph_builder.batch(profiles)  # Down, Williams, Noonan, healthy


def permuted(batch, seed=0):
    """The same graphs with every node (and edge) listed in a random order across the whole batch."""
    g = batch.clone()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(g.num_nodes, generator=gen)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    for key in ("x", "node_type", "weight", "weight_kind", "min_stage", "batch"):
        g[key] = batch[key][perm]
    eperm = torch.randperm(batch.edge_index.shape[1], generator=gen)
    g.edge_index = inv[batch.edge_index[:, eperm]]
    g.edge_type, g.edge_weight = batch.edge_type[eperm], batch.edge_weight[eperm]
    return g


@pytest.mark.parametrize("conv", CONVS)
def test_shapes_finite_and_gradients(conv, batch):
    enc = tiny(conv).train()
    stage = torch.tensor([1.0, 2.0, 0.5, 0.0])
    out = enc(batch, stage)
    assert out.shape == (4, K, D) and torch.isfinite(out).all()
    (out - torch.randn_like(out)).pow(2).mean().backward()
    for name, p in enc.named_parameters():
        # null: only CFG dropout trains it; unknown_stage: only ungraded photos (NaN stages); HGT: absent edge types
        if name in ("null_tokens", "unknown_stage") or ".p_rel." in name:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for i, conv_layer in enumerate(enc.convs):
        assert sum(p.grad.abs().sum() for p in conv_layer.parameters() if p.grad is not None) > 0, f"conv {i}"


@pytest.mark.parametrize("conv", CONVS)
def test_permutation_invariance(conv, batch):
    enc = tiny(conv)
    stage = torch.tensor([1.0, 2.0, 0.5, 0.0])
    with torch.no_grad():
        a, b = enc(batch, stage), enc(permuted(batch), stage)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_stage_age_and_intensities_change_the_tokens(graph_builder, profiles):
    enc = tiny(age_groups=4)
    down = profiles[0]
    g = graph_builder.batch([down, down])
    with torch.no_grad():
        low, high = enc(g, torch.tensor([0.5, 2.5]))
        assert not torch.allclose(low, high, atol=1e-4)
        child, adult = enc(g, torch.tensor([1.0, 1.0]), torch.tensor([0, 2]))
        assert not torch.allclose(child, adult, atol=1e-4)
        unknown = enc(g, torch.tensor([1.0, 1.0]))
        # two identical graphs in one batch: equal up to float rounding (batch position changes the summation order)
        assert torch.allclose(unknown[0], unknown[1], atol=1e-5), (unknown[0] - unknown[1]).abs().max()
        assert not torch.allclose(unknown[0], child, atol=1e-4)
        shown = {"HP:0000286": 0.9, "HP:0000470": 0.4}
        weak = {"HP:0000286": 0.1, "HP:0000470": 0.4}
        a, b = enc(graph_builder.batch([down, down], intensities=[shown, weak]), torch.tensor([1.0, 1.0]))
        assert not torch.allclose(a, b, atol=1e-4)
        freq = enc(graph_builder.batch([down]), torch.tensor([1.0]))[0]
        assert not torch.allclose(freq, a, atol=1e-4)  # a per-image subset is not the whole profile
        # an intensity of 0 shows nothing: the phenotype has no node (it was a node of weight 0, as if present)
        zero, without = enc(graph_builder.batch([down, down], intensities=[{**weak, "HP:0000286": 0.0},
                                                                          {"HP:0000470": 0.4}]),
                            torch.tensor([1.0, 1.0]))
        assert torch.allclose(zero, without, atol=1e-5)
    with pytest.raises(UserError, match=r"intensities of HP:0000286 are not finite numbers"):
        graph_builder.batch([down], intensities=[{"HP:0000286": float("nan")}])
    with pytest.raises(UserError, match="age_groups"):
        tiny()(g, torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))


def test_an_unknown_stage_reads_its_own_embedding_not_a_made_up_stage(graph_builder, profiles, tmp_path):
    """NaN = a photo without a grade: it reads `unknown_stage` (learned, zero at first), whatever the stage scale;
    known stages in the same batch are unaffected, and a saved encoder without the weight still loads."""
    enc = tiny().eval()
    down = profiles[0]
    g = graph_builder.batch([down, down, down])
    with torch.no_grad():
        enc.unknown_stage.normal_()
        nan = float("nan")
        mixed = enc(g, torch.tensor([nan, 2.0, nan]))
        known = enc(graph_builder.batch([down]), torch.tensor([2.0]))[0]
        assert torch.isfinite(mixed).all()
        assert torch.allclose(mixed[1], known, atol=1e-5)
        assert torch.allclose(mixed[0], mixed[2], atol=1e-5)
        for stage in (0.0, 1.0, 2.0, 3.0):  # the placeholder stage the readers write is not what it reads
            assert not torch.allclose(mixed[0], enc(graph_builder.batch([down]), torch.tensor([stage]))[0], atol=1e-4)
    tokens = enc.train()(g, torch.tensor([nan, 1.0, 1.0]))
    tokens.square().sum().backward()
    assert enc.unknown_stage.grad is not None and enc.unknown_stage.grad.abs().sum() > 0
    state = {k: v for k, v in enc.state_dict().items() if k != "unknown_stage"}  # an encoder saved before it
    again = tiny()
    again.load_state_dict(state)  # strict: every other key is still required
    assert torch.equal(again.unknown_stage, torch.zeros_like(again.unknown_stage))
    with pytest.raises(RuntimeError, match="null_tokens"):
        tiny().load_state_dict({k: v for k, v in state.items() if k != "null_tokens"})


def test_null_is_not_healthy(graph_builder, profiles):
    enc = tiny()
    healthy = graph_builder.batch([profiles[-1]])
    with torch.no_grad():
        tokens = enc(healthy, torch.tensor([0.0]))
        null = enc.null(3)
    assert null.shape == (3, K, D) and torch.equal(null[0], null[2])
    assert not torch.allclose(tokens[0], null[0], atol=1e-3)
    sick = enc(graph_builder.batch([profiles[0]]), torch.tensor([0.0]))
    assert not torch.allclose(tokens, sick, atol=1e-4)
    mixed = enc.with_null(torch.cat([tokens, sick]), torch.tensor([True, False]))
    assert torch.equal(mixed[0], enc.null_tokens) and torch.equal(mixed[1], sick[0])


def test_unseen_disease_encodes(graph_builder, profile_builder, profiles, text_model):
    from kgface.encoders.text import embed_texts

    kabuki = profile_builder.build("ORPHA:2322")  # never in the warmed set: its new texts are embedded on demand
    known = len(graph_builder.features.rows)
    enc = tiny("gatv2")
    with torch.no_grad():
        tokens = enc(graph_builder.batch([kabuki]), torch.tensor([2.0]))
        down = enc(graph_builder.batch([profiles[0]]), torch.tensor([2.0]))
    assert tokens.shape == (1, K, D) and torch.isfinite(tokens).all()
    assert len(graph_builder.features.rows) > known
    # the rows appended for the new texts are those texts' own embeddings (not zeros, not another text's row)
    g = graph_builder.graph(kabuki)
    assert torch.allclose(g.x, embed_texts(g.node_text, text_model), atol=1e-5)
    assert not torch.allclose(tokens, down, atol=1e-4)


def test_save_load_round_trip(tmp_path, batch):
    enc = tiny("hgt", age_groups=3)
    with torch.no_grad():
        enc.null_tokens.add_(1.0)  # not the initial values
    stage, age = torch.tensor([0.0, 1.5, 3.0, 0.2]), torch.tensor([0, 2, -1, 1])
    enc.save_pretrained(tmp_path / "enc")
    again = KGEncoder.from_pretrained(tmp_path / "enc").eval()
    assert again.config == enc.config
    with torch.no_grad():
        assert torch.equal(enc(batch, stage, age), again(batch, stage, age))
        assert torch.equal(enc.null(2), again.null(2))
    with pytest.raises(UserError, match="not a saved encoder"):
        KGEncoder.from_pretrained(tmp_path)
    # a run's encoder saved before unknown_stage existed loads (kgface.generate reads runs this way) with it at zero
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(tmp_path / "enc", old)
    state = load_file(str(old / "model.safetensors"))
    save_file({k: v for k, v in state.items() if k != "unknown_stage"}, str(old / "model.safetensors"))
    loaded = KGEncoder.from_pretrained(old)
    assert torch.equal(loaded.unknown_stage, torch.zeros_like(loaded.unknown_stage))
    assert torch.equal(loaded.null_tokens, again.null_tokens)
    # loaded for use: eval mode (token centering reads its saved statistics, not a batch's own)
    assert not KGEncoder.from_pretrained(tmp_path / "enc").training
    # a config or weights file that does not fit: one line naming the file and the first key, not a traceback
    import json

    cfg_path = tmp_path / "enc" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "width": 3}))
    with pytest.raises(UserError, match=r"config.json: unknown key 'width'"):
        KGEncoder.from_pretrained(tmp_path / "enc")
    cfg_path.write_text(json.dumps({**cfg, "age_groups": 0}))  # the saved age embedding has no place now
    with pytest.raises(UserError, match=r"model.safetensors: does not fit its config.json \(unexpected age_emb"):
        KGEncoder.from_pretrained(tmp_path / "enc")
    cfg_path.write_text(json.dumps({**cfg, "age_groups": 5}))  # a size the saved weights do not have
    with pytest.raises(UserError, match=r"model.safetensors: age_emb.weight has shape \(4, .*\) but its config.json "
                                        r"builds \(6, "):
        KGEncoder.from_pretrained(tmp_path / "enc")


def test_save_over_an_existing_folder_swaps_the_pair_and_leaves_no_temp_folder(tmp_path, batch):
    first, second = tiny("rgcn"), tiny("rgcn", age_groups=2)
    with torch.no_grad():
        second.null_tokens.add_(1.0)
    first.save_pretrained(tmp_path / "enc")
    second.save_pretrained(tmp_path / "enc")  # replaces the saved folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    again = KGEncoder.from_pretrained(tmp_path / "enc")
    assert again.config == second.config and torch.equal(again.null_tokens, second.null_tokens)
    # a save that fails half way (the config cannot be written) leaves the previous pair as it was
    third = tiny("rgcn", age_groups=2)
    third.config["broken"] = object()
    with pytest.raises(TypeError, match="not JSON serializable"):
        third.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    again = KGEncoder.from_pretrained(tmp_path / "enc")
    assert torch.equal(again.null_tokens, second.null_tokens)  # not third's weights beside second's config


@pytest.mark.parametrize("conv", CONVS)
def test_config_files_build(conv, batch):
    cfg = OmegaConf.load(conf_dir() / "encoder" / f"{conv}.yaml")
    assert cfg.conv == conv and "num_tokens" not in cfg  # model.num_tokens is the one count (train.py passes it)
    with pytest.raises(UserError, match="out_dim"):
        KGEncoder.from_config(cfg)
    enc = KGEncoder.from_config(cfg, out_dim=16)
    assert enc(batch, torch.ones(4)).shape == (4, 8, 16)
    with pytest.raises(UserError, match="^encoder.hiden is not a setting of the KG encoder"):
        KGEncoder.from_config({**OmegaConf.to_container(cfg), "hiden": 512}, out_dim=16)  # a typo: not the default
    bases = {**OmegaConf.to_container(cfg), "num_bases": 2}
    if conv == "rgcn":
        assert KGEncoder.from_config(bases, out_dim=16).convs[0].num_bases == 2
    else:  # read by RGCNConv alone: dropped in silence elsewhere
        with pytest.raises(UserError, match=rf"^encoder.num_bases=2 applies to encoder.conv=rgcn only .*conv={conv}"):
            KGEncoder.from_config(bases, out_dim=16)


def test_overfits_three_profiles(graph_builder, profiles):
    enc = tiny().train()
    g = graph_builder.batch(profiles[:3])
    stage = torch.tensor([1.0, 2.0, 1.5])
    target = torch.randn(3, K, D, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = (enc(g, stage) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    checkpoints = losses[::10] + losses[-1:]
    assert all(b < a for a, b in zip(checkpoints, checkpoints[1:])), checkpoints  # decreasing
    with torch.no_grad():
        out = enc.eval()(g, stage)
    dist = torch.cdist(out.flatten(1), target.flatten(1))
    assert (dist.argmin(dim=1) == torch.arange(3)).all()  # each profile lands nearest its own target


@pytest.mark.parametrize("conv", CONVS)
def test_edgeless_batch_and_single_graph(conv, graph_builder, profiles):
    enc = tiny(conv)
    with torch.no_grad():
        healthy = enc(graph_builder.batch([profiles[-1], profiles[-1]]), torch.tensor([0.0, 1.0]))
        single = enc(graph_builder.graph(profiles[0]), torch.tensor([1.0]))
        batched = enc(graph_builder.batch([profiles[0]]), torch.tensor([1.0]))
    assert healthy.shape == (2, K, D) and torch.isfinite(healthy).all()
    assert not torch.allclose(healthy[0], healthy[1], atol=1e-4)  # the stage still acts without edges
    with torch.no_grad():  # and an edgeless graph's tokens do not depend on its batch-mate
        alone = enc(graph_builder.batch([profiles[-1]]), torch.tensor([0.0]))
    assert torch.allclose(healthy[:1], alone, atol=1e-5)
    assert torch.allclose(single, batched, atol=1e-6)
    # ... nor on whether its batch-mate has edges (hgt: a healthy-only batch skipped the conv, a mixed one did not)
    with torch.no_grad():
        mixed = enc(graph_builder.batch([profiles[0], profiles[-1]]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(mixed[1:], alone, atol=1e-5)


def test_centered_tokens_tell_diseases_apart_and_do_not_depend_on_the_batch_at_inference(graph_builder, profiles):
    """center_tokens: raw tokens of different profiles are nearly parallel (they share most of their graph);
    centering per token position spreads them, and at inference each graph's tokens ignore its batch-mates."""
    sick = [p for p in profiles if not p.healthy]
    stage = torch.full((len(sick),), 3.0)

    def mean_cos(out):
        f = torch.nn.functional.normalize(out.flatten(1), dim=-1)
        sim = f @ f.t()
        return sim[~torch.eye(len(f), dtype=torch.bool)].mean().item()

    torch.manual_seed(0)
    plain = tiny()
    torch.manual_seed(0)
    centered = tiny(center_tokens=True)
    with torch.no_grad():
        raw = mean_cos(plain.train()(graph_builder.batch(sick), stage))
        for _ in range(30):  # training-mode forwards accumulate the running statistics
            spread = mean_cos(centered.train()(graph_builder.batch(sick), stage))
        centered.eval()
        together = centered(graph_builder.batch(sick), stage)
        alone = centered(graph_builder.batch(sick[:1]), stage[:1])
    assert raw > 0.5 and spread < raw - 0.3, (raw, spread)
    assert torch.allclose(together[:1], alone, atol=1e-5)
    assert mean_cos(together) < raw - 0.3


# ---- tokens=phenotypes: a stage token + one token per phenotype node ------------------------------------------------
def phenotype_counts(batch):
    return torch.bincount(batch.batch[batch.weight_kind > 0], minlength=batch.num_graphs).tolist()


@pytest.mark.parametrize("conv", CONVS)
def test_phenotype_tokens_one_per_phenotype_and_gradients(conv, batch):
    slots = max(phenotype_counts(batch)) + 2
    enc = tiny(conv, tokens="phenotypes", num_tokens=slots + 1).train()
    out = enc(batch, torch.tensor([1.0, 2.0, 0.5, 0.0]))
    assert out.shape == (4, slots + 1, D) and torch.isfinite(out).all()
    assert enc.phenotype_overflow(batch) == 0 and enc.token_center is None
    enc.eval()
    with torch.no_grad():
        out = enc(batch, torch.tensor([1.0, 2.0, 0.5, 0.0]))
    for g, n in enumerate(phenotype_counts(batch)):  # filled slots differ, empty slots are one constant
        filled, empty = out[g, 1:1 + n], out[g, 1 + n:]
        assert torch.allclose(empty, empty[:1].expand_as(empty))
        if n:
            assert torch.cdist(filled, filled).add(torch.eye(n) * 1e3).min() > 1e-4
            assert not torch.allclose(filled[:1], empty[:1])
    assert phenotype_counts(batch)[3] == 0  # healthy: the stage token and empty slots only
    enc.train()
    out = enc(batch, torch.tensor([1.0, 2.0, 0.5, 0.0]))
    (out - torch.randn_like(out)).pow(2).mean().backward()
    for name, p in enc.named_parameters():
        if name in ("null_tokens", "unknown_stage") or ".p_rel." in name:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_phenotype_tokens_are_a_set_whatever_the_node_order(batch):
    """Tied weights may take their slots in another order when the nodes are listed differently; the set of tokens
    (what cross-attention reads) is the same."""
    enc = tiny("gatv2", tokens="phenotypes", num_tokens=max(phenotype_counts(batch)) + 1)
    stage = torch.tensor([1.0, 2.0, 0.5, 0.0])
    with torch.no_grad():
        a, b = enc(batch, stage), enc(permuted(batch, seed=3), stage)
    canon = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
    for g in range(4):
        assert torch.allclose(canon(a[g]), canon(b[g]), atol=1e-5)


def test_phenotype_tokens_keep_the_highest_weights_when_slots_run_out(graph_builder, profiles):
    import dataclasses

    enc = tiny("rgcn", tokens="phenotypes", num_tokens=4)
    # Down syndrome (more than 3 phenotypes), listed rarest first: node order is not weight order, so keeping the
    # first three nodes would keep the three rarest
    down = profiles[0]
    g = graph_builder.batch([dataclasses.replace(down, phenotypes=list(reversed(down.phenotypes)))])
    n = phenotype_counts(g)[0]
    assert n > 3 and enc.phenotype_overflow(g) == n - 3
    assert enc(g, torch.tensor([2.0])).shape == (1, 4, D)
    # the kept three are the three highest-weight phenotype nodes (ties in node order), computed here by hand
    with torch.no_grad():
        kept = enc(g, torch.tensor([2.0]))[0, 1:]
        stage_h = enc._stage_embedding(torch.tensor([2.0]), 1, "cpu")
        h = enc.encode_nodes(g, stage_h, torch.zeros(g.num_nodes, dtype=torch.long))
        nodes = torch.nonzero(g.weight_kind > 0).view(-1)
        top = nodes[torch.argsort(-g.weight[nodes], stable=True)[:3]]
        x = h[top] + enc.stage_to_token(stage_h)
        expected = enc.out_proj(enc.out_norm(x + enc.token_ff(x)))
    assert torch.allclose(kept, expected, atol=1e-5)
    weights = g.weight[nodes]
    assert weights[:3].max() < weights[top].min()  # the first three nodes are not the ones kept: the sort chose


def test_phenotype_tokens_round_trip_and_errors(tmp_path, batch):
    enc = tiny("rgcn", tokens="phenotypes", num_tokens=6, center_tokens=True)
    assert enc.config["tokens"] == "phenotypes" and enc.config["center_tokens"] is False
    enc.save_pretrained(tmp_path / "enc")
    again = KGEncoder.from_pretrained(tmp_path / "enc").eval()
    stage = torch.tensor([0.0, 1.0, 2.0, 3.0])
    with torch.no_grad():
        assert torch.equal(enc(batch, stage), again(batch, stage))
    with pytest.raises(UserError, match="encoder.tokens must be one of"):
        tiny("rgcn", tokens="nodes")
    with pytest.raises(UserError, match="num_tokens >= 2"):
        tiny("rgcn", tokens="phenotypes", num_tokens=1)
    # an encoder saved before the option existed reads as pooled tokens
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert KGEncoder(**{k: v for k, v in config.items() if k not in ("format", "tokens")}).token_mode == "pooled"
