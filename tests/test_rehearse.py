"""`overleaf-import rehearse` on a real engine, real Compose and the Toolkit stand-in (issue 16 part 2).

The bundle is a real one (tests/support/real_bundles.py) for 5.5.8 -> 6.2.2 (CE, MongoDB 6.0 -> 7.0 -> 8.0,
Redis 7.4: a backup, the binary files migration with its pause for a person, two MongoDB hops, the new
secret, the app). The real site runs 5.5.8 under the Toolkit's fixed container names while the sandbox
runs beside it under its own project and container names. What a rehearsal may change on the real site
is one stop and start (its fresh backup): the stand-ins log each start (``versions.log``, MongoDB's
``started-at`` and ``commands.log`` get the start's lines), every other byte of the Toolkit, its config and
its data must stay as it was, and MongoDB must have received no upgrade command.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.toolkit_config import parse_env_text
from tests.support.engine import classic_compose
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.real_bundles import RealBundle, build_upgrade_bundle, clear_stale_tags, make_release_key
from tests.support.toolkit import container_states, make_toolkit, remove_toolkit_containers, toolkit_checksums

FROM, TO = "5.5.8", "6.2.2"
STEP_IDS = ["01-backup-point", "02-migration-binary_files_migration", "03-mongo-7.0", "04-mongo-8.0",
            "05-config-secret_overleaf_invite_token_secret", "06-app-6.2.2"]
START_LOGS = {"data/overleaf/versions.log", "data/mongo/started-at", "data/mongo/commands.log"}


@pytest.fixture(scope="session")
def rehearsal_bundle(engine, registry, tmp_path_factory) -> RealBundle:
    key = make_release_key(tmp_path_factory.mktemp("rehearsal-key"))
    out = tmp_path_factory.mktemp("rehearsal-bundle") / "bundle"
    return build_upgrade_bundle(engine, registry, key, out, FROM, TO, mongo="6.0", redis="7.4")


@pytest.fixture
def host(request, rehearsal_bundle, tmp_path):
    """An offline host with the 5.5.8 site running (fixed container names), nothing of 6.2.2 loaded: the classic
    one driven by Compose v1 (where this machine has it), or, parametrized ``containerd``, Engine 26 with the
    containerd store and Compose v2."""
    kind = getattr(request, "param", "classic")
    engine = request.getfixturevalue("offline_engine" if kind == "classic" else "containerd_engine")
    compose = classic_compose() if kind == "classic" else "v2"
    remove_toolkit_containers(engine)
    clear_stale_tags(engine, rehearsal_bundle)
    seed_overleaf_path(engine, [FROM], mongo=["6.0"], redis=["7.4"])
    site = tmp_path / "site"
    site.mkdir()
    tk = make_toolkit(site, FROM, engine=engine.env(compose=compose), mongo="6.0", mongo_legacy=False,
                      redis="7.4")
    tk.run("up", "-d")
    tk.wait_healthy()
    env = {**engine.env(compose=compose), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
           "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}
    yield tk, env
    for kept in site.glob("toolkit.rehearsal-*"):
        sandbox_down(kept, env)
    tk.down()


def importer(env, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def rehearse(env, bundle: RealBundle, tk, *extra):
    return importer(env, "--json", "rehearse", str(bundle.path), "--toolkit", os.fspath(tk), "--trust",
                    str(bundle.pub), "--yes", "--health-timeout", "90", *extra)


def sandbox_down(sandbox: Path, env) -> None:
    if (sandbox / "bin" / "docker-compose").exists():
        subprocess.run([str(sandbox / "bin" / "docker-compose"), "down", "-t", "1"], cwd=sandbox, env=env,
                       capture_output=True, timeout=120)
    shutil.rmtree(sandbox, ignore_errors=True)


def site_snapshot(tk) -> dict[str, str]:
    """Every path of the real Toolkit (code, config, data) but our state folder and the stand-ins' start logs."""
    return {k: v for k, v in toolkit_checksums(tk.root).items()
            if not k.startswith(".overleaf-airgap") and k not in START_LOGS}


def running(env, names=("sharelatex", "mongo", "redis")) -> dict[str, tuple[str, str]]:
    return {n: (s.image, s.image_id) for n, s in container_states(env, names).items() if s.running}


def project_containers(env, project: str) -> dict[str, str]:
    """{container name: image} of every container (running or not) of a compose project."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", "{{.Names}} {{.Image}} {{.Status}}"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.strip()}


def check_real_site_unchanged(tk, env, before: dict[str, str], images: dict, commands_before: str) -> None:
    assert site_snapshot(tk) == before
    assert tk.version() == FROM
    assert running(env) == images            # the same containers run again, on the same image IDs
    tk.wait_healthy()
    new = tk.data("mongo").joinpath("commands.log").read_text()
    assert new.startswith(commands_before)
    assert "setFeatureCompatibilityVersion" not in new[len(commands_before):]
    versions = [line.split()[0] for line in (tk.data() / "versions.log").read_text().splitlines() if line.strip()]
    assert set(versions) == {FROM}               # the real app was only ever started at 5.5.8
    assert not (tk.root / ".overleaf-airgap" / "journal.json").exists()


def test_a_rehearsal_times_every_step_removes_its_sandbox_and_leaves_the_real_site_as_it_was(host,
                                                                                           rehearsal_bundle):
    tk, env = host
    before, images = site_snapshot(tk), running(env)
    commands_before = tk.data("mongo").joinpath("commands.log").read_text()
    out = rehearse(env, rehearsal_bundle, tk)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["from_version"] == FROM and doc["to_version"] == TO
    assert [s["id"] for s in doc["steps"]] == STEP_IDS
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in doc["steps"]), doc["steps"]
    assert doc["backup_seconds"] > 0 and doc["backup_bytes"] > 0 and doc["health_seconds"] >= 0
    assert doc["total_seconds"] >= sum(s["seconds"] for s in doc["steps"])
    assert "binary files" in out.stderr and "[6/6]" in out.stderr
    # the record is the one kept under the real Toolkit
    record = Path(doc["record"])
    assert record.parent == tk.root / ".overleaf-airgap" / "rehearsals"
    assert json.loads(record.read_text())["steps"] == doc["steps"]
    # the sandbox is gone: folder, containers and networks of its project
    sandbox = Path(doc["sandbox"])
    assert sandbox.parent == tk.root.parent and sandbox.name.startswith("toolkit.rehearsal-")
    assert not sandbox.exists()
    projects = subprocess.run(["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'], env=env,
                              capture_output=True, text=True).stdout.split()
    assert set(projects) == {tk.project}
    nets = subprocess.run(["docker", "network", "ls", "--format", '{{.Label "com.docker.compose.project"}}'], env=env,
                          capture_output=True, text=True).stdout.split()
    assert not [n for n in nets if "rehearsal" in n]
    check_real_site_unchanged(tk, env, before, images, commands_before)


@pytest.mark.parametrize("host", ["classic", "containerd"], indirect=True)
def test_keep_leaves_a_sandbox_running_under_its_own_names_beside_the_real_site(host, rehearsal_bundle):
    tk, env = host
    images = running(env)
    sandbox = tk.root.parent / "toolkit.rehearsal-kept"
    out = rehearse(env, rehearsal_bundle, tk, "--keep", "--sandbox", str(sandbox))
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["kept"] is True and doc["sandbox"] == str(sandbox)
    rc = parse_env_text((sandbox / "config" / "overleaf.rc").read_text())
    project = rc["PROJECT_NAME"]
    assert project != tk.project and "rehearsal" in project
    assert rc["OVERLEAF_DATA_PATH"] == str(sandbox / "data" / "overleaf")
    assert not (sandbox / ".overleaf-airgap" / "rehearsals").exists()   # the record went to the real Toolkit
    assert (sandbox / "config" / "version").read_text().strip() == TO
    assert project_containers(env, project) == {
        f"{project}-sharelatex": "sharelatex/sharelatex:6.2.2", f"{project}-mongo": "mongo:8.0",
        f"{project}-redis": "redis:7.4"}
    status = subprocess.run(["docker", "exec", f"{project}-sharelatex", "wget", "-qO-", "http://127.0.0.1/status"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert status.stdout.strip() == "ok", status.stderr
    assert running(env) == images and tk.app_status() == "ok"   # the real site runs 5.5.8 beside it
    assert project_containers(env, tk.project).keys() == {"sharelatex", "mongo", "redis"}
    # the sandbox's data moved on, the real site's did not
    assert (sandbox / "data" / "overleaf" / "binary-files-migration.done").exists()
    assert not (tk.data() / "binary-files-migration.done").exists()


def test_a_step_failing_in_the_sandbox_exits_35_and_leaves_the_real_site_as_it_was(host, rehearsal_bundle):
    tk, env = host
    (tk.data() / "FAIL_MIGRATION").write_text("back_fill_file_hash\n")   # the stand-in's migration fails
    before, images = site_snapshot(tk), running(env)
    commands_before = tk.data("mongo").joinpath("commands.log").read_text()
    out = rehearse(env, rehearsal_bundle, tk)
    assert out.returncode == 35, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["exit_code"] == 35 and err["step"] == "02-migration-binary_files_migration"
    assert "02-migration-binary_files_migration" in err["error"] and err["record"] in err["error"]
    assert "the real site is as it was" in err["error"]
    record = json.loads(Path(err["record"]).read_text())
    assert record["ok"] is False and "02-migration-binary_files_migration" in record["error"]
    assert [(s["id"], s["status"]) for s in record["steps"]] == [
        (STEP_IDS[0], "done"), (STEP_IDS[1], "failed"), *[(i, "pending") for i in STEP_IDS[2:]]]
    assert record["steps"][1]["seconds"] > 0
    assert not Path(err["sandbox"]).exists()
    leftover = subprocess.run(["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'], env=env,
                              capture_output=True, text=True).stdout.split()
    assert set(leftover) == {tk.project}
    check_real_site_unchanged(tk, env, before, images, commands_before)


def stat_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_mode)
            for p in sorted(root.rglob("*"))}


def test_ctrl_c_in_the_sandbox_removes_it_records_it_and_leaves_the_real_site_as_it_was(host, rehearsal_bundle):
    tk, env = host
    before, images = site_snapshot(tk), running(env)
    commands_before = tk.data("mongo").joinpath("commands.log").read_text()
    args = ["--json", "rehearse", str(rehearsal_bundle.path), "--toolkit", os.fspath(tk), "--trust",
            str(rehearsal_bundle.pub), "--yes", "--health-timeout", "90"]
    proc = subprocess.Popen([sys.executable, "-m", "importer.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("[3/6]"):   # inside the first MongoDB hop, in the sandbox
                proc.send_signal(signal.SIGINT)
                break
        rest_out, rest_err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest_err
    doc = json.loads(rest_out)
    assert doc["exit_code"] == 130
    records = list((tk.root / ".overleaf-airgap" / "rehearsals").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["ok"] is False and record["error"] == "step 03-mongo-7.0: interrupted"
    assert [s["status"] for s in record["steps"]][:3] == ["done", "done", "failed"]
    assert not Path(record["sandbox"]).exists()
    leftover = subprocess.run(["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'], env=env,
                              capture_output=True, text=True).stdout.split()
    assert set(leftover) == {tk.project}
    check_real_site_unchanged(tk, env, before, images, commands_before)


def started_at(env) -> dict[str, str]:
    out = subprocess.run(["docker", "inspect", "-f", "{{.Name}} {{.State.StartedAt}}", "sharelatex", "mongo", "redis"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


def test_an_existing_sandbox_or_too_little_disk_is_refused_before_anything_changes(host, rehearsal_bundle):
    tk, env = host
    before, started = site_snapshot(tk), started_at(env)
    taken = tk.root.parent / "taken"
    taken.mkdir()
    (taken / "mine").write_text("keep me\n")
    out = rehearse(env, rehearsal_bundle, tk, "--sandbox", str(taken))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "already exists" in json.loads(out.stdout)["error"]
    assert (taken / "mine").read_text() == "keep me\n" and len(list(taken.iterdir())) == 1
    assert site_snapshot(tk) == before and started_at(env) == started
    # a sparse file makes the site's data larger than this disk: the sandbox could not hold it
    free = shutil.disk_usage(tk.root).free
    with open(tk.data() / "huge.bin", "wb") as fh:
        fh.truncate(free + (1 << 30))
    stats = stat_snapshot(tk.root)   # (hashing the sparse file would read it all)
    out = rehearse(env, rehearsal_bundle, tk)
    assert out.returncode == 22, out.stdout + out.stderr
    assert "--sandbox" in json.loads(out.stdout)["hint"]
    assert stat_snapshot(tk.root) == stats and started_at(env) == started     # never stopped
    assert not list(tk.root.parent.glob("toolkit.rehearsal-*"))
    assert not (tk.root / ".overleaf-airgap").exists()
    (tk.data() / "huge.bin").unlink()


# --- the real upgrade command's own exit codes (5: not confirmed, 130: Ctrl-C at its question, 33: a step failed)
def upgrade_args(bundle: RealBundle, tk, *extra: str) -> list[str]:
    return ["upgrade", str(bundle.path), "--toolkit", os.fspath(tk), "--trust", str(bundle.pub),
            "--generate-secrets", "--health-timeout", "90", *extra]


def test_an_unconfirmed_upgrade_off_a_terminal_exits_5_and_changes_nothing(host, rehearsal_bundle):
    """No --yes and no terminal to ask on: the upgrade question is answered no, the site is left as it was."""
    tk, env = host
    before, images = site_snapshot(tk), running(env)
    commands_before = tk.data("mongo").joinpath("commands.log").read_text()
    out = importer(env, "--json", *upgrade_args(rehearsal_bundle, tk))
    assert out.returncode == 5, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["exit_code"] == 5 and "not confirmed" in err["error"] and "--yes" in err["hint"]
    check_real_site_unchanged(tk, env, before, images, commands_before)


def _wait_until_reading_the_terminal(pid: int, limit: float = 60) -> None:
    """Wait until the child's main thread sleeps in read(0, ...), as a person typing would find it.

    Typed the moment the question shows, a Ctrl-C can land between Python's last signal check and the
    read() system call of input(): the handler only sets a flag, read() blocks with nothing left to read
    (the terminal flushed its input), and the flag is not looked at until the next interruption. On a
    loaded machine that window is wide enough to hit (a CI run did), so the keys go in once the child
    is waiting for them; /proc/PID/syscall names the call and its first argument, the descriptor."""
    import platform
    import time

    read_nr = {"x86_64": "0", "aarch64": "63", "riscv64": "63"}.get(platform.machine())
    assert read_nr is not None, (f"the number of the read system call on {platform.machine()} is not known to this "
                                 "test: add it to read_nr (asm/unistd.h)")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/syscall").read_text().split()
        except OSError:
            fields = []
        if len(fields) > 1 and fields[0] == read_nr and int(fields[1], 16) == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the importer never waited for the terminal: /proc/{pid}/syscall = {fields}")


def _assert_a_ctrl_c_would_reach(pid: int) -> None:
    """The terminal turns Ctrl-C into SIGINT for its foreground process group, if ISIG is on; the child
    must be that group, with SIGINT neither ignored nor blocked (else the key is lost: say why, now)."""
    import termios

    fd = os.open(os.readlink(f"/proc/{pid}/fd/0"), os.O_RDWR | os.O_NOCTTY)
    try:
        lflag = termios.tcgetattr(fd)[3]
    finally:
        os.close(fd)
    # tcgetpgrp answers only for one's own controlling terminal; /proc/PID/stat has the child's (tpgid)
    foreground = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[5])
    assert foreground == os.getpgid(pid), f"the terminal's foreground group is {foreground}, not the importer's"
    assert lflag & termios.ISIG, "something the importer ran turned ISIG off on its terminal"
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    for mask in ("SigIgn", "SigBlk"):
        assert not int(status[mask], 16) & (1 << (signal.SIGINT - 1)), f"the importer's {mask} has SIGINT"


def _run_on_a_terminal(env, args: list[str], answer_at: bytes, keys: bytes, timeout: float = 600) -> tuple[int, str]:
    """Run ``overleaf-import ARGS`` on a pseudo-terminal; type ``keys`` once ``answer_at`` is shown.
    Returns (exit code, everything the terminal showed)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:   # the child: the importer, with the terminal as stdin, stdout and stderr
        os.execve(sys.executable, [sys.executable, "-m", "importer.cli", *args], env)
    shown, typed, deadline = b"", False, time.monotonic() + timeout
    finished = False   # stays so if the deadline passes or an exception leaves the loop
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:   # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not typed and answer_at in shown:
                _wait_until_reading_the_terminal(pid)
                _assert_a_ctrl_c_would_reach(pid)
                os.write(fd, keys)
                typed, deadline = True, min(deadline, time.monotonic() + 120)   # an answer acts at once
        finished = time.monotonic() < deadline   # the child closed the terminal: it ended
    finally:
        if not finished:   # the deadline passed or this test failed: say where the child was, stop it
            with contextlib.suppress(OSError):
                sig = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(("Sig", "Shd"))]
                where = f"[still running: syscall {Path(f'/proc/{pid}/syscall').read_text().split()[:2]}, {sig}]"
                shown += f"\n{where}".encode()
                # stderr too: when an exception is on its way out, ``shown`` never reaches an assertion
                print(f"the importer on the terminal was stopped: {where}\nit showed:\n"
                      f"{shown.decode(errors='replace')[-2000:]}", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert typed, f"the question never came: {shown.decode(errors='replace')}"
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_ctrl_c_at_the_upgrade_question_exits_130_and_changes_nothing(host, rehearsal_bundle):
    """On a terminal the upgrade asks before it changes anything; Ctrl-C there is an interruption (130)."""
    tk, env = host
    before, images = site_snapshot(tk), running(env)
    commands_before = tk.data("mongo").joinpath("commands.log").read_text()
    code, shown = _run_on_a_terminal(env, upgrade_args(rehearsal_bundle, tk), b"[y/N]", b"\x03")
    assert code == 130, shown
    assert "interrupted" in shown and "unexpected error" not in shown and "Traceback" not in shown
    check_real_site_unchanged(tk, env, before, images, commands_before)


def test_a_failing_migration_in_the_real_upgrade_exits_33_naming_the_step(host, rehearsal_bundle):
    """The real upgrade (not a rehearsal): the binary files migration pauses for its check (40), then on
    --resume the stand-in's backfill fails: exit 33 names the step, the journal marks it failed."""
    tk, env = host
    (tk.data() / "FAIL_MIGRATION").write_text("back_fill_file_hash\n")
    first = importer(env, "--json", *upgrade_args(rehearsal_bundle, tk, "--yes"))
    assert first.returncode == 40, first.stdout + first.stderr
    out = importer(env, "--json", *upgrade_args(rehearsal_bundle, tk, "--yes", "--resume"))
    assert out.returncode == 33, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["exit_code"] == 33 and err["step"] == "02-migration-binary_files_migration"
    assert err["error"].startswith("step 02-migration-binary_files_migration: binary_files_migration failed")
    journal = json.loads((tk.root / ".overleaf-airgap" / "journal.json").read_text())
    assert journal["steps"]["01-backup-point"]["status"] == "done"
    assert journal["steps"]["02-migration-binary_files_migration"]["status"] == "failed"
    assert tk.data("mongo").joinpath("commands.log").read_text().count("setFeatureCompatibilityVersion") == 0
