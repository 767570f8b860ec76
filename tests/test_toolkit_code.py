"""The Toolkit's own code travels as a git bundle and is fast-forwarded offline (no network)."""
from __future__ import annotations

import subprocess

import pytest

from importer.upgrade import update_toolkit_code
from manifests.errors import ToolkitError


def git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkouts(tmp_path):
    """An 'online' Toolkit repo one commit ahead of the 'offline' clone, and a git bundle of it."""
    online = tmp_path / "online"
    online.mkdir()
    git(online, "init", "-q", "-b", "master")
    (online / "bin").mkdir()
    (online / "bin" / "up").write_text("#!/bin/sh\necho v1\n")
    git(online, "add", "-A")
    git(online, "commit", "-qm", "v1")
    offline = tmp_path / "offline"
    git(tmp_path, "clone", "-q", str(online), str(offline))
    (online / "bin" / "up").write_text("#!/bin/sh\necho v2\n")
    git(online, "commit", "-qam", "v2")
    bundle = tmp_path / "toolkit.gitbundle"
    git(online, "bundle", "create", str(bundle), "HEAD", "master")
    return online, offline, bundle, git(online, "rev-parse", "HEAD")


def test_fast_forwards_from_the_git_bundle(checkouts):
    _online, offline, bundle, commit = checkouts
    subprocess.run(["git", "-C", str(offline), "remote", "set-url", "origin", "https://unreachable.invalid/x"], check=True)
    msg = update_toolkit_code(offline, bundle, commit, True, None)
    assert "moved" in msg and git(offline, "rev-parse", "HEAD") == commit
    assert (offline / "bin" / "up").read_text().endswith("v2\n")
    assert "already at" in update_toolkit_code(offline, bundle, commit, True, None)


def test_refuses_local_changes_and_respects_no(checkouts):
    _online, offline, bundle, commit = checkouts
    before = git(offline, "rev-parse", "HEAD")
    assert "stays" in update_toolkit_code(offline, bundle, commit, False, None)
    (offline / "bin" / "up").write_text("#!/bin/sh\necho local edit\n")
    with pytest.raises(ToolkitError, match="local changes"):
        update_toolkit_code(offline, bundle, commit, True, None)
    assert git(offline, "rev-parse", "HEAD") == before
