"""Copies the top-level conf/, kg_data/ and prompts/ into the wheel as kgface/_assets/ (kgface.resources finds them)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ASSETS = ("conf", "kg_data", "prompts")


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        here = Path(__file__).resolve().parent
        for name in ASSETS:
            target = Path(self.build_lib) / "kgface" / "_assets" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithAssets})
