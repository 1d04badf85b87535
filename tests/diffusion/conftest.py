"""Fixtures of the diffusion tests: tiny random UNets and tiny SD 1.5 / SDXL folders, built once per session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers/transformers import huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory):
    from .tiny_folders import build_sd15_folder

    return build_sd15_folder(tmp_path_factory.mktemp("pretrained") / "tiny-sd15")


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory):
    from .tiny_folders import build_sdxl_folder

    return build_sdxl_folder(tmp_path_factory.mktemp("pretrained") / "tiny-sdxl")
