"""README-OFFLINE's install commands, run as written, against a planted higher-version wheel.

The online side: ``pip install .`` (NOT editable) of a copy of the source tree into a
venv, then, in that venv, :func:`bundler.wheels.own_wheel` must rebuild the importer's
wheel from the installed distribution (no source tree is reachable from there).

The wheels of the dependencies are rebuilt from this machine's installed distributions
(:func:`bundler.wheels.wheel_from_installed`), so nothing is downloaded. Only the
online-side ``pip install .`` needs a build backend (setuptools>=68, wheel) from the
configured package index (on this machine a local mirror; pip caches it).

The offline side runs README-OFFLINE's commands with bash, in the bundle folder, with
``HOME`` in the test folder and pip's configuration and ``PIP_*`` variables removed (an
offline host has none). The only change to the commands as written: ``TRUSTED-KEY.pub``
becomes the path of the test's trusted key.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.offline_readme import commands, offline_readme
from bundler.wheels import parse_wheel_name, wheel_from_installed, write_requirements
from manifests.bundle import MANIFEST_NAME, README_NAME, SIGNATURE_NAME, canonical_json
from manifests.signing import public_pem

from packaging.markers import default_environment
from packaging.requirements import Requirement

from importlib import metadata

ROOT = Path(__file__).resolve().parent.parent
PLANT = "overleaf_airgap-99.0-py3-none-any.whl"


def _run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600, **kw)


def _dependency_closure(name: str) -> list[str]:
    """``name``'s runtime dependencies, transitively, as installed here (markers evaluated, extras skipped)."""
    env = default_environment()
    seen: dict[str, str] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen[key] = req.name
                todo.append(req.name)
    return sorted(seen.values())


def _plant(folder: Path, marker: Path) -> Path:
    """A higher-version overleaf-airgap wheel whose code writes ``marker`` at every Python start."""
    info = "overleaf_airgap-99.0.dist-info"
    payload = f"import os; open({str(marker)!r}, 'w').write('planted code ran')\n"
    files = {
        "zzz_overleaf_airgap.pth": payload,
        "importer/__init__.py": payload.replace("import os; ", ""),
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: overleaf-airgap\nVersion: 99.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": "[console_scripts]\noverleaf-import = importer:main\n",
    }
    record = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    path = folder / PLANT
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(n, text)
    return path


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> dict:
    """``pip install .`` (not editable) into a venv; the importer's wheel made there; dependency wheels
    (taken as installed: a host may have patched e.g. certifi's CA list since install)."""
    tmp = tmp_path_factory.mktemp("online")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("bundler", "importer", "manifests"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    assert r.returncode == 0, r.stderr
    r = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(src)], cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp / "own"
    probe = ("import sys, bundler, bundler.wheels as w; from pathlib import Path; "
             "assert w._source_tree() is None, w._source_tree(); w.check_available(); "
             f"print(bundler.__file__); print(w.own_wheel(Path({str(out)!r})))")
    r = _run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    where, own = r.stdout.split()
    assert where.startswith(str(venv)), where  # the installed copy ran, not the source tree
    deps = tmp / "deps"
    dep_wheels = [wheel_from_installed(n, deps, check_record=False) for n in _dependency_closure("overleaf-airgap")]
    return {"own": Path(own), "deps": dep_wheels, "src": src}


def test_pip_install_dot_then_build_carries_the_importer(online):
    own = online["own"]
    assert own.name == "overleaf_airgap-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(own) as zf:
        names = set(zf.namelist())
        for rel in ("importer/images/verify.py", "bundler/wheels.py", "manifests/catalog/releases.yaml"):
            assert zf.read(rel) == (online["src"] / rel).read_bytes(), rel
        assert "overleaf_airgap-0.1.0.dist-info/entry_points.txt" in names
        assert not any(n.endswith(".pyc") or n.endswith("INSTALLER") or n.endswith("direct_url.json") for n in names)


@pytest.fixture
def bundle(online, tmp_path) -> dict:
    """A bundle folder with the wheels, wheels/requirements.txt, README-OFFLINE.txt and a signed manifest."""
    folder = tmp_path / "bundle"
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    copies = []
    for w in [online["own"], *online["deps"]]:
        shutil.copyfile(w, wheels / w.name)
        copies.append(wheels / w.name)
    req = write_requirements(wheels, copies)
    readme = offline_readme(edition="ce", from_version="5.5.3", to_version="5.5.8", bundle_id="0" * 32,
                            created="2026-07-01T00:00:00Z", expires="2026-08-01T00:00:00Z", sequence=1,
                            key_id="ed25519:test", platform="linux/amd64", plan={"steps": []}, images=[],
                            parts=[("payload.000", 1)], payload_size=1, wheels=True, toolkit=None, delta=None)
    (folder / README_NAME).write_text(readme)
    import hashlib
    files = [{"name": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in [*copies, req, folder / README_NAME]]
    key = Ed25519PrivateKey.generate()
    data = canonical_json({"format": "overleaf-airgap-bundle", "files": files})
    (folder / MANIFEST_NAME).write_bytes(data)
    (folder / SIGNATURE_NAME).write_bytes(key.sign(data))
    trusted = tmp_path / "operator.pub"
    trusted.write_bytes(public_pem(key.public_key()))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(HOME=str(home), PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmds = [c.replace("TRUSTED-KEY.pub", str(trusted)) for c in commands(readme)]
    return {"folder": folder, "cmds": cmds, "env": env, "home": home, "key": key, "tmp": tmp_path}


def _sh(b: dict, cmd: str) -> subprocess.CompletedProcess:
    return _run(["bash", "-c", cmd], cwd=b["folder"], env=b["env"])


def test_readme_offline_commands_refuse_a_planted_wheel_and_install_only_the_pinned_ones(bundle):
    b = bundle
    verify_sig, check_files, make_venv, install, export = b["cmds"][:5]
    assert verify_sig.startswith("openssl pkeyutl -verify") and "-rawin" in verify_sig
    assert check_files.startswith("python3 -c ") and make_venv.startswith("python3 -m venv")
    assert "--no-index --require-hashes" in install and "-r wheels/requirements.txt" in install
    assert export.startswith("export PATH=")

    # (a) the signature, with stock openssl; a changed manifest fails
    r = _sh(b, verify_sig)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout + r.stderr, r.stdout + r.stderr
    manifest = b["folder"] / MANIFEST_NAME
    good = manifest.read_bytes()
    manifest.write_bytes(good.replace(b'"files"', b'"filez"'))
    assert _sh(b, verify_sig).returncode != 0
    manifest.write_bytes(good)

    # (b) every listed file matches; nothing unlisted in wheels/
    r = _sh(b, check_files)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    marker = b["tmp"] / "PLANTED-CODE-RAN"
    _plant(b["folder"] / "wheels", marker)
    r = _sh(b, check_files)
    assert r.returncode == 1 and f"wheels/{PLANT} (not in the manifest)" in r.stderr, r.stdout + r.stderr
    req = b["folder"] / "wheels" / "requirements.txt"
    original = req.read_bytes()
    req.write_bytes(original + b"evil==1.0\n")
    r = _sh(b, check_files)
    assert r.returncode == 1 and "wheels/requirements.txt" in r.stderr
    req.write_bytes(original)

    # (c) an admin who skipped (b): pip still installs only the pinned wheels, the planted one never
    for cmd in (make_venv, install):
        r = _sh(b, cmd)
        assert r.returncode == 0, cmd + "\n" + r.stdout + r.stderr
    py = b["home"] / "overleaf-airgap-venv" / "bin" / "python3"
    r = _run([str(py), "-c", "import importlib.metadata as m; print(m.version('overleaf-airgap'))"], env=b["env"])
    assert r.stdout.strip() == "0.1.0", r.stdout + r.stderr
    r = _sh(b, f"{export} && overleaf-import --help && overleaf-bundle --help")
    assert r.returncode == 0 and "verify" in r.stdout, r.stdout + r.stderr
    assert not marker.exists()


def test_the_planted_wheel_is_real_the_old_command_would_have_run_it(bundle):
    """Control: the old README's `pip install --no-index --find-links wheels overleaf-airgap` picks it."""
    b = bundle
    marker = b["tmp"] / "PLANTED-CODE-RAN"
    _plant(b["folder"] / "wheels", marker)
    venv = b["tmp"] / "old-venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], env=b["env"]).returncode == 0
    r = _run([str(venv / "bin" / "python3"), "-m", "pip", "install", "--no-index", "--find-links", "wheels",
              "overleaf-airgap"], cwd=b["folder"], env=b["env"])
    assert r.returncode == 0 and "99.0" in r.stdout, r.stdout + r.stderr
    _run([str(venv / "bin" / "python3"), "-c", "pass"], env=b["env"])
    assert marker.read_text() == "planted code ran"


def test_requirements_pin_every_wheel_by_hash(online, tmp_path):
    wheels = [online["own"], *online["deps"]]
    text = write_requirements(tmp_path, wheels).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == len({parse_wheel_name(w.name)[0] for w in wheels})
    assert all("==" in line and " --hash=sha256:" in line for line in lines)
    assert "overleaf-airgap==0.1.0 --hash=sha256:" in text
