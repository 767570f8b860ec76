"""The importer as wheels, so that the offline host can ``pip install --no-index --require-hashes`` it.

* overleaf-airgap itself (:func:`own_wheel`): when this code runs from a source tree
  (a checkout, or an editable install), ``pip wheel --no-deps`` of that tree; when it
  runs from a regular ``pip install .``, the wheel is rebuilt from the installed
  distribution itself (:func:`wheel_from_installed`: every file its ``RECORD`` lists,
  checked against the hash recorded at install time, plus its metadata). No source
  tree is needed.
* its runtime dependencies (``importlib.metadata.requires``, extras skipped), with
  their own dependencies: ``pip download --only-binary=:all:`` for the offline host's
  Python version and platform. ``manylinux_2_28_x86_64`` means glibc 2.28 or newer,
  so every older manylinux tag (down to manylinux1) is accepted too.
* ``wheels/requirements.txt`` (:func:`write_requirements`): every wheel pinned as
  ``name==version --hash=sha256:...``, so that ``pip install --no-index
  --require-hashes -r wheels/requirements.txt`` installs exactly these files and
  nothing else that lies in the folder (a planted ``overleaf_airgap-99.0-...whl`` is
  never even considered). The bundle lists it in the signed manifest like the wheels.

Downloads land in the build's work folder and are reused by the next run.

    wheels = collect_wheels(work / "wheels", python="3.11", platforms=["manylinux_2_28_x86_64"])
    for w in wheels: shutil.copyfile(w, stage / "wheels" / w.name)
    write_requirements(stage / "wheels", [stage / "wheels" / w.name for w in wheels])
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from manifests.errors import UsageError, WheelError


DIST = "overleaf-airgap"
REQUIREMENTS = "requirements.txt"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SKIP_META = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_([a-z0-9_]+)\Z")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


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
    """The distribution's requirements without those of its extras (e.g. ``docker<8,>=7.0``).

    Parsed with :mod:`packaging` (PEP 508): a requirement whose marker holds only for an extra
    (``; extra == "test"``) is left out; other markers (Python version, platform) are kept for pip
    to evaluate against the offline host's Python (``pip download --python-version``).
    """
    try:
        reqs = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError as exc:
        raise UsageError(f"{DIST} is not installed, so its dependencies are unknown",
                         "Install it (pip install -e .) or pass --no-importer.") from exc
    out = []
    for text in reqs:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise WheelError(f"the installed {DIST} declares an unreadable requirement {text!r}: {exc}",
                             "Reinstall it (pip install -e .).") from exc
        if req.marker is not None and "extra" in str(req.marker):
            continue
        out.append(str(req))
    return out


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


def _source_tree() -> Path | None:
    try:
        return project_root()
    except UsageError:
        return None


def own_wheel(out: Path, log: Callable[[str], None] = lambda m: None) -> Path:
    """overleaf-airgap's own wheel in ``out``: from the source tree this code runs from, or else
    rebuilt from the installed distribution (a regular ``pip install .``)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    root = _source_tree()
    if root is not None:
        _pip(["wheel", "--no-deps", "--quiet", "-w", str(out), str(root)], "building the overleaf-airgap wheel", log)
        built = sorted(out.glob("overleaf_airgap-*.whl"))
        if not built:
            raise WheelError("pip built no overleaf-airgap wheel")
        return built[-1]
    wheel = wheel_from_installed(DIST, out)
    log(f"rebuilt {wheel.name} from the installed distribution")
    return wheel


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel_tag(wheel_meta: str) -> str:
    """The compressed tag set of a dist-info ``WHEEL`` file: ``py3-none-any``, ``cp37-abi3-manylinux_2_28_x86_64``."""
    tags = [t.strip() for k, _, t in (line.partition(":") for line in wheel_meta.splitlines())
            if k.strip().lower() == "tag" and t.strip()]
    if not tags:
        raise WheelError("the installed distribution's WHEEL file names no tag")
    parts = [t.split("-") for t in tags]
    if any(len(p) != 3 for p in parts):
        raise WheelError(f"bad wheel tag in the installed distribution: {tags}")
    return "-".join(".".join(sorted({p[i] for p in parts})) for i in range(3))


def wheel_from_installed(name: str, out: Path, *, check_record: bool = True) -> Path:
    """Rebuild the wheel of the installed (not editable) distribution ``name`` into ``out``.

    Takes every file the distribution's ``RECORD`` lists inside its install folder
    (compiled ``.pyc`` files and scripts outside it are left out: pip makes them again
    from ``entry_points.txt``), checks each against the hash ``RECORD`` holds (a file
    changed since install is an error), and writes a deterministic wheel (sorted
    entries, fixed dates, ``.dist-info`` last) with a fresh ``RECORD``.
    ``check_record=False`` takes files as they are now (tests: a host may patch certifi's CA list).
    """
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as exc:
        raise WheelError(f"{name} is not installed, so its wheel cannot be rebuilt",
                         "Install it (pip install .) or pass --no-importer.") from exc
    files = dist.files
    if not files:
        raise WheelError(f"the installed {name} has no RECORD of its files, so its wheel cannot be rebuilt",
                         "Install it with pip (pip install .), or run the bundler from a source checkout.")
    info_dirs = {f.parts[0] for f in files if len(f.parts) == 2 and f.parts[0].endswith(".dist-info")
                 and f.parts[1] == "METADATA"}
    if len(info_dirs) != 1:
        raise WheelError(f"the installed {name}'s RECORD does not name one .dist-info folder")
    info = info_dirs.pop()
    entries: list[tuple[str, bytes, int]] = []
    for f in files:
        rel = f.as_posix()
        if f.parts[0] == ".." or "__pycache__" in f.parts or rel.endswith(".pyc"):
            continue
        if f.parts[0] == info and f.parts[-1] in _SKIP_META:
            continue
        if rel.startswith("__editable__") or (rel.endswith(".pth") and len(f.parts) == 1):
            raise WheelError(f"the installed {name} is an editable install: its code is in a source tree",
                             "Run the bundler from that source tree, or install it with `pip install .`.")
        path = Path(str(dist.locate_file(f)))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise WheelError(f"cannot read {path} of the installed {name}: {exc.strerror}") from exc
        if check_record and f.hash is not None and (f.hash.mode != "sha256" or _record_hash(data) != f"sha256={f.hash.value}"):
            raise WheelError(f"{path} of the installed {name} changed since it was installed",
                             f"Reinstall {name} (pip install --force-reinstall .) before building.")
        mode = os.stat(path).st_mode & 0o777
        entries.append((rel, data, 0o755 if mode & 0o111 else 0o644))
    names = {e[0] for e in entries}
    for need in (f"{info}/METADATA", f"{info}/WHEEL"):
        if need not in names:
            raise WheelError(f"the installed {name} lacks {need}")
    wheel_meta = next(d for n, d, _ in entries if n == f"{info}/WHEEL").decode("utf-8", "replace")
    stem = info[: -len(".dist-info")]
    wheel_name = f"{stem}-{_wheel_tag(wheel_meta)}.whl"
    try:
        parse_wheel_filename(wheel_name)
    except InvalidWheelFilename as exc:
        raise WheelError(f"cannot make a wheel name for the installed {name} ({wheel_name})") from exc
    entries.sort(key=lambda e: (e[0].startswith(info + "/"), e[0]))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for rel, data, _ in entries:
        writer.writerow([rel, _record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    out.mkdir(parents=True, exist_ok=True)
    target = out / wheel_name
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data, mode in [*entries, (f"{info}/RECORD", record.getvalue().encode(), 0o644)]:
            zi = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
            zi.external_attr = (0o100000 | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    tmp.replace(target)
    return target


def parse_wheel_name(filename: str) -> tuple[str, str]:
    """(normalised project name, version) of a wheel file name, e.g. ('pyyaml', '6.0.3') (PEP 427, by packaging)."""
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise WheelError(f"{filename} is not a wheel file name (name-version-python-abi-platform.whl)") from exc
    return str(name), str(version)


def requirements_text(wheels: Sequence[Path]) -> str:
    """``name==version --hash=sha256:...`` for every wheel, one project per line (sorted).

    Two wheels of one project (other platform tags) share a line with two hashes; two
    different versions of one project are an error: pip could install only one.
    """
    by_name: dict[str, tuple[str, list[str]]] = {}
    for w in sorted(wheels, key=lambda p: p.name):
        name, version = parse_wheel_name(w.name)
        digest = hashlib.sha256(Path(w).read_bytes()).hexdigest()
        if name in by_name and by_name[name][0] != version:
            raise WheelError(f"two versions of {name} among the wheels ({by_name[name][0]} and {version})",
                             "Remove the stale one from the wheel cache and build again.")
        by_name.setdefault(name, (version, []))[1].append(digest)
    lines = ["# The importer and its dependencies, pinned by sha256 (written by overleaf-bundle build).",
             "# Install with: python3 -m pip install --no-index --require-hashes --find-links wheels "
             "-r wheels/requirements.txt"]
    for name, (version, digests) in sorted(by_name.items()):
        lines.append(f"{name}=={version} " + " ".join(f"--hash=sha256:{d}" for d in sorted(set(digests))))
    return "\n".join(lines) + "\n"


def write_requirements(folder: Path, wheels: Sequence[Path]) -> Path:
    """Write ``folder/requirements.txt`` pinning ``wheels`` (see :func:`requirements_text`); return its path."""
    folder = Path(folder)
    path = folder / REQUIREMENTS
    path.write_text(requirements_text(wheels), "utf-8")
    return path


def collect_wheels(cache: Path, *, python: str, platforms: Sequence[str],
                   log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Build overleaf-airgap's wheel and download its dependencies into ``cache``; return the wheels."""
    if not re.match(r"^3\.\d+\Z", python):
        raise UsageError(f"--offline-python {python!r} is not a Python version like 3.11")
    own = cache / "project"
    deps = cache / "deps"
    deps.mkdir(parents=True, exist_ok=True)
    own_whl = own_wheel(own, log)
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
    return [own_whl] + dep_wheels


def check_available() -> None:
    """Fail early (before any pulling) when the wheels could not be made."""
    if _source_tree() is None:
        try:
            dist = metadata.distribution(DIST)
        except metadata.PackageNotFoundError as exc:
            raise UsageError(f"{DIST} is neither a source tree here nor installed",
                             "Install it (pip install .) or pass --no-importer.") from exc
        if not dist.files:
            raise UsageError(f"the installed {DIST} has no RECORD of its files, so its wheel cannot be rebuilt",
                             "Install it with pip (pip install .), or pass --no-importer.")
    runtime_requirements()
