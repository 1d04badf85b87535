"""`python -m kgface.profiles`: through Hydra from Python (main(overrides)) and as a real subprocess."""
import json
import re
import subprocess
import sys

import pytest
from rdflib import Graph, URIRef

from kgface.config import compose
from kgface.profiles import main


def test_profiles_cli_writes_json_and_turtle(tmp_path, capsys):
    out = tmp_path / "out"
    main(["diseases=[ORPHA:870,OMIM:163950]", f"hydra.run.dir={out}"])
    data = json.loads((out / "profiles.json").read_text())
    assert [p["disease_id"] for p in data["profiles"]] == ["ORPHA:870", "OMIM:163950"]
    ids = {ph["hpo_id"] for p in data["profiles"] for ph in p["phenotypes"]}
    assert ids and all(i.startswith("HP:") and len(i) == 10 for i in ids)
    down = {ph["hpo_id"]: ph for ph in data["profiles"][0]["phenotypes"]}
    assert down["HP:0000582"]["frequency"] == 0.895  # upslanted fissures, "Very frequent" in ORPHA:870
    g = Graph().parse(out / "profiles.ttl", format="turtle")
    assert len(g) > 100
    curies = {str(o) for o in g.objects(None, URIRef("https://w3id.org/kgface/vocab#curie"))}
    assert curies == {"ORPHA:870", "OMIM:163950"}
    assert (out / "cache_entries.json").exists()
    printed = capsys.readouterr().out
    assert "ORPHA:870" in printed and "Upslanted palpebral fissure" in printed


def test_one_disease_id_without_a_list(tmp_path, capsys):
    main(["diseases=ORPHA:870", f"hydra.run.dir={tmp_path}"])  # was a ValueError traceback from OmegaConf
    assert [p["disease_id"] for p in json.loads((tmp_path / "profiles.json").read_text())["profiles"]] == ["ORPHA:870"]
    with pytest.raises(SystemExit) as info:
        main(["diseases=[]", f"hydra.run.dir={tmp_path / 'none'}"])
    assert info.value.code == 2 and "diseases=[]: give disease ids or names" in capsys.readouterr().err


def test_malformed_panels_are_one_line_errors(tmp_path, capsys):
    from kgface.runtime import panel_queries

    one = panel_queries(compose("profiles", ["kg.panel=ORPHA:870"]))  # a panel of one, not of its characters
    assert one == [{"id": "ORPHA:870", "name": "ORPHA:870"}]
    for panel, words in (("[163950]", r"kg.panel\[0\]=163950: give a disease id as text"),
                         ("[{name: Down syndrome}]", r"kg.panel\[0\]=\{'name': 'Down syndrome'\}: give a disease id"),
                         ("[]", r"kg.panel=\[\] names no disease")):
        with pytest.raises(SystemExit) as info:  # a traceback, or (kg.panel=[]) an empty profiles.json and exit 0
            main([f"kg.panel={panel}", f"hydra.run.dir={tmp_path / 'x'}"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and re.search(words, err), err
        assert not (tmp_path / "x" / "profiles.json").exists()


def test_disease_lists_and_their_hints():
    from kgface.config import disease_list
    from kgface.errors import UserError

    assert disease_list(None) is None and disease_list(870) == ["870"] and disease_list(["a", 1]) == ["a", "1"]
    assert disease_list([], "data.heldout", allow_empty=True) == []
    with pytest.raises(UserError, match=r"^diseases=\[\]: .* or diseases=null for the kg's default panel$"):
        disease_list([])
    with pytest.raises(UserError, match=r"^data.heldout=\[\{'a': 1\}\]: .* or data.heldout=\[\] to hold none out$"):
        disease_list([{"a": 1}], "data.heldout", allow_empty=True)


def test_unknown_disease_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["diseases=[Downs syndrom]", f"hydra.run.dir={out}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kgface.profiles: error: unknown disease 'Downs syndrom'") and "Down syndrome" in err[-1]
    assert not (out / "profiles.json").exists() and not (out / "profiles.ttl").exists()


def test_a_folder_this_user_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    """A PermissionError (a shared cache, another user's OUT) or a full disk: one line naming the path, exit 2, not
    a traceback (root ignores chmod here, so the error is raised where the cache would raise it)."""
    import errno

    import kgface.profiles

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/shared/cache/kg-hpo/.tmp-1")

    monkeypatch.setattr(kgface.profiles, "load_profiles", refuse)
    with pytest.raises(SystemExit) as info:
        main([f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith("kgface.profiles: error: [Errno 13] Permission denied: '/shared/cache/kg-hpo/.tmp-1'; "
                             "check permissions and free space there")

    def full(*args, **kwargs):  # a write() names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kgface.profiles, "load_profiles", full)
    with pytest.raises(SystemExit) as info:
        main([f"hydra.run.dir={tmp_path / 'out2'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith(
        "kgface.profiles: error: [Errno 28] No space left on device (writing under paths.cache_dir or hydra.run.dir)")

    def broken(*args, **kwargs):  # not the user's to fix: Hydra's traceback, exit 1, as before
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(kgface.profiles, "load_profiles", broken)
    with pytest.raises(SystemExit) as info:
        main([f"hydra.run.dir={tmp_path / 'out3'}"])
    assert info.value.code == 1


@pytest.mark.parametrize("entry", ["profiles", "describe"])
def test_a_train_runs_profiles_and_descriptions_are_not_replaced(tmp_path, capsys, entry):
    """kgface.profiles / describe into a train run's folder would change what its generation and evaluation read."""
    import importlib

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "data.json").write_text("{}")
    (run / "profiles.json").write_text("kept")
    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"kgface.{entry}").main(["diseases=[ORPHA:870]", f"hydra.run.dir={run}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"hydra.run.dir={run} holds a kgface.train run" in err[-1]
    assert (run / "profiles.json").read_text() == "kept" and not (run / "descriptions.json").exists()


def test_config_groups_and_overrides():
    cfg = compose("profiles", ["kg=primekg", "kg.path=/data/kg.csv", "paths.cache_dir=/tmp/c"])
    assert cfg.kg.source == "primekg" and cfg.kg.path == "/data/kg.csv" and cfg.paths.cache_dir == "/tmp/c"
    assert compose("profiles").kg.panel[0].id == "ORPHA:870"


@pytest.mark.parametrize("overrides, message", [
    (["kg=nosuch"], "Could not find 'kg/nosuch'"),
    (["kg.nosuchkey=1"], "Could not override 'kg.nosuchkey'"),
])
def test_wrong_keys_are_hydra_errors(overrides, message):
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError

    with pytest.raises((HydraException, ConfigKeyError), match=message):
        compose("profiles", overrides)


def test_primekg_without_path_is_a_clear_cli_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kgface.profiles", "kg=primekg", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    # one clean line (not OmegaConf's "Missing mandatory value: kg.path" traceback), exit code 2
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "kgface.profiles: error: kg=primekg needs a file: set kg.path=/path/to/kg.csv"


def test_kg_files_a_source_does_not_read_are_refused(tmp_path, capsys):
    """kg.features under kg=rdf / hpo, kg.path under kg=hpo: never read, yet keyed the cache and the resume record."""
    ttl = tmp_path / "g.ttl"
    ttl.write_text("")
    for overrides, message in ((["kg=rdf", f"kg.path={ttl}", f"kg.features={ttl}"],
                                f"kg.features={ttl} is read by kg=primekg only"),
                               ([f"kg.features={ttl}"], "is read by kg=primekg only (its disease_features.csv); with "
                                                        "kg=hpo set kg.features=null"),
                               ([f"kg.path={ttl}"],
                                f"kg.path={ttl} is not read by kg=hpo; for a graph file use kg=rdf")):
        with pytest.raises(SystemExit) as info:
            main(overrides + ["diseases=[ORPHA:870]", f"hydra.run.dir={tmp_path / 'out'}"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err, err


def test_kg_paths_expand_the_home_folder_in_every_job(tmp_path, monkeypatch):
    # kgface.train's preflight expanded ~ in kg.* paths; profiles, describe, dataset and evaluate (all through
    # runtime.load_knowledge) read them as given
    import shutil

    from kgface.config import compose
    from kgface.resources import kg_data_dir
    from kgface.runtime import load_knowledge, make_cache

    shutil.copytree(kg_data_dir(), tmp_path / "kgd")
    edges = tmp_path / "kgd" / "supplement_edges.csv"
    lines = edges.read_text(encoding="utf-8").splitlines(keepends=True)
    edges.write_text("".join(lines[:-1]), encoding="utf-8")  # one curated edge fewer: this folder, not the bundled
    monkeypatch.setenv("HOME", str(tmp_path))
    for job in ("profiles", "describe", "dataset", "evaluate"):
        cfg = compose(job, ["kg.kg_data_dir='~/kgd'"])
        kg, catalog = load_knowledge(cfg, make_cache(cfg), progress=False)
        assert kg.stats["supplement_edges"] == len(lines) - 2 and len(catalog.entries) > 0, job


def test_two_jobs_never_write_one_folder_at_once(tmp_path, capsys):
    """One hydra.run.dir given to two jobs: the second is refused while the first holds the folder, and a holder that
    died leaves no lock behind (the kernel drops it). The default folders differ to the microsecond (jobs started in
    one second shared one)."""
    from kgface.config import claim_output

    out = tmp_path / "out"
    with claim_output(out):  # another job, here in this process (a second open of the folder is another holder)
        with pytest.raises(SystemExit) as info:
            main(["diseases=ORPHA:870", f"hydra.run.dir={out}"])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and "another kgface job is writing into this folder now" in err
        assert len(err.splitlines()) == 1 and not (out / "profiles.json").exists()
    holder = "import sys, time; from pathlib import Path; from kgface.config import claim_output\n" \
             "with claim_output(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit):
            main(["diseases=ORPHA:870", f"hydra.run.dir={out}"])
    finally:
        proc.kill()
        proc.wait()
    main(["diseases=ORPHA:870", f"hydra.run.dir={out}"])  # killed: no stale lock
    assert (out / "profiles.json").is_file()


def test_default_output_folders_are_unique_to_the_microsecond():
    import yaml

    from kgface.resources import conf_dir

    for path in sorted(conf_dir().glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["hydra"]["run"]["dir"].endswith("%H-%M-%S-%f}"), path
