"""A non-editable install (a built wheel) finds conf/, kg_data/ and prompts/ and can compose the configs."""
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_assets(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob("kgface-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    # -S: skip site.py, so the editable install's import hook cannot hand us the checkout instead of the wheel
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(target)!r}]
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        import kgface.resources as r
        assert str(r.asset_root()).startswith({str(target)!r}), r.asset_root()
        assert (r.kg_data_dir() / "visible_phenotypes.csv").is_file()
        assert (r.prompts_dir()).is_dir()
        from kgface.config import compose
        print(compose("profiles").kg.panel[0].id)
        from kgface.prompts import template_hash
        print(template_hash())  # the wheel's templates and schema are the checkout's
    """)
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    from kgface.prompts import template_hash

    assert proc.stdout.split() == ["ORPHA:870", template_hash()]


def test_a_kgface_assets_folder_without_the_assets_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    # set on purpose: falling back to the bundled conf/ in silence would run another config than the packager's
    import pytest

    from kgface.resources import asset_root

    (tmp_path / "conf").mkdir()
    monkeypatch.setenv("KGFACE_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"has no kg_data/, prompts/; it must hold conf/, kg_data/, prompts/"):
        asset_root()
    from kgface.profiles import main

    with pytest.raises(SystemExit) as info:
        main([f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"kgface.profiles: error: KGFACE_ASSETS={tmp_path}")
    for name in ("kg_data", "prompts"):
        (tmp_path / name).mkdir()
    assert asset_root() == tmp_path
    # relative or ~: made absolute (Hydra read a relative config path against the package, not the working dir)
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("KGFACE_ASSETS", tmp_path.name)
    assert asset_root() == tmp_path.resolve() and asset_root().is_absolute()
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    monkeypatch.setenv("KGFACE_ASSETS", f"~/{tmp_path.name}")
    assert asset_root() == tmp_path.resolve()
