"""Beside setuptools' own build: the web app (web/) built into the package as
collab/static when Node.js and npm are there, so ``pip install .`` serves it at ``/``.

Without Node.js or npm the package builds all the same, without the app: the server
runs, and ``/`` says how to build the app. ``COLLAB_WEB_BUILD=skip`` skips it on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"


def say(text: str) -> None:
    print(f"collab: {text}", file=sys.stderr, flush=True)


def build_webapp(target: Path) -> None:
    """``npm ci`` in web/, then web/build.mjs into ``target``."""
    if os.environ.get("COLLAB_WEB_BUILD", "").lower() == "skip":
        say("COLLAB_WEB_BUILD=skip: building without the web app")
        return
    if not (WEB / "package.json").is_file():
        say("no web/ sources here: building without the web app")
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        say("Node.js and npm were not found: building without the web app "
            "(the server runs; / says how to build the app)")
        return
    steps = [
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        [node, str(WEB / "build.mjs"), "--outdir", str(target)],
    ]
    for step in steps:
        try:
            subprocess.run(step, cwd=WEB, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SetupError(
                f"building the web app failed ({' '.join(step[:2])}: {exc}); "
                "fix that, or set COLLAB_WEB_BUILD=skip to install without the app"
            ) from None


class BuildWithWebApp(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install serves the app from the sources
            build_webapp(ROOT / "collab" / "static")
        else:
            build_webapp(Path(self.build_lib).resolve() / "collab" / "static")


setup(cmdclass={"build_py": BuildWithWebApp})
