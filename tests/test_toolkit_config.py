"""Reading a Toolkit's config/ (toolkit-contract.md) and planning from it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from manifests.errors import ToolkitError
from manifests.toolkit_config import parse_env_text, read_toolkit


def make_toolkit(root, version, rc, env="", default_rc=""):
    (root / "bin").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "lib").mkdir()
    (root / "config" / "version").write_text(version + "\n")
    (root / "config" / "overleaf.rc").write_text(rc)
    (root / "config" / "variables.env").write_text(env)
    (root / "lib" / "default.rc").write_text(default_rc)
    return root


def test_parse_env_text_handles_quotes_comments_export():
    got = parse_env_text('A=1\nexport B="two words" # c\n# C=3\nD=\'x#y\'\nE=\n  F = bad\n')
    assert got == {"A": "1", "B": "two words", "D": "x#y", "E": ""}


def test_read_legacy_ce_toolkit(tmp_path):
    tk = make_toolkit(tmp_path / "tk", "3.5.10",
                      "SHARELATEX_DATA_PATH=data/sharelatex\nMONGO_IMAGE=mongo:4.4\nREDIS_IMAGE=redis:5.0\n"
                      "NGINX_ENABLED=false\n", default_rc="NGINX_IMAGE=nginx:1.19-alpine\n")
    cfg = read_toolkit(tk)
    assert (cfg.version, cfg.edition, cfg.mongo_version, cfg.redis_version) == ("3.5.10", "ce", "4.4", "5.0")
    assert cfg.mongo_legacy_form and not cfg.tls_proxy and not cfg.nginx_pinned
    assert cfg.data_paths["OVERLEAF_DATA_PATH"] == tk / "data" / "sharelatex"


def test_read_pro_toolkit_with_texlive_and_git_bridge(tmp_path):
    tk = make_toolkit(tmp_path / "tk", "5.5.4",
                      "SERVER_PRO=true\nMONGO_IMAGE=mongo\nMONGO_VERSION=6.0\nREDIS_IMAGE=redis:6.2\n"
                      "GIT_BRIDGE_ENABLED=true\nSIBLING_CONTAINERS_ENABLED=true\nNGINX_ENABLED=true\n"
                      "NGINX_IMAGE=nginx:1.28-alpine\n",
                      env="TEX_LIVE_DOCKER_IMAGE=quay.io/sharelatex/texlive-full:2025.1\n"
                          "ALL_TEX_LIVE_DOCKER_IMAGES=quay.io/sharelatex/texlive-full:2025.1,quay.io/sharelatex/texlive-full:2022.1\n")
    cfg = read_toolkit(tk)
    assert cfg.edition == "pro" and cfg.git_bridge and cfg.tls_proxy and not cfg.mongo_legacy_form
    assert cfg.texlive == ("quay.io/sharelatex/texlive-full:2025.1", "quay.io/sharelatex/texlive-full:2022.1")
    out = subprocess.run([sys.executable, "-m", "bundler.cli", "--json", "plan", "--toolkit", str(tk)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["from"] == "5.5.4" and plan["edition"] == "pro"
    assert "quay.io/sharelatex/git-bridge:6.2.2" in plan["images"]
    assert "nginx:1.28-alpine" in plan["assumed_present"]  # pinned in overleaf.rc: the host runs it
    assert "quay.io/sharelatex/texlive-full:2022.1" in plan["images"]
    assert plan["options"]["mongo"] == "6.0" and plan["options"]["redis"] == "6.2"


def test_not_a_toolkit(tmp_path):
    with pytest.raises(ToolkitError, match="does not look like"):
        read_toolkit(tmp_path)
