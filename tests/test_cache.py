import json

import pytest

from kgface.cache import Cache, atomic_path, stable_hash, write_json_atomic


def test_entry_key_follows_spec(tmp_path):
    cache = Cache(tmp_path)
    a, b = cache.entry("kind", {"x": 1, "y": [1, 2]}), cache.entry("kind", {"y": [1, 2], "x": 1})
    assert a.key == b.key == stable_hash({"x": 1, "y": [1, 2]})
    assert cache.entry("kind", {"x": 2}).key != a.key


def test_entry_is_built_atomically(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.entry("thing", {"v": 1})
    assert not entry.exists()
    with pytest.raises(RuntimeError):
        with entry.build() as tmp:
            (tmp / "part.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-build")
    assert not entry.exists() and list((tmp_path / "thing").iterdir()) == []
    with entry.build() as tmp:
        (tmp / "data.txt").write_text("done")
    assert entry.exists() and (entry.path / "data.txt").read_text() == "done"
    meta = json.loads((entry.path / "entry.json").read_text())
    assert meta["spec"] == {"v": 1} and meta["kind"] == "thing"


def test_run_records_entries_used(tmp_path):
    cache = Cache(tmp_path / "c")
    cache.entry("a", {"i": 1})
    cache.entry("a", {"i": 1})
    cache.entry("b", {"i": 2})
    rows = json.loads(cache.record(tmp_path / "run").read_text())
    assert [r["kind"] for r in rows] == ["a", "b"]


def test_atomic_file_write_leaves_old_content_on_failure(tmp_path):
    target = write_json_atomic(tmp_path / "out.json", {"ok": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
