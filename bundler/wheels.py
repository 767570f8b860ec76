"""The importer as wheels, so that the offline host can ``pip install --no-index`` it.

* overleaf-airgap itself: ``pip wheel --no-deps`` of the source tree beside ``bundler/``
  (a source checkout, editable install or not). An install without its source tree
  cannot rebuild itself: that is an error that says so.
* its runtime dependencies (``importlib.metadata.requires``, extras skipped), with
  their own dependencies: ``pip download --only-binary=:all:`` for the offline host's
  Python version and platform. ``manylinux_2_28_x86_64`` means glibc 2.28 or newer,
  so every older manylinux tag (down to manylinux1) is accepted too.

Downloads land in the build's work folder and are reused by the next run.

    wheels = collect_wheels(work / "wheels", python="3.11", platforms=["manylinux_2_28_x86_64"])
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from manifests.errors import AirgapError

from .registry import UsageError

DIST = "overleaf-airgap"
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_([a-z0-9_]+)$")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class WheelError(AirgapError):
    """The importer's wheels cannot be built or downloaded."""

    exit_code = 21


def project_root() -> Path:
    """The source tree of overleaf-airgap (the folder holding pyproject.toml beside bundler/)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text("utf-8")
    except OSError:
        text = ""
    if not re.search(r'(?m)^name\s*=\s*"overleaf-airgap"', text) or not (root / "importer").is_dir():
        raise UsageError("the importer's wheels are built from the overleaf-airgap source tree, which is not "
                         f"available here (this copy is installed at {root})",
                         "Run the bundler from a source checkout (pip install -e .), or pass --no-importer "
                         "and carry the importer to the offline host another way.")
    return root


def runtime_requirements() -> list[str]:
    """The distribution's requirements without extras (e.g. ``docker>=7.0``)."""
    try:
        reqs = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError as exc:
        raise UsageError(f"{DIST} is not installed, so its dependencies are unknown",
                         "Install it (pip install -e .) or pass --no-importer.") from exc
    return [r for r in reqs if "extra ==" not in r.replace("extra==", "extra ==")]


def expand_platforms(platforms: Sequence[str]) -> list[str]:
    """``manylinux_2_28_x86_64`` -> itself and every older manylinux tag of that architecture."""
    out: list[str] = []
    for p in platforms:
        m = _MANYLINUX.match(p)
        if not m:
            legacy = p.split("_", 1)
            if legacy[0] in _LEGACY and len(legacy) == 2:
                major, minor = _LEGACY[legacy[0]]
                m = _MANYLINUX.match(f"manylinux_{major}_{minor}_{legacy[1]}")
        if not m:
            out.append(p)
            continue
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        for mi in range(minor, 4, -1):
            out.append(f"manylinux_{major}_{mi}_{arch}")
        for name, (ma, mi) in _LEGACY.items():
            if (ma, mi) <= (major, minor):
                out.append(f"{name}_{arch}")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _pip(args: list[str], what: str, log: Callable[[str], None]) -> str:
    cmd = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise WheelError(f"{what} failed (pip exit code {proc.returncode}):\n{tail}",
                         "The online side needs the Python package index for the importer's wheels; "
                         "check the network or pip's configuration, or pass --no-importer.")
    log(f"{what}: done")
    return proc.stdout


def collect_wheels(cache: Path, *, python: str, platforms: Sequence[str],
                   log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Build overleaf-airgap's wheel and download its dependencies into ``cache``; return the wheels."""
    root = project_root()
    if not re.match(r"^3\.\d+$", python):
        raise UsageError(f"--offline-python {python!r} is not a Python version like 3.11")
    own = cache / "project"
    deps = cache / "deps"
    own.mkdir(parents=True, exist_ok=True)
    deps.mkdir(parents=True, exist_ok=True)
    for old in own.glob("*.whl"):
        old.unlink()
    _pip(["wheel", "--no-deps", "--quiet", "-w", str(own), str(root)], "building the overleaf-airgap wheel", log)
    reqs = runtime_requirements()
    if reqs:
        plat_args = [a for p in expand_platforms(platforms) for a in ("--platform", p)]
        out = _pip(["download", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                    *plat_args, "-d", str(deps), *reqs], "downloading the importer's dependencies", log)
        # only what pip resolved this time, not older downloads lying in the cache
        names = set(re.findall(r"(?m)^(?:Saved|File was already downloaded)\s+(\S+\.whl)\s*$", out))
        picked = sorted(w for w in deps.glob("*.whl") if any(Path(n).name == w.name for n in names))
        dep_wheels = picked or sorted(deps.glob("*.whl"))
    else:
        dep_wheels = []
    wheels = sorted(own.glob("*.whl")) + dep_wheels
    if not any(w.name.startswith("overleaf_airgap-") for w in wheels):
        raise WheelError("pip built no overleaf-airgap wheel")
    return wheels


def check_available() -> None:
    """Fail early (before any pulling) when the wheels could not be made."""
    project_root()
    runtime_requirements()

