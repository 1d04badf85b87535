import json
from pathlib import Path

import pytest

from kgface.cache import Cache, atomic_folder, atomic_path, stable_hash, write_json_atomic


def test_entry_key_follows_spec(tmp_path):
    cache = Cache(tmp_path)
    a, b = cache.entry("kind", {"x": 1, "y": [1, 2]}), cache.entry("kind", {"y": [1, 2], "x": 1})
    assert a.key == b.key == stable_hash({"x": 1, "y": [1, 2]})
    assert cache.entry("kind", {"x": 2}).key != a.key


def test_entry_is_built_atomically(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.entry("thing", {"v": 1})
    assert not entry.exists()
    with pytest.raises(RuntimeError, match="^crash mid-build$"):  # the test's own error, not one of the cache's
        with entry.build() as tmp:
            (tmp / "part.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-build")
    assert not entry.exists() and list((tmp_path / "thing").iterdir()) == []
    with entry.build() as tmp:
        (tmp / "data.txt").write_text("done")
    assert entry.exists() and (entry.path / "data.txt").read_text() == "done"
    meta = json.loads((entry.path / "entry.json").read_text())
    assert meta["spec"] == {"v": 1} and meta["kind"] == "thing"
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    assert (entry.path.stat().st_mode & 0o777) == 0o777 & ~mask  # a plain mkdir's mode, not mkdtemp's 0700


def test_an_entry_another_process_renamed_in_first_is_kept(tmp_path, monkeypatch):
    # two runs built the same entry; the rival's rename lands between this one's check and its own rename
    import os

    cache = Cache(tmp_path)
    entry = cache.entry("thing", {"v": 1})
    real_replace = os.replace

    def rival_first(src, dst):
        if str(dst) == str(entry.path):
            entry.path.mkdir(parents=True)
            (entry.path / "data.txt").write_text("theirs")
            (entry.path / "entry.json").write_text("{}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", rival_first)
    with entry.build() as tmp:
        (tmp / "data.txt").write_text("ours")
    assert (entry.path / "data.txt").read_text() == "theirs"  # kept, and no error after all the work
    assert [p.name for p in (tmp_path / "thing").iterdir()] == [entry.key]  # our temporary folder is gone


def test_a_rivals_entry_that_lands_after_the_check_is_not_deleted(tmp_path, monkeypatch):
    # the rival's rename lands just after this run asked exists() (False): its complete entry was rmtree'd as stale
    from kgface.cache import CacheEntry

    cache = Cache(tmp_path)
    entry = cache.entry("thing", {"v": 1})
    real_exists, asked = CacheEntry.exists, []

    def late_rival(self):
        asked.append(1)
        if len(asked) == 1:
            self.path.mkdir(parents=True)
            (self.path / "data.txt").write_text("theirs")
            (self.path / "entry.json").write_text("{}")
            return False
        return real_exists(self)

    monkeypatch.setattr(CacheEntry, "exists", late_rival)
    with entry.build() as tmp:
        (tmp / "data.txt").write_text("ours")
    assert (entry.path / "data.txt").read_text() == "theirs"
    # a stale folder without metadata (a crashed older build) is replaced whole, and nothing is left beside it
    monkeypatch.setattr(CacheEntry, "exists", real_exists)
    other = cache.entry("thing", {"v": 2})
    other.path.mkdir()
    (other.path / "half.bin").write_bytes(b"x")
    with other.build() as tmp:
        (tmp / "data.txt").write_text("new")
    assert sorted(p.name for p in other.path.iterdir()) == ["data.txt", "entry.json"]
    assert sorted(p.name for p in (tmp_path / "thing").iterdir()) == sorted([entry.key, other.key])


def test_run_records_entries_used(tmp_path):
    cache = Cache(tmp_path / "c")
    for kind, spec in (("a", {"i": 1}), ("a", {"i": 1}), ("b", {"i": 2})):
        entry = cache.entry(kind, spec)
        if not entry.exists():
            with entry.build() as tmp:
                (tmp / "x").write_text("built")
    cache.entry("c", {"i": 3})  # looked up, never built (e.g. an LLM answer that fell back): not used
    rows = json.loads(cache.record(tmp_path / "run").read_text())
    assert [r["kind"] for r in rows] == ["a", "b"]
    assert all((tmp_path / "c" / r["kind"] / r["key"] / "entry.json").is_file() for r in rows)
    later = Cache(tmp_path / "c")  # a later run: a hit is listed, a miss it did not build is not
    assert later.entry("b", {"i": 2}).exists() and not later.entry("c", {"i": 3}).exists()
    assert [r["kind"] for r in json.loads(later.record(tmp_path / "run2").read_text())] == ["b"]


def test_atomic_file_write_leaves_old_content_on_failure(tmp_path):
    target = write_json_atomic(tmp_path / "out.json", {"ok": 1})
    with pytest.raises(ValueError, match="^boom$"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; what a run writes for people (images, reports) must be readable like a plain
    write's."""
    import os

    from kgface.cache import write_text_atomic

    mask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_folder_replaces_whole_or_keeps_the_old_one(tmp_path):
    final = tmp_path / "enc"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError, match="^crash mid-save$"):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash mid-save")
    assert (final / "a.txt").read_text() == "one"  # the old contents, untouched
    with atomic_folder(final) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced whole: no leftover a.txt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temporary or old folder left
    link = tmp_path / "link"
    link.symlink_to(final)
    with atomic_folder(link) as tmp:
        (tmp / "c.txt").write_text("via link")
    assert link.is_symlink() and (final / "c.txt").read_text() == "via link"


def test_small_files_are_known_by_their_bytes_large_ones_by_path_and_time(tmp_path, monkeypatch):
    """A second checkout (or worktree) of the same curated files hits the cache; an edit misses it."""
    import os

    from kgface import cache

    a, b = tmp_path / "a" / "effects.csv", tmp_path / "b" / "effects.csv"
    for f in (a, b):
        f.parent.mkdir()
        f.write_text("term,effect\nHP:1,red\n")
    os.utime(b, ns=(1, 1))
    assert cache.file_fingerprint(a) == cache.file_fingerprint(b)
    b.write_text("term,effect\nHP:1,blue\n")
    assert cache.file_fingerprint(a) != cache.file_fingerprint(b)
    monkeypatch.setattr(cache, "HASH_LIMIT", 4)  # a "large" file: path, size and mtime, not read
    big = cache.file_fingerprint(a)
    assert big == {"path": str(a.resolve()), "size": a.stat().st_size, "mtime_ns": a.stat().st_mtime_ns}
    assert cache.file_fingerprint(a) == big and big != cache.file_fingerprint(b)
    # the same path rewritten with the same size (new weights of one architecture): its time tells them apart
    a.write_text("term,effect\nHP:1,tan\n")
    os.utime(a, ns=(5, 5))
    assert a.stat().st_size == big["size"] and cache.file_fingerprint(a) != big


@pytest.fixture(scope="module")
def cache_dir_seen_by_a_module_fixture():
    import os

    return os.environ.get("KGFACE_CACHE_DIR")


def test_module_fixtures_build_into_the_session_cache_not_the_users(cache_dir_seen_by_a_module_fixture,
                                                                     session_cache_dir):
    # module- and session-scoped fixtures (micro training runs) are set up before function-scoped ones: the cache
    # must already point away from ~/.cache/kgface then
    assert cache_dir_seen_by_a_module_fixture == str(session_cache_dir)


def test_jobs_and_code_find_the_same_cache_root(tmp_path, monkeypatch):
    # paths.cache_dir (null) and Cache() both follow KGFACE_CACHE_DIR, then XDG_CACHE_HOME (the job's config read
    # only the first, Cache() only the second: two roots, every entry built twice)
    from kgface.config import compose
    from kgface.runtime import make_cache

    monkeypatch.delenv("KGFACE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert make_cache(compose("train", [])).root == Cache().root == tmp_path / "xdg" / "kgface"
    monkeypatch.setenv("KGFACE_CACHE_DIR", str(tmp_path / "mine"))
    assert make_cache(compose("train", [])).root == Cache().root == tmp_path / "mine"
    assert make_cache(compose("train", [f"paths.cache_dir={tmp_path / 'set'}"])).root == tmp_path / "set"


def test_a_killed_builds_leftover_goes_at_the_next_build_of_its_kind(tmp_path):
    import os
    import time

    from kgface.cache import STALE_BUILD_S

    cache = Cache(tmp_path)
    kind = tmp_path / "thing"
    stale, fresh = kind / ".abc.x1.tmp", kind / ".def.x2.tmp"  # a run killed a day ago; one building now
    for folder in (stale, fresh):
        (folder / "images").mkdir(parents=True)
    old = time.time() - STALE_BUILD_S - 60
    os.utime(stale, (old, old))
    with cache.entry("thing", {"v": 1}).build() as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and fresh.is_dir()


def test_a_staged_set_replaces_the_old_one_with_its_index_last(tmp_path, monkeypatch):
    import os

    from kgface.cache import move_in, staging_folder

    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old.png").write_text("old")
    (out / "manifest.csv").write_text("old")
    (out / "notes.txt").write_text("kept")  # not one of the set's names
    moved, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    with staging_folder(out, ".stage-") as staging:
        (staging / "images").mkdir()
        (staging / "images" / "new.png").write_text("new")
        for name in ("manifest.csv", "a.json", "z.csv"):
            (staging / name).write_text("new")
        move_in(staging, out, ("manifest.csv", "images"), last="manifest.csv")
    assert moved == ["a.json", "images", "z.csv", "manifest.csv"]  # by name, the index after everything it names
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "images", "manifest.csv", "notes.txt", "z.csv"]
    assert [p.name for p in (out / "images").iterdir()] == ["new.png"]  # the old image went with the old set
