"""Adapters from public face datasets to the kgface manifest (docs/data.md), and the builder that preprocesses them.

Each adapter returns manifest rows with paths in the source dataset; `build_real_dataset` decodes, face-crops and
writes them as OUT/images/*.png with OUT/manifest.csv.
"""
from .acne04 import ACNE_ID, acne04_manifest
from .build import ADAPTERS, BuildResult, build_real_dataset, manifest_from_config
from .celeba import celeba_manifest
from .common import UNKNOWN_STAGE, assign_splits
from .folders import class_folder_manifest, folder_manifest, user_manifest

__all__ = ["ACNE_ID", "ADAPTERS", "BuildResult", "UNKNOWN_STAGE", "acne04_manifest", "assign_splits",
           "build_real_dataset", "celeba_manifest", "class_folder_manifest", "folder_manifest", "manifest_from_config",
           "user_manifest"]
