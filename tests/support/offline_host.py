"""The offline host of the engine tests: an engine, a trust folder and a state file; runs the real importer.

    host = OfflineHost(offline_engine, tmp_path, pub_path)
    proc = host.run("--json", "load", str(bundle))         # `overleaf-import` in a subprocess
    host.tags()["mongo:8.0"], host.ids(), host.accepted()
    fails(host.run("verify", str(bundle)), 14, "payload.001")
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.engine import PrivateEngine

REPO = Path(__file__).resolve().parents[2]


class OfflineHost:
    """The offline host: its engine, trust folder (trusting ``pub_path``) and state file."""

    def __init__(self, engine: PrivateEngine, root: Path, pub_path: Path | str) -> None:
        self.engine, self.root = engine, root
        self.store = engine.store
        self.trust = root / "trusted.d"
        self.trust.mkdir()
        shutil.copy(pub_path, self.trust / "builder.pub")
        self.state = root / "state" / "state.json"
        self.env = {**os.environ, **engine.env(), "OVERLEAF_AIRGAP_STATE": str(self.state),
                    "OVERLEAF_AIRGAP_TRUST_DIR": str(self.trust)}

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "importer.cli", *args], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def tags(self) -> dict[str, str]:
        out = {}
        for img in self.engine.client().api.images():
            for tag in img.get("RepoTags") or []:
                if tag != "<none>:<none>":
                    out[tag] = img["Id"]
        return out

    def ids(self) -> set[str]:
        return {img["Id"] for img in self.engine.client().api.images(all=True)}

    def accepted(self) -> dict:
        return json.loads(self.state.read_text())["accepted"] if self.state.exists() else {}

    def pinned(self, manifest: dict) -> dict[str, str]:
        """{ref: the ID the tag must have on this engine's store} of a manifest dict."""
        key = "manifest_digest" if self.store == "containerd" else "id"
        return {i["ref"]: i[key] for i in manifest["images"]}

    def runs(self, ref: str) -> None:
        proc = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "true"], env=self.engine.env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (ref, proc.stderr)


def fails(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Assert a clean failure with ``code`` whose stderr names every needle; return stderr."""
    text = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "error: " in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text
