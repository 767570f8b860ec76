"""Issue 18 items 4, 6, 7 (host side): what a second local user, a planted link or an odd file can do to the
offline host's secrets and state, tried for real.

A second local user (``nobody``) runs ``cat``/``ls`` as itself (``setpriv``-like ``preexec_fn`` setuid) against:
a ``variables.env`` the upgrade rewrote (its 0600/0640 mode and group kept, the generated secret too), the
``__old-`` copies, and a backup while it is being written (folder 0700 from ``mkdir``, files 0600 until done).
Every test works in a world-traversable folder and first shows that ``nobody`` can read a 0644 file there, so a
refusal is the file's own mode, not the folder's. Planted links: a symlinked ``config/variables.env`` or
``config/overleaf.rc`` is refused with ToolkitError (exit 30) before any change, its target untouched; a link
planted as ``audit.log``, ``journal.json`` or ``.overleaf-airgap`` is refused, its target untouched. Digests,
ids and versions with a trailing newline are refused (``\\Z``, not ``$``). Every odd override file becomes one
preflight problem (exit 31 for the upgrade), never a traceback.

    python3 -m pytest -q tests/test_host_secrets.py
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from manifests.atomic import SymlinkRefused, atomic_write_bytes
from manifests.bundle import BundleManifest, DIGEST_RE
from manifests.errors import ConfigValueError, ManifestFormatError, ToolkitError
from manifests.toolkit_config import read_toolkit
from importer.upgrade.backup import _copy_file, create_backup
from importer.upgrade.base import data_sources, default_backup_dir, parse_override
from importer.upgrade.grammar import check_config_value, check_step_id
from importer.upgrade.journal import Audit, Journal
from importer.upgrade.preflight import override_problems
from importer.upgrade.toolkit import Toolkit, check_config_files
from tests.support.toolkit import make_toolkit
from tests.test_tamper_matrix import Setup, manifest_dict, s  # noqa: F401 - the signed-manifest fixture

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SECRET = "c2VjcmV0LXZhbHVlLW9mLXRoZS1ob3N0LTEyMzQ1Njc4"


def other_group() -> int:
    """A group ``nobody`` is not in (``daemon``, gid 1 on Debian)."""
    return grp.getgrnam("daemon").gr_gid


def as_nobody(*argv: str, gid: int = NOBODY) -> subprocess.CompletedProcess:
    """Run ``argv`` as the second local user ``nobody`` (uid 65534), with only group ``gid``."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(NOBODY)
    return subprocess.run(list(argv), capture_output=True, text=True, preexec_fn=drop, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def open_dir():
    """A folder every user may traverse (pytest's tmp_path is 0700, which would hide everything anyway)."""
    d = Path(tempfile.mkdtemp(prefix="host-secrets-", dir="/tmp"))
    d.chmod(0o755)
    probe = d / "world-readable"
    probe.write_text("anyone\n")
    probe.chmod(0o644)
    assert as_nobody("cat", str(probe)).stdout == "anyone\n"   # the folder itself lets nobody in
    yield d
    shutil.rmtree(d, ignore_errors=True)


def toolkit_in(folder: Path, version: str = "5.5.8", **kw):
    tk = make_toolkit(folder, version, git=False, secret=False, **kw)
    os.chmod(tk.root, 0o755)
    return tk


def importer(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": "unix:///nonexistent/docker.sock", **env_extra}
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT)


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


# --- item 4: rewritten config keeps owner, group and mode ------------------------------------------------
@pytest.mark.parametrize("mode,group", [(0o600, None), (0o640, "other")])
def test_a_generated_secret_stays_as_private_as_variables_env_was(open_dir, mode, group):
    tk = toolkit_in(open_dir)
    env_file = Path(os.fspath(tk)) / "config" / "variables.env"
    gid = other_group() if group else os.getgid()
    os.chown(env_file, 0, gid)
    env_file.chmod(mode)
    Toolkit(Path(os.fspath(tk))).set_env("OVERLEAF_INVITE_TOKEN_SECRET", SECRET, keep_copy=True)
    copies = sorted((Path(os.fspath(tk)) / "config").glob("__old-variables.env.*"))
    assert len(copies) == 1 and SECRET not in copies[0].read_text()
    for f in (env_file, copies[0]):
        st = os.lstat(f)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, gid), f
        denied = as_nobody("cat", str(f))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr and SECRET not in denied.stdout
    assert f"OVERLEAF_INVITE_TOKEN_SECRET={SECRET}" in env_file.read_text()
    if group:  # the group it had can still read it: the group was kept, not reset to root's
        assert SECRET in as_nobody("cat", str(env_file), gid=gid).stdout


def test_the_rename_and_config_version_keep_their_modes(open_dir):
    tk = toolkit_in(open_dir, "4.2.9")
    cfg = Path(os.fspath(tk)) / "config"
    (cfg / "variables.env").chmod(0o600)
    (cfg / "overleaf.rc").chmod(0o640)
    (cfg / "version").chmod(0o604)
    t = Toolkit(Path(os.fspath(tk)))
    assert "variables.env" in t.rename_sharelatex_vars()
    t.write_version("5.5.8")
    assert stat.S_IMODE(os.lstat(cfg / "variables.env").st_mode) == 0o600
    assert [stat.S_IMODE(os.lstat(p).st_mode) for p in cfg.glob("__old-variables.env.*")] == [0o600]
    assert stat.S_IMODE(os.lstat(cfg / "version").st_mode) == 0o604
    assert stat.S_IMODE(os.lstat(cfg / "__old-version").st_mode) == 0o604
    assert as_nobody("cat", str(cfg / "variables.env")).returncode != 0


def test_atomic_write_keep_refuses_a_link_and_keeps_attributes(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused):
        atomic_write_bytes(link, b"new\n", keep=True)
    assert link.is_symlink() and target.read_bytes() == b"precious\n"
    plain = tmp_path / "plain"
    plain.write_bytes(b"a")
    os.chown(plain, 0, other_group())
    plain.chmod(0o640)
    atomic_write_bytes(plain, b"b", keep=True)
    st = os.lstat(plain)
    assert (plain.read_bytes(), stat.S_IMODE(st.st_mode), st.st_gid) == (b"b", 0o640, other_group())
    atomic_write_bytes(tmp_path / "new", b"c", mode=0o600, keep=True)   # no file yet: the given mode
    assert stat.S_IMODE(os.lstat(tmp_path / "new").st_mode) == 0o600


# --- item 4: symlinked config files are refused before any change -------------------------------------
@pytest.mark.parametrize("name", ["variables.env", "overleaf.rc"])
def test_a_symlinked_config_file_is_refused_and_its_target_untouched(open_dir, name):
    tk = toolkit_in(open_dir)
    cfg = Path(os.fspath(tk)) / "config"
    target = open_dir / "elsewhere"
    shutil.move(cfg / name, target)
    target.chmod(0o600)
    (cfg / name).symlink_to(target)
    before = snapshot(target)
    t = Toolkit(Path(os.fspath(tk)))
    with pytest.raises(ToolkitError) as err:
        check_config_files(Path(os.fspath(tk)))
    assert err.value.exit_code == 30 and "symbolic link" in err.value.message
    with pytest.raises(ToolkitError):
        if name == "variables.env":
            t.set_env("OVERLEAF_INVITE_TOKEN_SECRET", SECRET, keep_copy=True)
        else:
            t.set_rc("REDIS_IMAGE", "redis:7.4", keep_copy=True)
    with pytest.raises(ToolkitError):
        t.rename_sharelatex_vars()
    assert snapshot(target) == before and (cfg / name).is_symlink()
    assert not list(cfg.glob("__old-*"))


def test_upgrade_cli_refuses_a_symlinked_variables_env_before_anything(open_dir):
    tk = toolkit_in(open_dir)
    root = Path(os.fspath(tk))
    target = open_dir / "secrets.env"
    shutil.move(root / "config" / "variables.env", target)
    target.chmod(0o600)
    (root / "config" / "variables.env").symlink_to(target)
    before = snapshot(target)
    r = importer({}, "upgrade", str(open_dir / "no-bundle"), "--toolkit", str(root), "--yes", "--generate-secrets")
    assert r.returncode == 30, r.stdout + r.stderr
    assert "symbolic link" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(target) == before
    assert not (root / ".overleaf-airgap").exists() and not list((root / "config").glob("__old-*"))
    assert not default_backup_dir(root).exists()


# --- item 4: backups are private from the first byte ---------------------------------------------------
def test_a_backup_cannot_be_read_by_another_user_while_it_is_written(open_dir):
    tk = toolkit_in(open_dir)
    root = Path(os.fspath(tk))
    readable = root / "config" / "overleaf.rc"
    readable.chmod(0o644)
    assert as_nobody("cat", str(readable)).returncode == 0   # the source is world-readable
    (root / "config" / "variables.env").chmod(0o600)
    dest = open_dir / "backups"
    seen: list[tuple[int, str, str]] = []

    def probe(_n: int) -> None:   # called after each file is copied, while the backup is .partial
        partial = next(dest.glob("*.partial"))
        copy = partial / "config" / "overleaf.rc"
        if copy.exists():
            r = as_nobody("cat", str(copy))
            seen.append((r.returncode, r.stderr, as_nobody("ls", str(partial)).stderr))

    rec = create_backup(dest, data_sources(read_toolkit(root)), app_version="5.5.8", step_id="01-backup",
                        major=False, on_bytes=probe)
    assert seen, "the probe never ran while the backup was written"
    for code, err, ls_err in seen:
        assert code != 0 and "Permission denied" in err and "Permission denied" in ls_err
    final = Path(rec.path)
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o700 and stat.S_IMODE(os.lstat(final).st_mode) == 0o700
    assert as_nobody("cat", str(final / "config" / "variables.env")).returncode != 0
    # inside the private folder, each copy has its original's mode and owner (a restore puts them back so)
    for name, mode in (("overleaf.rc", 0o644), ("variables.env", 0o600)):
        st = os.lstat(final / "config" / name)
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == os.lstat(root / "config" / name).st_uid
    for name in ("SHA256SUMS", "backup.json"):
        assert stat.S_IMODE(os.lstat(final / name).st_mode) == 0o600


def test_a_backup_copy_never_writes_through_a_planted_name(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"data")
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    planted = tmp_path / "dst"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        _copy_file(src, planted, [], "x/dst")
    assert victim.read_bytes() == b"untouched"


# --- item 4: journal, audit log and their folder refuse planted links ---------------------------------
def test_audit_log_and_journal_refuse_planted_links(tmp_path):
    tk = tmp_path / "tk"
    state = tk / ".overleaf-airgap"
    state.mkdir(parents=True)
    target = tmp_path / "target"
    target.write_text("root's file\n")
    (state / "audit.log").symlink_to(target)
    with pytest.raises(ToolkitError) as err:
        Audit(tk, "b").record("upgrade", "started")
    assert err.value.exit_code == 30 and "symbolic link" in err.value.message
    (state / "journal.json").symlink_to(target)
    with pytest.raises(ToolkitError):
        Journal.load(tk)
    j = Journal.new(tk, "b", {"steps": [{"id": "01-backup"}]}, "5.5.8")
    with pytest.raises(ToolkitError):
        j.save()
    assert target.read_text() == "root's file\n"
    assert (state / "audit.log").is_symlink() and (state / "journal.json").is_symlink()


def test_a_linked_state_folder_is_refused_and_new_files_are_private(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tk = tmp_path / "tk"
    tk.mkdir()
    (tk / ".overleaf-airgap").symlink_to(elsewhere)
    for act in (lambda: Audit(tk, "b").record("upgrade", "started"),
                lambda: Journal.new(tk, "b", {"steps": []}, "5.5.8").save(), lambda: Journal.load(tk)):
        with pytest.raises(ToolkitError):
            act()
    assert list(elsewhere.iterdir()) == []
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    Audit(fresh, "b").record("upgrade", "started")
    Journal.new(fresh, "b", {"steps": []}, "5.5.8").save()
    assert stat.S_IMODE(os.lstat(fresh / ".overleaf-airgap").st_mode) == 0o700
    for name in ("audit.log", "journal.json"):
        assert stat.S_IMODE(os.lstat(fresh / ".overleaf-airgap" / name).st_mode) == 0o600
    assert json.loads((fresh / ".overleaf-airgap" / "audit.log").read_text())["action"] == "upgrade"


def test_status_cli_refuses_a_linked_journal(tmp_path):
    tk = toolkit_in(tmp_path)
    root = Path(os.fspath(tk))
    (root / ".overleaf-airgap").mkdir()
    (root / ".overleaf-airgap" / "journal.json").symlink_to("/etc/hostname")
    r = importer({}, "status", "--toolkit", str(root))
    assert r.returncode == 30, r.stdout + r.stderr
    assert "symbolic link" in r.stderr and "Traceback" not in r.stderr


def test_rollback_cli_refuses_a_linked_audit_log_before_stopping_anything(tmp_path):
    tk = toolkit_in(tmp_path)
    root = Path(os.fspath(tk))
    backups = tmp_path / "backups"
    create_backup(backups, data_sources(read_toolkit(root)), app_version="5.5.8", step_id="01-backup", major=True)
    (root / ".overleaf-airgap").mkdir()
    target = tmp_path / "target"
    target.write_text("keep me\n")
    (root / ".overleaf-airgap" / "audit.log").symlink_to(target)
    version = (root / "config" / "version").read_bytes()
    r = importer({}, "rollback", "--toolkit", str(root), "--yes", "--backup-dir", str(backups), "--no-start")
    assert r.returncode == 30, r.stdout + r.stderr
    assert "audit log" in r.stderr and "symbolic link" in r.stderr and "Traceback" not in r.stderr
    assert target.read_text() == "keep me\n" and (root / "config" / "version").read_bytes() == version
    assert not list(root.glob("**/.before-rollback-*"))


# --- item 6: a trailing newline passes no pattern ----------------------------------------------------
DIGEST = "sha256:" + "ab" * 32


def test_digests_versions_and_ids_with_a_trailing_newline_are_refused():
    assert DIGEST_RE.match(DIGEST) and not DIGEST_RE.match(DIGEST + "\n")
    for bad in ("5.5.8\n", "5.5.8-with-texlive-full\n"):
        with pytest.raises(ConfigValueError):
            check_config_value("version", bad)
    for key, value in (("MONGO_VERSION", "8.0\n"), ("REDIS_IMAGE", "redis:7.4\n"), ("PULL_BEFORE_UPGRADE", "false\n")):
        check_config_value("overleaf.rc", key, value.strip())
        with pytest.raises(ConfigValueError):
            check_config_value("overleaf.rc", key, value)
    with pytest.raises(ConfigValueError):
        check_config_value("variables.env", "OVERLEAF_INVITE_TOKEN_SECRET", SECRET + "\n")
    with pytest.raises(ManifestFormatError):
        check_step_id("01-backup\n")


def image_entry(diff_id: str) -> dict:
    return {"ref": "mongo:8.0", "id": DIGEST, "diff_ids": [diff_id], "layers": [DIGEST], "source": "registry",
            "exact": True, "upstream_digest": None, "index_entry": None, "manifest_digest": DIGEST,
            "platform": "linux/amd64", "size": 1}


def test_a_diff_id_with_a_trailing_newline_is_refused_by_the_manifest_parser(s):  # noqa: F811
    with pytest.raises(ManifestFormatError) as err:
        BundleManifest.from_dict(manifest_dict(s.kid, images=[image_entry(DIGEST + "\n")]))
    assert "diff_id" in err.value.message
    with pytest.raises(ManifestFormatError) as ok_digest:   # without the newline, the diff_id passes
        BundleManifest.from_dict(manifest_dict(s.kid, images=[image_entry(DIGEST)]))
    assert "diff_id" not in ok_digest.value.message


def test_verify_refuses_a_signed_diff_id_with_a_trailing_newline(s):  # noqa: F811
    s.write(manifest_dict(s.kid, images=[image_entry(DIGEST + "\n")]))
    r = s.verify()
    assert r.returncode == 10, r.stdout + r.stderr
    assert "diff_id" in r.stderr and "Traceback" not in r.stderr


# --- item 7: odd override files ------------------------------------------------------------------------
BOMB = b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
    b"%c: &%c [%s]\n" % (98 + i, 98 + i, b",".join([b"*%c" % (97 + i)] * 10)) for i in range(9))
MERGE_BOMB = b"a: &a {k0: 1, k1: 2}\n" + b"".join(
    b"%c: &%c {<<: [%s]}\n" % (98 + i, 98 + i, b",".join([b"*%c" % (97 + i)] * 10)) for i in range(9))
ODD = {
    "a list": (b"- a\n- b\n", "not a mapping"),
    "a string": (b"just words\n", "not a mapping"),
    "services a list": (b"services: [sharelatex]\n", "services"),
    "a service a string": (b"services:\n  mongo: yes please\n", "service 'mongo'"),
    "volumes a string": (b"services:\n  mongo:\n    volumes: /data/db\n", "volumes"),
    "volume a number": (b"services:\n  mongo:\n    volumes: [5]\n", "volume"),
    "volume source a list": (b"services:\n  mongo:\n    volumes: [{source: [a], target: /data/db}]\n", "volume"),
    "image a number": (b"services:\n  sharelatex:\n    image: 5\n", "image"),
    "image an alias bomb": (BOMB + b"services:\n  sharelatex:\n    image: *j\n", "aliases"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff", "UTF-8"),
    "control characters": (b"services: {a: \x07}\n", "not valid YAML"),
    "billion laughs": (BOMB, "aliases"),
    "merge-key bomb": (MERGE_BOMB, "aliases"),
    "refers to itself": (b"services: &s {mongo: *s}\n", "itself"),
    "nested 100000 deep": (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    "python tag": (b"services: !!python/object/apply:os.system [id]\n", "not valid YAML"),
    "two documents": (b"services: {}\n---\nservices: {}\n", "not valid YAML"),
    "huge": (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "more than"),
}


@pytest.fixture(scope="module")
def plain_toolkit(tmp_path_factory):
    return Path(os.fspath(toolkit_in(tmp_path_factory.mktemp("override"))))


@pytest.mark.parametrize("name", list(ODD))
def test_an_odd_override_file_is_one_clear_preflight_problem(plain_toolkit, name):
    data, words = ODD[name]
    path = plain_toolkit / "config" / "docker-compose.override.yml"
    path.write_bytes(data)
    try:
        problems = override_problems(read_toolkit(plain_toolkit))
    finally:
        path.unlink()
    assert len(problems) == 1 and problems[0].startswith("config/docker-compose.override.yml"), problems
    assert words in problems[0], problems


def test_an_override_fifo_or_folder_does_not_hang_and_is_a_problem(plain_toolkit):
    path = plain_toolkit / "config" / "docker-compose.override.yml"
    os.mkfifo(path)
    try:
        problems = override_problems(read_toolkit(plain_toolkit))
    finally:
        path.unlink()
    assert len(problems) == 1 and "FIFO" in problems[0]
    path.mkdir()
    try:
        assert "a folder" in override_problems(read_toolkit(plain_toolkit))[0]
    finally:
        path.rmdir()


def test_ordinary_override_files_still_read_as_before(plain_toolkit):
    assert parse_override(b"") == {} and parse_override(b"# only a comment\n") == {}
    data = (b"x-common: &common {restart: always}\nservices:\n  mongo:\n    <<: *common\n"
            b"    volumes: ['mongo-data:/data/db']\n  redis: ~\n")
    assert parse_override(data)["services"]["mongo"]["restart"] == "always"
    path = plain_toolkit / "config" / "docker-compose.override.yml"
    path.write_bytes(data)
    try:
        problems = override_problems(read_toolkit(plain_toolkit))
    finally:
        path.unlink()
    assert len(problems) == 1 and "named volume 'mongo-data'" in problems[0]
