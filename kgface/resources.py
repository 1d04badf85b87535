"""Where kgface's shipped data lives: `conf/`, `kg_data/` and `prompts/`.

They sit at the repository top level by design. A source checkout (or an editable install) reads them there; a
built wheel carries copies under `kgface/_assets/` (see setup.py). This module is the one resolver for both.
"""
from __future__ import annotations

import os
from pathlib import Path

ASSET_DIRS = ("conf", "kg_data", "prompts")
_PACKAGE_DIR = Path(__file__).resolve().parent


def asset_root() -> Path:
    """Folder holding conf/, kg_data/ and prompts/ (env KGFACE_ASSETS overrides, for tests and packagers)."""
    override = os.environ.get("KGFACE_ASSETS")
    if override:  # named on purpose: a folder without all three would otherwise fall back to the bundled assets
        # absolute, ~ expanded: Hydra reads a relative config path against the package, not the working directory
        override = str(Path(override).expanduser().resolve())
        missing = [name for name in ASSET_DIRS if not (Path(override) / name).is_dir()]
        if missing:
            folders = ", ".join(f"{d}/" for d in ASSET_DIRS)
            raise FileNotFoundError(f"KGFACE_ASSETS={override} has no {', '.join(f'{m}/' for m in missing)}; it "
                                    f"must hold {folders} (or unset it for kgface's own)")
        return Path(override)
    candidates = [_PACKAGE_DIR / "_assets", _PACKAGE_DIR.parent]
    for root in candidates:
        if all((root / name).is_dir() for name in ASSET_DIRS):
            return root
    raise FileNotFoundError(
        f"kgface assets ({', '.join(ASSET_DIRS)}) not found in {', '.join(map(str, candidates))}; "
        "reinstall kgface or set KGFACE_ASSETS to the folder that holds them"
    )


def conf_dir() -> Path:
    return asset_root() / "conf"


def kg_data_dir() -> Path:
    return asset_root() / "kg_data"


def prompts_dir() -> Path:
    return asset_root() / "prompts"
