"""The phantom benchmark builder: labels follow the KG, splits by identity, determinism, acne grades, the CLI."""
import json

import numpy as np
import pandas as pd
import pytest

from kgface.data.manifest import read_manifest
from kgface.data.phantom.acne import count_from_severity, grade_from_count
from kgface.data.phantom.dataset import (ACNE_TERMS, ATLAS, OTHER_KEYS, PhantomConfig, atlas_settings, build_atlas,
                                         build_phantom, draw_labels, heldout_coverage, identity_split, individual,
                                         isolated_effects, render_labels)
from kgface.data.phantom.effects import load_phantom_effects
from kgface.errors import UserError
from kgface.kg import ProfileBuilder, healthy_profile
from kgface.resources import kg_data_dir

SMALL = PhantomConfig(per_class=4, healthy_per_class=6, identities=80, size=32, supersample=2)


@pytest.fixture(scope="module")
def table():
    return load_phantom_effects(kg_data_dir() / "phantom_effects.csv")


@pytest.fixture(scope="module")
def profiles(hpo_kg, catalog):
    b = ProfileBuilder(hpo_kg, catalog)
    return {q: b.build(q) for q in ["ORPHA:870", "ORPHA:963", "MONDO:0011438", "MONDO:0006604", "ORPHA:648"]}


def test_presence_follows_kg_frequency(profiles):
    """Across 400 individuals each phenotype is present at its KG frequency (binomial 4-sigma band)."""
    cfg = PhantomConfig()
    down = profiles["ORPHA:870"]
    counts = {p.hpo_id: 0 for p in down.phenotypes}
    n = 400
    for i in range(n):
        for h in individual(down, i, cfg):
            counts[h] += 1
    for p in down.phenotypes:
        f = p.frequency
        sigma = max(np.sqrt(f * (1 - f) / n), 1e-3)
        assert abs(counts[p.hpo_id] / n - f) < 4 * sigma + 0.01, (p.name, counts[p.hpo_id] / n, f)


def test_unknown_frequency_uses_the_documented_default(hpo_kg, catalog):
    prof = ProfileBuilder(hpo_kg, catalog).build("ORPHA:870")  # a private copy: frequencies are edited below
    for p in prof.phenotypes:
        p.frequency = None
    for cfg, expected in ((PhantomConfig(), 0.5), (PhantomConfig(unknown_frequency=0.25), 0.25)):
        share = np.mean([len(individual(prof, i, cfg)) / len(prof.phenotypes) for i in range(300)])
        assert abs(share - expected) < 0.03, (cfg.unknown_frequency, share)


def test_stage_zero_shows_nothing_and_intensity_grows(profiles, table, hpo_kg, catalog):
    prof = ProfileBuilder(hpo_kg, catalog).build("ORPHA:963")
    cfg = PhantomConfig()
    for i in range(5):
        labels = [draw_labels(prof, i, s, cfg, table) for s in range(4)]
        assert labels[0]["phenotypes"] == {} and labels[0]["severity"] == 0.0
        assert [round(l["severity"]) for l in labels] == [0, 1, 2, 3]
        assert labels[1]["phenotypes"]  # (acromegaly has 8 very frequent visible terms: never none drawn)
        assert set(labels[1]["phenotypes"]) == set(labels[2]["phenotypes"]) == set(labels[3]["phenotypes"])
        for h, t in labels[1]["phenotypes"].items():  # the same phenotypes, growing
            assert labels[2]["phenotypes"][h] > t and labels[3]["phenotypes"][h] > labels[2]["phenotypes"][h]
        assert all(h in table for l in labels for h in l["phenotypes"])  # only what is drawn is labelled


def test_acne_grades_and_nested_lesions(hpo_kg, catalog, table):
    acne = ProfileBuilder(hpo_kg, catalog).build("MONDO:0011438")
    cfg = PhantomConfig()
    for i in range(30):
        for stage in range(4):
            lab = draw_labels(acne, i, stage, cfg, table)
            if lab["identity"].age_group == "child":  # too young for acne's onset (the builder never picks one):
                assert lab["lesion_count"] == 0 and lab["phenotypes"] == {}  # no lesions, as the labels say
                continue
            assert lab["lesion_count"] >= 1 and grade_from_count(lab["lesion_count"]) == stage
    # rosacea stage 0 shows nothing; from stage 2 its papules / pustules are lesions counted on the acne scale
    # (renderer 2) exactly where a face is labelled with one, and uncounted (-1) where none shows
    rosacea = ProfileBuilder(hpo_kg, catalog).build("MONDO:0006604")
    lab = draw_labels(rosacea, 1, 0, cfg, table)
    assert lab["lesion_count"] == -1 and lab["phenotypes"] == {}
    counted = 0
    for i in range(40):
        for stage in (2, 3):
            lab = draw_labels(rosacea, i, stage, cfg, table)
            if any(h in ACNE_TERMS for h in lab["phenotypes"]):
                assert lab["lesion_count"] == count_from_severity(lab["severity"]) >= 1
                counted += 1
            else:
                assert lab["lesion_count"] == -1
    assert 0 < counted < 80  # both cases drawn


def test_lesions_are_drawn_only_on_individuals_whose_labels_show_acne(profiles, table):
    """Acromegaly has acne in some patients (HPO: occasional): a face gets lesions exactly when its labels name an
    acne term, so no face shows lesions its labels do not (renderer 1 drew them on every acromegaly face)."""
    from kgface.data.phantom.dataset import ACNE_TERMS

    cfg, acro = PhantomConfig(), profiles["ORPHA:963"]
    with_acne = without = 0
    for i in range(60):
        for stage in (1, 2, 3):
            lab = draw_labels(acro, i, stage, cfg, table)
            shows = any(h in ACNE_TERMS for h in lab["phenotypes"])
            assert (lab["lesion_count"] > 0) == shows, (i, stage, lab)
            with_acne, without = with_acne + shows, without + (not shows)
    assert with_acne and without > with_acne  # both kinds drawn; most acromegaly faces have no acne


def test_identity_persists_across_stages(hpo_kg, catalog, table):
    prof = ProfileBuilder(hpo_kg, catalog).build("ORPHA:870")
    cfg = PhantomConfig(size=64)
    imgs = [np.asarray(render_labels(draw_labels(prof, 3, s, cfg, table), cfg, table), dtype=float) for s in range(4)]
    healthy = np.asarray(render_labels({"identity": draw_labels(prof, 3, 0, cfg, table)["identity"], "severity": 0,
                                        "lesion_count": -1, "phenotypes": {}}, cfg, table), dtype=float)
    assert np.array_equal(imgs[0], healthy)  # stage 0 is this person without signs
    d1, d3 = np.abs(imgs[1] - imgs[0]).mean(), np.abs(imgs[3] - imgs[0]).mean()
    assert 0 < d1 < d3  # the same face, changing more with the stage
    other = np.asarray(render_labels(draw_labels(prof, 4, 0, cfg, table), cfg, table), dtype=float)
    assert np.abs(other - imgs[0]).mean() > d3 / 2  # another identity differs


def test_build_splits_by_identity_and_is_deterministic(profiles, table, tmp_path):
    profs = [profiles["ORPHA:870"], profiles["MONDO:0011438"], healthy_profile("hpo")]
    rows, stats = build_phantom(profs, SMALL, table, tmp_path / "a", heldout=["MONDO:0011438"], progress=False)
    rows2, _ = build_phantom(profs, SMALL, table, tmp_path / "b", heldout=["MONDO:0011438"], progress=False)
    assert rows == rows2
    for r in rows[:10]:
        assert (tmp_path / "a" / r["path"]).read_bytes() == (tmp_path / "b" / r["path"]).read_bytes()
    df = pd.DataFrame(rows)
    assert df.groupby("identity")["split"].nunique().max() == 1
    assert set(df["split"]) == {"train", "val", "test"}
    assert len(df[df.disease == "ORPHA:870"]) == SMALL.per_class * 4 and len(df[df.disease == "healthy"]) == 6
    assert df[df.disease == "MONDO:0011438"]["heldout"].all() and not df[df.disease == "ORPHA:870"]["heldout"].any()
    assert set(stats["renderable_share"]) == {"ORPHA:870", "MONDO:0011438"}
    assert stats["rows_showing_nothing"] == {}  # every diseased individual shows something of its disease
    splits = identity_split(SMALL)
    assert len(splits) == SMALL.identities and sorted(set(splits.values())) == ["test", "train", "val"]


def test_heldout_coverage_counts_phenotypes_seen_in_training(profiles, table, hpo_kg, catalog):
    from kgface.config import compose
    from kgface.runtime import load_profiles

    panel = load_profiles(compose("dataset"), knowledge=(hpo_kg, catalog))
    full = heldout_coverage(panel, ["ORPHA:648", "ORPHA:199"], table, 0.5)
    assert full["ORPHA:648"] > 0.8 and full["ORPHA:199"] > 0.7  # the pinned default is well covered
    few = heldout_coverage(list(profiles.values()), ["ORPHA:648"], table, 0.5)
    assert few["ORPHA:648"] < full["ORPHA:648"]  # fewer training diseases, less coverage
    alone = heldout_coverage([profiles["ORPHA:648"]], ["ORPHA:648"], table, 0.5)
    assert alone["ORPHA:648"] == 0.0  # nothing seen in training when it is the only disease


def test_dataset_cli_writes_manifest_sheet_and_reuses_cache(tmp_path, capsys):
    from kgface.dataset import main

    args = ["data.per_class=2", "data.healthy_per_class=4", "data.identities=60", "data.size=32",
            "data.supersample=2", "data.diseases=[ORPHA:870,ORPHA:648,MONDO:0011438]", "data.heldout=[ORPHA:648]",
            "data.atlas.faces=0"]
    main(args + [f"hydra.run.dir={tmp_path / 'one'}"])
    df, report = read_manifest(tmp_path / "one" / "manifest.csv")
    assert len(df) == 3 * 2 * 4 + 4 and report.skipped == []
    assert set(df["disease"]) == {"ORPHA:870", "ORPHA:648", "MONDO:0011438", "healthy"}
    assert (tmp_path / "one" / "contact_sheet.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "one" / "dataset.json").read_text())
    assert "ORPHA:648" in stats["heldout_coverage"]
    first = capsys.readouterr()
    assert "held-out diseases" in first.out
    assert "rendering" in first.err  # the first run rendered: the check below can tell a reuse from it
    main(args + [f"hydra.run.dir={tmp_path / 'two'}"])
    assert "rendering" not in capsys.readouterr().err  # second run reused the cached entry
    assert (tmp_path / "two" / "manifest.csv").read_text() == (tmp_path / "one" / "manifest.csv").read_text()
    one_id = [a if a != "data.heldout=[ORPHA:648]" else "data.heldout=ORPHA:648" for a in args]  # one id, no list
    main(one_id + [f"hydra.run.dir={tmp_path / 'three'}"])
    assert (tmp_path / "three" / "manifest.csv").read_text() == (tmp_path / "one" / "manifest.csv").read_text()
    # a user's own images/ in OUT, with no dataset.json beside it (no build wrote it): refused, never removed
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "holiday.png").write_bytes(b"mine")
    with pytest.raises(SystemExit) as info:
        main(args + [f"hydra.run.dir={mine}"])
    assert info.value.code == 2 and "holds images that no earlier run of the data set wrote" in capsys.readouterr().err
    assert (mine / "images" / "holiday.png").read_bytes() == b"mine" and not (mine / "manifest.csv").exists()


def test_dataset_cli_writes_the_atlas_beside_the_manifest(tmp_path):
    from kgface.dataset import main

    args = ["data.per_class=2", "data.healthy_per_class=4", "data.identities=60", "data.size=32",
            "data.supersample=2", "data.diseases=[ORPHA:870,MONDO:0011438]", "data.heldout=[]",
            f"hydra.run.dir={tmp_path}"]
    main(args + ["data.atlas.faces=5"])
    atlas, _ = read_manifest(tmp_path / "phenotype_atlas.csv")  # every atlas image is there
    assert len(atlas) == 5 and set(atlas["disease"]) == {ATLAS}
    assert ATLAS not in set(read_manifest(tmp_path / "manifest.csv")[0]["disease"])
    main(args + ["data.atlas.faces=0"])  # the same folder without an atlas: the old one must not linger
    assert not (tmp_path / "phenotype_atlas.csv").exists()


IMPOSSIBLE = [
    ({"per_class": 61, "identities": 60}, r"data.per_class=61 needs 43 train identities.*gives 42; raise "
                                          r"data.identities or lower data.per_class"),
    ({"healthy_per_class": 100, "identities": 60}, r"data.healthy_per_class=100 needs 70 train identities"),
    ({"per_class": 0}, r"data.per_class must be an integer >= 1, got 0"),
    ({"identities": 2.5}, r"data.identities must be an integer >= 1, got 2.5"),
    ({"stages": (0, 4)}, r"data.stages must be distinct whole stages 0..3"),
    ({"stages": (1, 1)}, r"data.stages must be distinct whole stages 0..3"),
    ({"stages": ()}, r"data.stages must be distinct whole stages 0..3"),
    ({"split_fractions": (0.5, 0.1, 0.1)}, r"data.split_fractions must sum to 1, got \[0.5, 0.1, 0.1\] \(sum 0.7\)"),
    ({"split_fractions": (0.9, 0.1)}, r"data.split_fractions must be three fractions"),
    ({"split_fractions": (1.2, -0.2, 0.0)}, r"data.split_fractions must be three fractions"),
    ({"per_class": 3, "split_fractions": (0.5, 0.5, 0.0)}, r"data.per_class=3 is too small to split"),
    ({"unknown_frequency": 1.5}, r"data.unknown_frequency must be a number in \[0, 1\]"),
    ({"severity_jitter": float("nan")}, r"data.severity_jitter must be a number in \[0, 1\], got nan"),
    ({"severity_jitter": "x"}, r"data.severity_jitter must be a number in \[0, 1\], got 'x'"),
    ({"size": 8}, r"data.size must be an integer >= 16, got 8"),  # the renderer's limits, before any drawing
    ({"supersample": 0}, r"data.supersample must be an integer >= 1, got 0"),
    ({"seed": -1}, r"data.seed must be an integer >= 0, got -1"),  # a numpy traceback naming no key
    ({"seed": None}, r"data.seed must be an integer >= 0, got None"),
]


@pytest.mark.parametrize("values,message", IMPOSSIBLE, ids=[str(v) for v, _ in IMPOSSIBLE])
def test_settings_the_builder_cannot_honour_are_one_line_errors(values, message):
    with pytest.raises(UserError, match=message):
        PhantomConfig(**{"per_class": 4, "healthy_per_class": 6, "identities": 60, **values})
    # the boundary: exactly as many identities as a split holds is fine
    PhantomConfig(per_class=60, healthy_per_class=60, identities=60)


BAD_ATLAS = [
    ({"faces": -1}, r"data.atlas.faces must be an integer >= 0, got -1"),
    ({"faces": "many"}, r"data.atlas.faces must be an integer >= 0, got 'many'"),
    ({"per_face": [8, 4]}, r"data.atlas.per_face must be \[low, high\] whole numbers with 1 <= low <= high"),
    ({"per_face": [0, 3]}, r"data.atlas.per_face must be"),
    ({"per_face": 4}, r"data.atlas.per_face must be"),
    ({"intensity": [1.0, 0.5]}, r"data.atlas.intensity must be \[low, high\] with 0 < low <= high <= 1"),
    ({"intensity": [0.5, 1.5]}, r"data.atlas.intensity must be"),
    ({"intensity": [0.0, 1.0]}, r"data.atlas.intensity must be"),  # an intensity 0 draws nothing, yet labels it
    ({"face": 10}, r"data.atlas.face is not a setting of the phenotype atlas; known: faces, per_face, intensity"),
]


@pytest.mark.parametrize("atlas,message", BAD_ATLAS, ids=[str(a) for a, _ in BAD_ATLAS])
def test_atlas_settings_the_builder_cannot_honour_are_one_line_errors(atlas, message):
    with pytest.raises(UserError, match=message):
        atlas_settings(atlas)


def test_atlas_settings_defaults_and_bounds():
    assert atlas_settings(None) == (0, (4, 8), (0.5, 1.0))
    assert atlas_settings({"faces": 3, "per_face": [2, 2], "intensity": [1, 1]}) == (3, (2, 2), (1.0, 1.0))


def test_a_bad_atlas_setting_stops_the_dataset_cli_before_rendering(tmp_path, capsys):
    from kgface.dataset import main

    with pytest.raises(SystemExit) as info:
        main(["data.diseases=[ORPHA:870]", "data.heldout=[]", "data.atlas.faces=5", "data.atlas.per_face=[6,2]",
              f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "data.atlas.per_face must be" in err and "Traceback" not in err
    assert not (tmp_path / "manifest.csv").exists()
    # a data.* key data=phantom does not read (a typo, a real adapter's key) built the default in silence
    with pytest.raises(SystemExit) as info:
        main(["data.diseases=[ORPHA:870]", "data.heldout=[]", "+data.per_clas=10", "+data.val_fraction=0.2",
              f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "data=phantom: unknown settings ['data.per_clas', 'data.val_fraction']" in err


def test_default_and_benchmark_configs_are_valid():
    from omegaconf import OmegaConf

    from kgface.config import compose

    for overrides, per_class, atlas_faces in (([], 150, 0), (["experiment=benchmark"], 300, 16000)):
        data = OmegaConf.to_container(compose("train", overrides).data, resolve=True)
        assert PhantomConfig.from_dict(data).per_class == per_class
        assert atlas_settings(data.get("atlas"))[0] == atlas_faces
        assert PhantomConfig.from_dict(data).unknown_frequency == 0.5  # the documented default, in the data config
        assert not set(data) - set(PhantomConfig.__dataclass_fields__) - set(OTHER_KEYS)  # every key is read


def test_effect_footprints_measure_how_much_of_the_face_a_phenotype_changes():
    from kgface.config import compose
    from kgface.data.build import effect_footprints

    fp = effect_footprints(compose("train", []), ["HP:0001041", "HP:0011457"], identity_ids=[100, 101, 102])
    redness, lashes = fp["HP:0001041"], fp["HP:0011457"]  # facial erythema; loss of eyelashes
    assert redness["mean_abs"] > 5 * lashes["mean_abs"] > 0
    # the lashes are a handful of the 64 x 64 pixels; the redness covers the cheeks
    assert 1 <= lashes["pixels"] < 40 < redness["pixels"] < 64 * 64
    # a hair term on identities some of which are bald: each face against its own bare face (it broadcast-failed)
    from kgface.data.phantom.identity import sample_identity

    seed = compose("train", []).data.seed
    bald = next(i for i in range(100, 400) if sample_identity(seed, i).hair_style == "none")
    haired = [i for i in range(100, 400) if sample_identity(seed, i).hair_style != "none"][:2]
    hair = effect_footprints(compose("train", []), ["HP:0002209"], identity_ids=[haired[0], bald, haired[1]])
    assert hair["HP:0002209"]["mean_abs"] > 0


def test_identities_too_young_for_a_disease_are_a_one_line_error(profiles, table, tmp_path):
    cfg = PhantomConfig(per_class=20, healthy_per_class=0, identities=20, split_fractions=(0.0, 0.0, 1.0))
    with pytest.raises(UserError, match=r"data.per_class=20 needs 20 test identities old enough for MONDO:0006604"):
        build_phantom([profiles["MONDO:0006604"]], cfg, table, tmp_path, heldout=[], progress=False)


def test_dataset_cli_refuses_a_pool_too_small(tmp_path, capsys):
    from kgface.dataset import main

    with pytest.raises(SystemExit) as info:
        main(["data.per_class=70", "data.identities=60", "data.diseases=[ORPHA:870]", "data.heldout=[]",
              f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "data.per_class=70 needs 49 train identities" in err
    assert "Traceback" not in err and not (tmp_path / "manifest.csv").exists()


def test_unknown_heldout_is_a_clear_error(tmp_path, capsys):
    from kgface.dataset import main

    with pytest.raises(SystemExit) as info:
        main(["data.diseases=[ORPHA:870]", "data.heldout=[ORPHA:99]", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2 and "data.heldout" in capsys.readouterr().err
    assert not (tmp_path / "manifest.csv").exists()


def test_isolated_effects_draw_one_phenotype_on_the_bare_faces(profiles, table):
    terms = [p.hpo_id for p in profiles["MONDO:0006604"].phenotypes if p.hpo_id in table][:3] + ["HP:9999999"]
    images, labels = isolated_effects(SMALL, table, terms, [3, 5, 7], per_term=2)
    assert labels == [None] * 3 + [h for h in terms[:3] for _ in range(2)]  # a term the renderer lacks: skipped
    bare = [np.asarray(im, dtype=int) for im in images[:3]]
    for k, h in enumerate(labels[3:]):
        face = np.asarray(images[3 + k], dtype=int)
        assert np.abs(face - bare[k % 2]).sum() > 0, h  # the phenotype changes the same identity's face


def test_atlas_draws_panel_phenotypes_without_their_diseases(profiles, table, tmp_path):
    profs = [profiles["ORPHA:870"], profiles["MONDO:0006604"], healthy_profile("hpo")]
    vocab = {p.hpo_id for prof in profs for p in prof.phenotypes if p.hpo_id in table}
    rows = build_atlas(profs, SMALL, table, tmp_path / "a", faces=30, per_face=(2, 4), progress=False)
    assert rows == build_atlas(profs, SMALL, table, tmp_path / "b", faces=30, per_face=(2, 4), progress=False)
    assert (tmp_path / "a" / rows[0]["path"]).read_bytes() == (tmp_path / "b" / rows[0]["path"]).read_bytes()
    splits = identity_split(SMALL)
    seen = set()
    for r in rows:
        ph = json.loads(r["phenotypes"])
        assert 2 <= len(ph) <= 4 and set(ph) <= vocab and all(0.5 <= v <= 1.0 for v in ph.values())
        effects = [table[h].key.split("[")[0] for h in ph]
        assert len(effects) == len(set(effects))  # one term per effect: no face both up- and downslanted
        assert r["disease"] == ATLAS and r["split"] == "train"
        assert splits[int(r["identity"].rsplit("-", 1)[-1])] == "train"  # test faces stay unseen
        seen |= set(ph)
    assert len(seen) > len(vocab) // 2  # the phenotypes are spread, not a fixed subset
    # phenotypes come apart from their diseases: two of one disease's phenotypes are not always drawn together
    down = [p.hpo_id for p in profiles["ORPHA:870"].phenotypes if p.hpo_id in table]
    together = [sum(h in json.loads(r["phenotypes"]) for h in down) for r in rows]
    assert max(together) < len(down)
    assert build_atlas(profs, SMALL, table, tmp_path / "c", faces=0, progress=False) == []


def test_identity_labels_round_trip_and_foreign_labels_are_errors():
    from kgface.data.phantom.dataset import identity_label, identity_number

    assert identity_label(42) == "phantom-42" and identity_number(identity_label(42)) == 42
    for bad in ("user-42", "phantom-", "phantom-4a", "42"):
        with pytest.raises(ValueError, match="phantom identity label"):
            identity_number(bad)


@pytest.mark.parametrize("mark", ["metrics.json", "generation.json", "trial.csv", "data.json"])
def test_dataset_cli_refuses_to_overwrite_another_jobs_output(tmp_path, capsys, mark):
    # a generated set's manifest.csv and images/ (or a trial's, or a train run) would be replaced by the data set's
    from kgface.dataset import main

    (tmp_path / mark).write_text("{}")
    (tmp_path / "manifest.csv").write_text("kept\n")
    with pytest.raises(SystemExit) as info:
        main(["data.diseases=[ORPHA:870]", "data.heldout=[]", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2 and f"hydra.run.dir={tmp_path}" in capsys.readouterr().err
    assert (tmp_path / "manifest.csv").read_text() == "kept\n"


@pytest.mark.parametrize("heldout", ["[healthy]", "[ORPHA:870]"])
def test_the_phantom_refuses_to_hold_out_healthy_or_every_disease(tmp_path, capsys, heldout):
    """As real data does: healthy held out left the generator and its VAE without a healthy face, and holding out
    the only disease left it nothing sick to learn; both built a data set without a word."""
    from kgface.dataset import main

    with pytest.raises(SystemExit) as info:
        main(["data.diseases=[ORPHA:870]", f"data.heldout={heldout}", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"data.heldout=['{heldout[1:-1]}']: name diseases of the panel (ORPHA:870)" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_rows_that_show_nothing_of_their_disease_are_counted_and_said(table, tmp_path, caplog):
    # a disease whose only renderable sign is rare: an individual's 50 draws can all miss it, and its stage 1-3 faces
    # were the bare face under the disease's label, silently
    import logging

    from kgface.kg.profiles import FacialProfile, Phenotype

    rare = FacialProfile(disease_id="D:1", name="rare signs", kg="hpo",
                         phenotypes=[Phenotype("HP:0000316", "Hypertelorism", "eyes", "wide-set eyes", 0.01)])
    with caplog.at_level(logging.WARNING, logger="kgface.data.phantom.dataset"):
        rows, stats = build_phantom([rare, healthy_profile("hpo")], SMALL, table, tmp_path, heldout=[],
                                    progress=False)
    blank = [r for r in rows if r["disease"] == "D:1" and r["stage"] >= 1 and r["phenotypes"] == "{}"]
    assert blank and stats["rows_showing_nothing"] == {"D:1": len(blank)}
    said = f"phantom: {len(blank)} disease rows of stages 1-3 show none of their disease's phenotypes (D:1 "
    assert said in caplog.text


def test_labels_hold_only_what_a_face_can_show(hpo_kg, catalog, table):
    """Renderer 3: no hair term on a bald head, never two terms that cancel (wide and narrow mouth) or hide each other
    (absent brows), one intensity per drawn effect, acne terms at s / 3, no natural blue irides, and every diseased
    individual shows something by stage 3 (leprosy drew nothing for 39 of 300 individuals)."""
    from kgface.data.phantom.dataset import _age_index, _earliest_onset, severity_of
    from kgface.data.phantom.effects import HAIR_ONLY, conflict
    from kgface.data.phantom.identity import sample_identity

    cfg = PhantomConfig()
    b = ProfileBuilder(hpo_kg, catalog)
    bald = [i for i in range(600) if sample_identity(cfg.seed, i).hair_style == "none"]
    assert len(bald) > 20 and all(sample_identity(cfg.seed, i).eye_colour != "blue" for i in range(600))
    for disease in ("ORPHA:861", "ORPHA:199", "ORPHA:548", "MONDO:0011438"):
        prof = b.build(disease)
        for i in list(range(150)) + bald[:20]:
            if _age_index(sample_identity(cfg.seed, i).age_group) < _earliest_onset(prof):
                continue  # never chosen for this disease (choose_identities): acne waits for the juvenile years
            lab = draw_labels(prof, i, 3, cfg, table)
            keys = {h: table[h].key for h in lab["phenotypes"]}
            assert keys or lab["lesion_count"] > 0, (disease, i)  # a stage-3 face shows its disease
            if lab["identity"].hair_style == "none":
                assert not HAIR_ONLY & set(keys.values()), (disease, i)
            assert not any(conflict(a, b) for a in keys.values() for b in keys.values()), (disease, i, keys)
            for h, key in keys.items():  # one effect, one intensity
                assert all(lab["phenotypes"][g] == lab["phenotypes"][h] for g, k in keys.items() if k == key)
    acne = b.build("MONDO:0011438")
    for i in (i for i in range(60) if _age_index(sample_identity(cfg.seed, i).age_group) >= 1):
        lab = draw_labels(acne, i, 2, cfg, table)
        s = severity_of(2, i, acne.disease_id, cfg)
        assert all(t == round(s / 3, 4) for t in lab["phenotypes"].values()) and lab["phenotypes"]
    # Treacher Collins' wide and narrow mouth (0.17 each) were both labelled on some individuals; now the draw keeps
    # one, and the other still appears on its own
    tc = b.build("ORPHA:861")
    mouths = [set(individual(tc, i, cfg, table)) & {"HP:0000154", "HP:0000160"} for i in range(400)]
    assert all(len(m) < 2 for m in mouths) and {"HP:0000154"} in mouths and {"HP:0000160"} in mouths
    assert any(len(m) == 2 for m in (set(individual(tc, i, cfg)) & {"HP:0000154", "HP:0000160"} for i in range(400)))


def test_isolated_effects_and_the_atlas_draw_hair_terms_on_hair_only(profiles, table, tmp_path):
    from kgface.data.phantom.effects import HAIR_ONLY, conflict
    from kgface.data.phantom.identity import sample_identity

    hair_terms = sorted(h for h, e in table.items() if e.key in HAIR_ONLY)
    bald = [i for i in range(400) if sample_identity(SMALL.seed, i).hair_style == "none"][:2]
    haired = [i for i in range(400) if sample_identity(SMALL.seed, i).hair_style != "none"][:2]
    _, labels = isolated_effects(SMALL, table, hair_terms, bald + haired, per_term=2)
    assert labels.count(hair_terms[0]) == 2  # drawn on the two haired identities, not the bald ones listed first
    rows = build_atlas(list(profiles.values()), SMALL, table, tmp_path, faces=300, per_face=(6, 8))
    idents = [sample_identity(SMALL.seed, int(r["identity"].split("-")[-1])) for r in rows]
    assert any(i.hair_style == "none" for i in idents)  # the bald branch below is reached
    for r in rows:
        keys = [table[h].key for h in json.loads(r["phenotypes"])]
        ident = sample_identity(SMALL.seed, int(r["identity"].split("-")[-1]))
        assert not any(conflict(a, b) for a in keys for b in keys)
        if ident.hair_style == "none":
            assert not HAIR_ONLY & set(keys)


def test_materialise_gives_out_copies_an_edit_in_place_cannot_reach_the_cache(tmp_path):
    """Hard links shared the cache entry's files: an image overwritten in place in OUT (`cp` over it) changed the
    entry, and every later run of that config trained on it under the old labels."""
    from kgface.data.build import materialise

    src = tmp_path / "entry"
    (src / "images" / "d").mkdir(parents=True)
    (src / "images" / "d" / "x.png").write_bytes(b"cached bytes")
    (src / "manifest.csv").write_text("path\nimages/d/x.png\n")
    (src / "dataset.json").write_text("{}")
    out = tmp_path / "out"
    materialise(src, out)
    with open(out / "images" / "d" / "x.png", "r+b") as f:  # in place, as cp over an existing file writes
        f.write(b"edited")
    assert (src / "images" / "d" / "x.png").read_bytes() == b"cached bytes"
    assert (out / "manifest.csv").read_text() == (src / "manifest.csv").read_text()
