"""`overleaf-bundle plan` and `catalog` as a user runs them (real processes, real HTTP)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bundler.cli", *args], capture_output=True, text=True, env=env)


def test_plan_json_3_5_10_to_latest():
    out = cli("--json", "plan", "--from", "3.5.10", "--to", "latest")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert [s["version"] for s in d["steps"] if s["kind"] == "app"] == ["3.5.13", "4.2.9", "5.5.8", "6.2.2"]
    names = [s.get("name") for s in d["steps"] if s["kind"] == "migration"]
    assert names == ["history_migration", "history_cleanup", "binary_files_migration"]
    assert d["images"] == sorted(set(d["images"]))


def test_plan_human_output_lists_steps_and_images():
    out = cli("plan", "--from", "5.5.4", "--to", "6.2.2", "--edition", "pro", "--git-bridge",
              "--texlive", "2025.1", "--mongo", "6.0", "--redis", "6.2")
    assert out.returncode == 0, out.stderr
    assert "via 5.5.8 -> 6.2.2" in out.stdout
    assert "quay.io/sharelatex/texlive-full:2025.1" in out.stdout
    assert "Images to carry" in out.stdout


@pytest.mark.parametrize("args,code,text", [
    (["plan", "--from", "6.2.2", "--to", "5.5.8"], 3, "cannot be downgraded"),
    (["plan", "--from", "4.2.9", "--to", "5.0.1"], 3, "Use 5.0.3"),
    (["plan", "--from", "1.0"], 3, "not an Overleaf version"),
    (["plan", "--from", "5.5.4", "--texlive", "2025.1"], 3, "Server Pro"),
    (["plan", "--toolkit", "/nonexistent"], 30, "Overleaf Toolkit"),
    (["plan", "--from", "5.5.4", "--edition", "xx"], 2, "--edition 'xx': not an edition"),   # like any bad option
    (["build", "--from", "5.5.4", "--edition", "xx", "--out", "/nonexistent/b", "--key", "/nonexistent/k"], 2,
     "--edition 'xx': not an edition"),
])
def test_plan_errors_are_clean(args, code, text):
    out = cli(*args)
    assert out.returncode == code
    assert text in out.stderr and "Traceback" not in out.stderr


def test_catalog_show():
    out = cli("catalog", "show")
    assert out.returncode == 0
    assert "retracted" in out.stdout and "use 5.0.3" in out.stdout and "pro only" in out.stdout
    d = json.loads(cli("--json", "catalog", "show").stdout)
    assert any(r["version"] == "3.3.1" and r["editions"] == ["pro"] for r in d["releases"])


class _TokenRegistry(BaseHTTPRequestHandler):
    """A registry that wants an anonymous bearer token, as Docker Hub and quay.io do."""

    tags = ["6.2.2", "6.2.3", "6.3.0", "7.0.0", "latest", "6.2.3-RC1"]

    def log_message(self, *a):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path.startswith("/token"):
            assert "scope=repository%3Asharelatex%2Fsharelatex%3Apull" in self.path
            body, code = json.dumps({"token": "tok"}).encode(), 200
        elif self.headers.get("Authorization") != "Bearer tok":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token",'
                             'service="test",scope="repository:sharelatex/sharelatex:pull"')
            self.end_headers()
            return
        elif "last=" not in self.path:  # page 1, with a Link to page 2
            body, code = json.dumps({"name": "sharelatex/sharelatex", "tags": self.tags[:3]}).encode(), 200
            self.send_response(code)
            self.send_header("Link", '</v2/sharelatex/sharelatex/tags/list?n=3&last=6.3.0>; rel="next"')
            self.end_headers()
            self.wfile.write(body)
            return
        else:
            body, code = json.dumps({"name": "sharelatex/sharelatex", "tags": self.tags[3:]}).encode(), 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)


def test_catalog_refresh_token_flow_pagination_and_new_major(tmp_path):
    srv = HTTPServer(("127.0.0.1", 0), _TokenRegistry)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        overlay = tmp_path / "overlay.yaml"
        out = cli("--json", "catalog", "refresh", "--registry", f"http://127.0.0.1:{srv.server_address[1]}",
                  "--overlay", str(overlay))
        assert out.returncode == 0, out.stderr
        d = json.loads(out.stdout)
        assert d["added"] == ["6.2.3", "6.3.0"] and d["new_majors"] == ["7.0.0"]
        env = {**__import__("os").environ, "OVERLEAF_AIRGAP_CATALOG_OVERLAY": str(overlay)}
        plan = json.loads(cli("--json", "plan", "--from", "6.2.2", "--mongo", "8.0", "--redis", "7.4", env=env).stdout)
        assert [s["version"] for s in plan["steps"] if s["kind"] == "app"] == ["6.3.0"]
    finally:
        srv.shutdown()


def test_catalog_refresh_unreachable_registry(tmp_path):
    out = cli("catalog", "refresh", "--registry", "http://127.0.0.1:9", "--overlay", str(tmp_path / "o.yaml"))
    assert out.returncode == 21 and "cannot reach the registry" in out.stderr


def test_catalog_refresh_against_a_real_registry(engine, registry, tmp_path):
    """Distribution's own tags/list (no token flow on loopback): a new patch is recorded."""
    from tests.support.engine import build_image

    client = engine.client()
    for tag in ("6.2.2", "6.2.9"):
        build_image(client, f"refresh-test/sharelatex:{tag}", {"/VERSION": tag})
        client.images.get(f"refresh-test/sharelatex:{tag}").tag(f"{registry.address}/refresh-test/sharelatex", tag)
        for line in client.images.push(f"{registry.address}/refresh-test/sharelatex", tag, stream=True, decode=True):
            assert "error" not in line, line
        client.images.remove(f"{registry.address}/refresh-test/sharelatex:{tag}")  # leave the engine as found
    overlay = tmp_path / "overlay.yaml"
    out = cli("--json", "catalog", "refresh", "--registry", f"http://{registry.address}",
              "--repository", "refresh-test/sharelatex", "--overlay", str(overlay))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == ["6.2.9"]
    assert "6.2.9" in overlay.read_text()
