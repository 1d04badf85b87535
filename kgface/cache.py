"""One cache root for everything derived and reusable (parsed KGs, text embeddings, datasets, trained VAEs and
evaluators, LLM answers).

Each entry is a folder `ROOT/<kind>/<key>/` where the key hashes what produced it. An entry is built in a temporary
sibling folder and renamed into place, so a crash never leaves a half-written entry that later runs would trust.
A run records the entries it used in `RUN_DIR/cache_entries.json`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

META_FILE = "entry.json"
# a build's temporary folder untouched this long is a killed run's leftover (it can hold a whole data set's images)
STALE_BUILD_S = 24 * 3600


def default_cache_dir() -> Path:
    """$KGFACE_CACHE_DIR, else $XDG_CACHE_HOME/kgface, else ~/.cache/kgface: the jobs' `paths.cache_dir` (null) and
    `Cache()` called from code find the same root."""
    if os.environ.get("KGFACE_CACHE_DIR"):
        return Path(os.environ["KGFACE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kgface"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able description (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


HASH_LIMIT = 64 * 2**20  # files up to this size are identified by their bytes, larger ones by path and mtime
# (kgface/kg/__init__.py keeps the same rule for the knowledge layer, which may not import this module)


def file_fingerprint(path: str | os.PathLike) -> dict:
    """What identifies a source file: a small file (curated CSVs, prompt templates) by its name and SHA-256, so a
    second checkout or a worktree of the same files reuses the cache; a large one (model weights, a PrimeKG dump)
    cheaply by its resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    if st.st_size > HASH_LIMIT:
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"name": p.name, "size": st.st_size, "sha256": file_sha256(p)}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks (weights files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    # reading the umask means setting it (process-wide): set the strictest, so a file another thread creates in
    # that instant is private rather than world-writable, and put it straight back
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it onto `final`, on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a plain write would give 0644 (umask 022)
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it takes `final`'s place (an existing folder is
    moved aside first, since a folder cannot be renamed onto a non-empty one, and removed after), so readers see the
    old contents or the new, never a mix; on error the temporary folder goes and the old one stays."""
    final = Path(final).resolve()  # a symlinked folder: write where it points, keep the link
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the mode a plain mkdir would
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not final.exists() and (old / final.name).exists():
                os.replace(old / final.name, final)  # put the previous contents back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(out_dir: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A job's outputs written whole before any lands: a temporary folder inside `out_dir` (one file system, so
    `move_in` renames its entries), removed on the way out whatever happened."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_in(staging: Path, out_dir: str | os.PathLike, replaced: Iterable[str], last: str | None = None) -> None:
    """The previous set's files go (`replaced`, in order: its mark first, so no old index outlives it), then every
    staged entry is renamed in, by name, `last` (the new index) after all the others."""
    out_dir = Path(out_dir)
    for name in replaced:
        remove_path(out_dir / name)
    for entry in sorted(Path(staging).iterdir(), key=lambda e: (e.name == last, e.name)):
        os.replace(entry, out_dir / entry.name)


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure written under a temporary name and renamed (the format from `path`'s extension)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link or a folder tree (a link to a folder: the link only); absent is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class CacheEntry:
    kind: str
    key: str
    path: Path
    spec: dict

    def exists(self) -> bool:
        return (self.path / META_FILE).is_file()

    @property
    def partial(self) -> Path:
        """Where a long build keeps its resumable training state, beside the entry it will become."""
        return self.path.with_name(f".{self.key}.partial")

    @contextlib.contextmanager
    def build(self) -> Iterator[Path]:
        """Yield an empty temporary folder; fill it; on success it becomes this entry (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for old in self.path.parent.glob(".*.tmp"):  # never removed by a run that was killed (OOM, SIGKILL)
            try:
                if time.time() - old.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.", suffix=".tmp", dir=self.path.parent))
        try:
            yield tmp
            (tmp / META_FILE).write_text(json.dumps({"kind": self.kind, "key": self.key, "spec": self.spec},
                                                    indent=2, default=str), encoding="utf-8")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: another user of a shared cache could not read it
            if self.exists():  # another process finished first; keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if self.path.exists() and not self.exists():  # a stale folder without metadata: not a valid entry
                # moved aside in one step, then removed: a reader never meets it half-deleted (and another
                # process's entry renamed in meanwhile is at worst replaced by this one's, the same artefact)
                stale = self.path.with_name(f".{self.key}.{os.getpid()}.stale.tmp")
                try:
                    os.replace(self.path, stale)
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, self.path)
            except OSError:  # another process renamed its entry in between: keep theirs (the same key, the same
                if not self.exists():  # artefact), rather than fail after all this one's work
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@dataclass
class Cache:
    """The cache root. `entry(kind, spec)` names an entry by what produced it; `used` lists what this run touched."""

    root: Path = field(default_factory=default_cache_dir)
    used: list = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root).expanduser()

    def entry(self, kind: str, spec: dict, record: bool = True) -> CacheEntry:
        """The entry for `spec`; record=False looks it up without listing it among the entries this run used."""
        key = stable_hash(spec)
        entry = CacheEntry(kind=kind, key=key, path=self.root / kind / key, spec=spec)
        if record:
            self.used.append({"kind": kind, "key": key, "path": str(entry.path)})
        return entry

    def record(self, run_dir: str | os.PathLike) -> Path:
        """Write RUN_DIR/cache_entries.json listing the entries this run used (deduplicated, in order): those that
        exist, read or built; an entry only looked up (e.g. an LLM answer that fell back) was never written."""
        seen, rows = set(), []
        for row in self.used:
            if row["path"] not in seen and (Path(row["path"]) / META_FILE).is_file():
                seen.add(row["path"])
                rows.append(row)
        return write_json_atomic(Path(run_dir) / "cache_entries.json", rows)
