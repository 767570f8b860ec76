"""Benchmark 2: ``overleaf-bundle build`` and ``overleaf-import verify``/``load`` side by side with
``docker save``/``docker load`` and ``skopeo``, on both image stores, in one run.

Run it as root (it starts its own engines and registry, never the machine's), from the
repository root::

    python3 -m bench.run [--size 0.75] [--runs 3] [--mem-size 0.25] [--verify-size 2] [--profile]
    python3 -m bench.run --render bench/results.json      # table and Markdown again, measuring nothing

The images (bench/dataset.py) are the seven of ``overleaf-bundle plan --from 4.2.8 --to 6.2.2
--mongo 5.0 --redis 6.2``: a shared app base, per-version layers, compressible and
incompressible data, MongoDB and Redis as two-platform OCI indexes, pushed straight into a
private registry through the Registry API. ``--size 1`` is about 2.06 GB of unique raw
layer data; the default 0.75 (about 1.5 GB) takes about 10 minutes on 2 cores.

Engines: an online Engine 20.10 (classic store) that pulled the images from the registry
(not timed), and two empty offline engines: Engine 20.10 (classic store) and Engine 26
(containerd image store; tests/fetch_engine26.sh). Each of ``--runs`` runs measures:

online (from the local registry)
  save          one ``docker save -o`` of the seven images on the online Engine 20.10
  skopeo        ``skopeo copy docker://REGISTRY/REPO:TAG oci:LAYOUT:REF``, one call per image, one layout
  build         ``overleaf-bundle build --mirror docker.io=REGISTRY`` with ``DOCKER_HOST`` pointing
                nowhere (upstream-exact blobs; ``--no-importer``: images only, like the others)
  build_zstd    the same with ``--recompress zstd``
offline, on each engine (emptied before every step)
  verify        ``overleaf-import verify`` of the exact bundle (GB/s of payload)
  docker_load   ``docker load -i`` of that engine's own ``docker save`` (Engine 26's was made at set-up)
  load          ``overleaf-import load`` of the exact bundle (it verifies as it streams); image IDs checked
  skopeo        ``skopeo copy oci:LAYOUT:REF docker-daemon:REF``, one call per image

then once per engine the delta: a host holding 6.2.1 (and the MongoDB and Redis it runs)
writes ``overleaf-import inventory``; ``overleaf-bundle build --have RECEIPT`` makes the
6.2.1 -> 6.2.2 bundle, whose load is timed ``--runs`` times. Then, at ``--verify-size`` (default
2: about 2.6 GB of payload), one bundle is built (not timed) and ``verify`` of it timed ``--runs``
times: the verify target is for big bundles, where start-up and the signature and plan checks are
a small part. Last, at ``--mem-size``, one build and one load per engine again, to show that peak
memory stays flat. ``skopeo`` and ``build`` take turns going first (odd runs: skopeo), and every
command of ours runs with its bytecode compiled once at set-up (``PYTHONPYCACHEPREFIX`` in the work
folder), as an installed tool has it.

Measures: wall time (median of the runs, min-max); peak RSS of our process (``ru_maxrss``
from ``os.wait4``: the process tree we started, not the engine); CPU seconds of the command's
process tree (``wait4``) and of the engine (its ``dockerd`` and ``containerd``,
``/proc/PID/stat`` utime+stime+cutime+cstime before and after). Debian 12's skopeo speaks
Docker API 1.22, which Engine 26 refuses: its copies into Engine 26 go through
bench/apiproxy.py (counted as skopeo's CPU). Every target is a ratio within one run (median
of the per-run ratios) or an absolute limit, marked met or missed. Output: a table on
stdout, ``--out`` (JSON) and ``--md`` (the README's Performance section). Neither holds a
path of this machine. ``--profile`` (``pip install py-spy``) runs build, verify and load once
more under ``py-spy record`` and keeps each one's busiest functions in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import docker.errors

from tests.support.engine import PrivateEngine, PrivateRegistry

from . import dataset
from .apiproxy import ApiVersionProxy
from .report import evaluate_targets, markdown_snippet, text_table

MB = 1_000_000
ROOT = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT = 3 * 3600
STORES = ("classic", "containerd")
NO_ENGINE = "unix:///nonexistent/docker.sock"   # the build must not need one


def _script(module: str) -> list[str]:
    """The entry point of THIS checkout (``python -m``, with ROOT first on PYTHONPATH): an installed console
    script may import another checkout's code (an editable install points at one folder)."""
    return [sys.executable, "-m", module]


BUNDLE = _script("bundler.cli")
IMPORT = _script("importer.cli")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- running and measuring one command ------------------------------------------------------------
@dataclass
class Measured:
    seconds: float
    rc: int
    max_rss_bytes: int
    cpu_seconds: float
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    def json(self) -> Any:
        return json.loads(self.stdout)


class StepFailed(RuntimeError):
    pass


def measure(cmd: list[str], env: dict[str, str], *, cwd: Path | None = None, check: bool = True,
            timeout: float = TOOL_TIMEOUT) -> Measured:
    """Run ``cmd``; wall time, exit code, peak RSS and CPU time of its process tree (``os.wait4``)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, 9))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        m = Measured(seconds, proc.returncode, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime,
                     out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))
    if check and m.rc != 0:
        errors = [line for line in m.stderr.splitlines() if line.startswith("error:")]
        first = errors[-1] if errors else (m.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} ... exit code {m.rc}: {first}\n"
                         f"{m.stderr.strip()[-1500:]}")
    return m


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (its waited-for children count too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def engine_pids(engine: PrivateEngine) -> list[int]:
    pids = []
    try:
        pids.append(int(engine.pidfile.read_text().strip()))
    except (OSError, ValueError):
        pass
    containerd = getattr(engine, "_containerd", None)
    if containerd is not None and containerd.poll() is None:
        pids.append(containerd.pid)
    return pids


def engine_cpu_seconds(engine: PrivateEngine | None) -> float:
    """CPU seconds so far of the engine's dockerd and its own containerd."""
    if engine is None:
        return 0.0
    total = 0.0
    for pid in engine_pids(engine):
        try:
            total += proc_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs (/proc/stat): busy excludes idle and iowait."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def self_cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


class CpuWatch:
    """Engine CPU seconds, this process's CPU (the skopeo proxy) and the machine's busy share over one step."""

    def __init__(self, engine: PrivateEngine | None) -> None:
        self.engine = engine

    def __enter__(self) -> "CpuWatch":
        self.e0, self.s0, self.m0 = engine_cpu_seconds(self.engine), self_cpu_seconds(), machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = machine_cpu()
        self.engine_seconds = engine_cpu_seconds(self.engine) - self.e0
        self.self_seconds = self_cpu_seconds() - self.s0
        self.machine_busy = (busy - self.m0[0]) / max(1, total - self.m0[1])


def step_record(seconds: float, cpu: float, rss: int, cw: CpuWatch, **extra: Any) -> dict[str, Any]:
    """One step's numbers; ``others_busy``: the share of the cores that neither the command nor the engine used
    while the step ran but something else on the machine did (noise: compare steps with it in mind)."""
    ncpu = len(os.sched_getaffinity(0))
    ours = (cpu + (cw.engine_seconds if cw.engine_seconds == cw.engine_seconds else 0.0)) / max(seconds * ncpu, 1e-9)
    return {"seconds": seconds, "cpu_seconds": cpu, "engine_cpu_seconds": cw.engine_seconds,
            "machine_busy": cw.machine_busy, "others_busy": max(0.0, cw.machine_busy - ours),
            "max_rss_bytes": rss, **extra}


SETTLE_PAUSE = 1.0   # seconds; --pause (the smoke test uses 0)


def settle() -> None:
    """Write dirty pages back before the next measurement, so one step's writes do not slow the next."""
    os.sync()
    time.sleep(SETTLE_PAUSE)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def clear_images(engine: PrivateEngine) -> None:
    """Remove every image from ``engine`` (several passes: a parent goes after its children)."""
    api = engine.client().api
    for _attempt in range(6):
        ids = api.images(all=True, quiet=True)
        if not ids:
            return
        for image in ids:
            try:
                api.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                continue
    raise RuntimeError(f"could not empty the engine {engine.name}: {api.images(all=True, quiet=True)}")


def image_ids(engine: PrivateEngine, refs: list[str]) -> dict[str, str | None]:
    api = engine.client().api
    out: dict[str, str | None] = {}
    for ref in refs:
        try:
            out[ref] = api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            out[ref] = None
    return out


def pull_as(engine: PrivateEngine, path: dataset.SyntheticPath, refs: list[str]) -> None:
    """``docker pull`` each image from the registry and tag it with its plain name (set-up, not timed)."""
    api = engine.client().api
    for ref in refs:
        mirror = path.images[ref].mirror_ref
        repo, _, tag = mirror.rpartition(":")
        for status in api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in status or "errorDetail" in status:
                raise RuntimeError(f"pull of {mirror} failed: {status}")
        name, _, plain_tag = ref.rpartition(":")
        api.tag(mirror, name, plain_tag)
        api.remove_image(mirror, noprune=True)


def bundle_expected_ids(bundle: Path, store: str) -> dict[str, str]:
    """What ``overleaf-import load`` promises: each tag's image ID on an engine with ``store``."""
    from manifests.bundle import BundleManifest

    m = BundleManifest.from_bytes((bundle / "manifest.json").read_bytes())
    return {e.ref: e.expected_id(store) for e in m.images}


# --- the machine ----------------------------------------------------------------------------------
def _first_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine_info(engines: dict[str, PrivateEngine]) -> dict[str, Any]:
    cpu, mem = "?", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    out: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)), "memory_bytes": mem, "cpu_model": cpu, "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "python": platform.python_version(),
        "docker_cli": _first_line(["docker", "version", "--format", "{{.Client.Version}}"]),
        "skopeo": _first_line(["skopeo", "--version"]).replace("skopeo version ", ""),
        "engines": {},
    }
    for store, engine in engines.items():
        version, info = engine.client().version(), engine.client().info()
        out["engines"][store] = {"version": version.get("Version"), "api": version.get("ApiVersion"),
                                 "driver": info.get("Driver"),
                                 "containerd": (info.get("ContainerdCommit") or {}).get("ID", "")[:12]}
    return out


# --- the sizes: a registry with the synthetic path ----------------------------------------------------
class SizeSetup:
    """A private registry holding the synthetic path at one size."""

    def __init__(self, stack: ExitStack, work: Path, scale: float) -> None:
        self.scale = scale
        self.registry = stack.enter_context(PrivateRegistry())
        log(f"generating and pushing the synthetic path at size {scale:g}")
        t = time.perf_counter()
        self.path = dataset.push_path(self.registry.address, scale, work / f"gen-{scale:g}", log=log)
        log(f"size {scale:g}: {self.path.unique_raw_bytes / 1e6:.0f} MB raw, "
            f"{self.path.upstream_bytes / 1e6:.0f} MB upstream, pushed in {time.perf_counter() - t:.0f} s")

    def mirror_args(self) -> list[str]:
        return ["--mirror", f"docker.io={self.registry.address}"]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, online: PrivateEngine,
                 offline: dict[str, PrivateEngine]) -> None:
        self.args = args
        self.work = work
        self.online = online
        self.offline = offline
        self.sequence = int(time.time())
        self.errors: list[str] = []
        (work / "trust.d").mkdir(parents=True, exist_ok=True)
        self.tools_env = {
            "OVERLEAF_AIRGAP_STATE": str(work / "host-state.json"),     # never the machine's own state
            "OVERLEAF_AIRGAP_TRUST_DIR": str(work / "trust.d"),
            "OVERLEAF_AIRGAP_CATALOG_OVERLAY": str(work / "no-overlay.yaml"),
            "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x),
            # bytecode is written once, below, to a cache folder of the bench's own: an installed tool has it,
            # and with PYTHONDONTWRITEBYTECODE set every command would compile the checkout's sources again
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
        }
        subprocess.run([sys.executable, "-m", "compileall", "-q", "bundler", "importer", "manifests"], cwd=ROOT,
                       env=self._env(os.environ), check=True, stdout=subprocess.DEVNULL, timeout=300)
        self.key = work / "keys" / "bench.key"
        self.key.parent.mkdir(parents=True, exist_ok=True)
        measure([*BUNDLE, "keygen", "--out", str(self.key), "--no-passphrase"], self.build_env())
        self.pub = Path(str(self.key) + ".pub")
        self.proxies: dict[str, str] = {}          # store -> --dest-daemon-host for skopeo
        self.saves: dict[str, Path] = {}           # store -> that engine's own docker save archive
        self.save_seconds: dict[str, float] = {}

    def next_sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def _env(self, base: Mapping[str, str], **extra: str) -> dict[str, str]:
        env = {**base, **self.tools_env, **extra}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def build_env(self) -> dict[str, str]:
        env = self._env(os.environ, DOCKER_HOST=NO_ENGINE)
        env.pop("DOCKER_CONTEXT", None)
        return env

    def engine_env(self, store: str) -> dict[str, str]:
        return self._env(self.offline[store].env())

    # -- commands --
    def build(self, size: SizeSetup, out: Path, extra: Sequence[str] = (), plan_args: list[str] | None = None,
              wrap: list[str] | None = None) -> Measured:
        cmd = [*(wrap or []), *BUNDLE, "--json", "build", *(plan_args or dataset.PLAN_ARGS), "--key", str(self.key),
               "--out", str(out), *size.mirror_args(), "--no-importer", "--sequence", self.next_sequence(), *extra]
        return measure(cmd, self.build_env())

    def verify(self, store: str, bundle: Path, wrap: list[str] | None = None) -> Measured:
        return measure([*(wrap or []), *IMPORT, "--json", "verify", str(bundle), "--trust", str(self.pub)],
                       self.engine_env(store))

    def load(self, store: str, bundle: Path, wrap: list[str] | None = None) -> Measured:
        return measure([*(wrap or []), *IMPORT, "--json", "load", str(bundle), "--trust", str(self.pub)],
                       self.engine_env(store))

    def timed_verify(self, store: str, bundle: Path, engine: PrivateEngine | None, payload: int) -> dict[str, Any]:
        """One ``verify`` of ``bundle`` (``payload`` bytes) as a step record: wall and the command's own rate."""
        with CpuWatch(engine) as cw:
            m = self.verify(store, bundle)
        checked = (m.json().get("checked") or {}) if m.stdout.strip() else {}
        return step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=payload,
                           bytes_per_s=payload / m.seconds, tool_seconds=checked.get("seconds"),
                           tool_bytes_per_s=(checked["bytes"] / checked["seconds"]
                                             if checked.get("seconds") and checked.get("bytes") else None))

    def skopeo_calls(self, calls: list[list[str]]) -> tuple[float, float, int]:
        """Run skopeo calls one after the other: total wall time, total CPU, peak RSS."""
        seconds = cpu = 0.0
        rss = 0
        for args in calls:
            m = measure(["skopeo", "copy", "-q", *args], {**os.environ})
            seconds += m.seconds
            cpu += m.cpu_seconds
            rss = max(rss, m.max_rss_bytes)
        return seconds, cpu, rss

    def empty(self, store: str) -> None:
        clear_images(self.offline[store])
        settle()

    def check_ids(self, store: str, expected: dict[str, str]) -> None:
        got = image_ids(self.offline[store], list(expected))
        if got != expected:
            wrong = {r: (got[r], expected[r]) for r in expected if got[r] != expected[r]}
            raise StepFailed(f"after the load on the {store} store these tags are not the bundle's images "
                             f"(got, expected): {wrong}")

    def check_tags(self, store: str, refs: list[str]) -> None:
        missing = [r for r, i in image_ids(self.offline[store], refs).items() if i is None]
        if missing:
            raise StepFailed(f"missing on the {store} engine after the step: {missing}")

    def guarded(self, what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one offline step; a failure is recorded (and makes the benchmark exit 1) instead of ending it."""
        try:
            return fn()
        except (StepFailed, RuntimeError, docker.errors.DockerException, OSError, KeyError, ValueError) as exc:
            msg = f"{what}: {exc}".strip()
            log("FAILED " + msg)
            self.errors.append(msg[:2000])
            return {"error": msg[:500]}

    # -- set-up of the engines --
    def prepare_engines(self, size: SizeSetup, stack: ExitStack) -> None:
        log("online Engine 20.10: pulling the images from the registry (not timed)")
        pull_as(self.online, size.path, dataset.PLAN_IMAGES)
        c26 = self.offline["containerd"]
        log("Engine 26 (containerd store): pulling the images, then its own docker save (made once)")
        pull_as(c26, size.path, dataset.PLAN_IMAGES)
        self.saves["containerd"] = self.work / "save-containerd.tar"
        with CpuWatch(c26) as cw:
            m = measure(["docker", "save", "-o", str(self.saves["containerd"]), *dataset.PLAN_IMAGES], c26.env())
        self.save_seconds["containerd"] = m.seconds
        self.save26 = step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw,
                                  bytes=self.saves["containerd"].stat().st_size)
        self.empty("containerd")
        self.empty("classic")
        self.proxies["classic"] = self.offline["classic"].host
        proxy = stack.enter_context(ApiVersionProxy(c26.socket, self.work / "api-1.24.sock"))
        self.proxies["containerd"] = proxy.host

    # -- one run --
    def one_run(self, size: SizeSetup, index: int) -> dict[str, Any]:
        run_dir = self.work / f"run{index}"
        run_dir.mkdir()
        refs = dataset.PLAN_IMAGES
        res: dict[str, Any] = {"run": index, "online": {}, "offline": {}}
        on = res["online"]
        try:
            settle()
            log(f"run {index}: docker save of the seven images (online Engine 20.10)")
            archive = run_dir / "save-classic.tar"
            with CpuWatch(self.online) as cw:
                m = measure(["docker", "save", "-o", str(archive), *refs], self.online.env())
            on["save"] = step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=archive.stat().st_size)
            settle()

            layout = run_dir / "oci"
            bundle = run_dir / "bundle"

            def skopeo_step() -> None:
                log(f"run {index}: skopeo copy registry -> one OCI layout, one image per call")
                calls = [["--src-tls-verify=false", f"docker://{size.path.images[r].mirror_ref}", f"oci:{layout}:{r}"]
                         for r in refs]
                with CpuWatch(None) as cw:
                    s, cpu, rss = self.skopeo_calls(calls)
                on["skopeo"] = step_record(s, cpu, rss, cw, bytes=tree_size(layout), calls=len(calls))
                settle()

            def build_step() -> None:
                log(f"run {index}: overleaf-bundle build (no engine: DOCKER_HOST points nowhere)")
                with CpuWatch(None) as cw:
                    m = self.build(size, bundle)
                s = m.json()
                on["build"] = step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=s["bundle_bytes"],
                                          payload_bytes=s["payload_bytes"], upstream_bytes=s.get("upstream_bytes"),
                                          phases=s.get("seconds") or {}, parts=len(s["parts"]), blobs=s["blobs"])
                settle()

            # the two compared steps take turns going first (odd runs: skopeo), so that neither is always
            # the one that runs straight after docker save
            for step in ((skopeo_step, build_step) if index % 2 else (build_step, skopeo_step)):
                step()

            log(f"run {index}: overleaf-bundle build --recompress zstd")
            zbundle = run_dir / "bundle-zstd"

            def build_zstd() -> dict[str, Any]:
                with CpuWatch(None) as cw:
                    m = self.build(size, zbundle, ["--recompress", "zstd"])
                s = m.json()
                return step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=s["bundle_bytes"],
                                   payload_bytes=s["payload_bytes"], phases=s.get("seconds") or {})
            on["build_zstd"] = self.guarded(f"run {index}, build --recompress zstd", build_zstd)
            shutil.rmtree(zbundle, ignore_errors=True)

            self.saves["classic"] = archive
            for store in STORES:
                res["offline"][store] = self.offline_steps(store, bundle, layout, index)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        log(f"run {index}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in on.items() if "seconds" in v)
            + "; " + "; ".join(
            f"{st}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in steps.items() if "seconds" in v)
            for st, steps in res["offline"].items()))
        return res

    def offline_steps(self, store: str, bundle: Path, layout: Path, index: int) -> dict[str, Any]:
        engine = self.offline[store]
        refs = dataset.PLAN_IMAGES
        out: dict[str, Any] = {}

        def verify() -> dict[str, Any]:
            settle()
            return self.timed_verify(store, bundle, engine, _payload_bytes(bundle))

        def docker_load() -> dict[str, Any]:
            self.empty(store)
            with CpuWatch(engine) as cw:
                m = measure(["docker", "load", "-i", str(self.saves[store])], engine.env())
            self.check_tags(store, refs)
            return step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=self.saves[store].stat().st_size)

        def load() -> dict[str, Any]:
            self.empty(store)
            with CpuWatch(engine) as cw:
                m = self.load(store, bundle)
            self.check_ids(store, bundle_expected_ids(bundle, store))
            return step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw, bytes=_payload_bytes(bundle))

        def skopeo() -> dict[str, Any]:
            self.empty(store)
            calls = [[f"--dest-daemon-host={self.proxies[store]}", f"oci:{layout}:{r}", f"docker-daemon:{r}"]
                     for r in refs]
            with CpuWatch(engine) as cw:
                s, cpu, rss = self.skopeo_calls(calls)
            self.check_tags(store, refs)
            return step_record(s, cpu + cw.self_seconds, rss, cw, calls=len(calls),
                               proxy_cpu_seconds=cw.self_seconds if store == "containerd" else 0.0)

        for name, fn in (("verify", verify), ("docker_load", docker_load), ("load", load), ("skopeo", skopeo)):
            log(f"run {index}: {store} store: {name}")
            out[name] = self.guarded(f"run {index}, {store} store, {name}", fn)
        self.empty(store)
        return out

    # -- the delta --
    def delta(self, size: SizeSetup, store: str) -> dict[str, Any]:
        """A host on 6.2.1 writes a receipt; the 6.2.1 -> 6.2.2 bundle built --have it; its bytes; its loads."""
        d_dir = self.work / f"delta-{store}"
        d_dir.mkdir()
        engine = self.offline[store]
        try:
            log(f"delta ({store} store): putting 6.2.1 (and the MongoDB and Redis it runs) on the host")
            self.empty(store)
            pull_as(engine, size.path, dataset.DELTA_HOST_IMAGES)
            receipt = d_dir / "receipt.json"
            inv = measure([*IMPORT, "--json", "inventory", "--out", str(receipt)], self.engine_env(store))
            settle()
            log(f"delta ({store} store): overleaf-bundle build --have the receipt")
            bundle = d_dir / "bundle"
            with CpuWatch(None) as cw:
                b = self.build(size, bundle, ["--have", str(receipt)], plan_args=dataset.DELTA_PLAN_ARGS)
            s = b.json()
            build = step_record(b.seconds, b.cpu_seconds, b.max_rss_bytes, cw, bytes=s["bundle_bytes"],
                                payload_bytes=s["payload_bytes"], omitted_layers=s.get("omitted_layers"))
            have = {x.digest for ref in dataset.DELTA_HOST_IMAGES for x in size.path.images[ref].layers}
            new = size.path.images[dataset.DELTA_NEW_IMAGE].layers
            changed = [x for x in new if x.digest not in have]
            expected = bundle_expected_ids(bundle, store)
            loads = []
            for i in range(self.args.runs):
                settle()
                log(f"delta ({store} store): overleaf-import load of the delta, run {i + 1}")
                with CpuWatch(engine) as cw:
                    m = self.load(store, bundle)
                self.check_ids(store, expected)
                loads.append(step_record(m.seconds, m.cpu_seconds, m.max_rss_bytes, cw))
                engine.client().api.remove_image(dataset.DELTA_NEW_IMAGE, force=True)
            self.empty(store)
            return {"hop": "6.2.1 -> 6.2.2", "receipt_seconds": inv.seconds, "build": build, "loads": loads,
                    "load": summarize_steps(loads), "image_layers": len(new), "changed_layers": len(changed),
                    "changed_upstream_bytes": sum(x.size for x in changed),
                    "full_image_upstream_bytes": sum(x.size for x in new)}
        finally:
            shutil.rmtree(d_dir, ignore_errors=True)

    # -- peak memory at a second size --
    def memory_pass(self, size: SizeSetup) -> dict[str, Any]:
        out_dir = self.work / "mem"
        out_dir.mkdir()
        try:
            settle()
            log(f"memory pass at size {size.scale:g}: build")
            b = self.build(size, out_dir / "bundle")   # a failure here fails the whole pass (guarded by main)
            res: dict[str, Any] = {"scale": size.scale, "unique_raw_bytes": size.path.unique_raw_bytes,
                                   "build": b.max_rss_bytes, "build_seconds": b.seconds}
            for store in STORES:
                def one(store: str = store) -> dict[str, Any]:
                    self.empty(store)
                    log(f"memory pass at size {size.scale:g}: load ({store} store)")
                    m = self.load(store, out_dir / "bundle")
                    self.check_ids(store, bundle_expected_ids(out_dir / "bundle", store))
                    return {"rss": m.max_rss_bytes, "seconds": m.seconds}
                got = self.guarded(f"memory pass, {store} store, load", one)
                if "rss" in got:
                    res[f"load_{store}"] = got["rss"]
                    res[f"load_{store}_seconds"] = got["seconds"]
                self.empty(store)
            return res
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def big_verify(self, size: SizeSetup) -> dict[str, Any]:
        """``verify`` of one big bundle (the issue's "on big bundles"), ``--runs`` times: the fixed work
        (start-up, signature, plan checks) is a small part of it, as on a real site's multi-GB bundle."""
        out_dir = self.work / "big"
        out_dir.mkdir()
        try:
            settle()
            log(f"big verify at size {size.scale:g}: build (not timed)")
            self.build(size, out_dir / "bundle")
            payload = _payload_bytes(out_dir / "bundle")
            records = []
            for i in range(self.args.runs):
                settle()
                log(f"big verify at size {size.scale:g}: verify {i + 1} ({payload / 1e9:.2f} GB payload)")
                records.append(self.timed_verify("classic", out_dir / "bundle", None, payload))
            return {"scale": size.scale, "payload_bytes": payload, "records": records, **summarize_steps(records)}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    # -- profiles --
    def profile(self, size: SizeSetup) -> dict[str, Any]:
        """build, verify and load (both stores) once more under py-spy; the busiest functions of each."""
        from .profile import py_spy_wrap, summarize

        out_dir = self.work / "prof"
        out_dir.mkdir()
        profiles: dict[str, Any] = {}
        bundle = out_dir / "bundle"
        steps: list[tuple[str, Callable[[list[str]], Measured]]] = [
            ("build", lambda w: self.build(size, bundle, wrap=w)),
            ("build_zstd", lambda w: self.build(size, out_dir / "bundle-zstd", ["--recompress", "zstd"], wrap=w)),
            ("verify", lambda w: self.verify("classic", bundle, wrap=w)),
            *((f"load_{st}", lambda w, st=st: self.load(st, bundle, wrap=w)) for st in STORES)]
        try:
            for name, fn in steps:
                if name.startswith("load_"):
                    self.empty(name[5:])
                settle()
                log(f"profiling {name} with py-spy")
                raw = out_dir / f"{name}.txt"
                try:
                    m = fn(py_spy_wrap(raw))
                except (StepFailed, OSError) as exc:
                    profiles[name] = {"error": str(exc)[:500]}
                    continue
                profiles[name] = {"seconds_under_profiler": m.seconds, **summarize(raw)}
                if self.args.profile_dir:
                    dest = Path(self.args.profile_dir)
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(raw, dest / f"py-spy-{name}.txt")
            for st in STORES:
                self.empty(st)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return profiles


def _payload_bytes(bundle: Path) -> int:
    from manifests.bundle import BundleManifest

    return BundleManifest.from_bytes((bundle / "manifest.json").read_bytes()).payload_size


# --- summaries ------------------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize_steps(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (and min, max) of each number over the runs that did not fail; peak RSS is the maximum."""
    ok = [r for r in records if "seconds" in r]
    if not ok:
        return {"error": next((r["error"] for r in records if "error" in r), "no run")}
    out: dict[str, Any] = {"seconds": median([r["seconds"] for r in ok]), "min": min(r["seconds"] for r in ok),
                           "max": max(r["seconds"] for r in ok), "runs": len(ok)}
    for k in ("cpu_seconds", "engine_cpu_seconds", "machine_busy", "bytes", "payload_bytes", "bytes_per_s",
              "tool_seconds", "tool_bytes_per_s", "proxy_cpu_seconds", "others_busy"):
        vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = median(vals)
    out["max_rss_bytes"] = max(r["max_rss_bytes"] for r in ok)
    if any("phases" in r for r in ok):
        keys = {k for r in ok for k in r.get("phases", {})}
        out["phases"] = {k: median([r["phases"].get(k, 0.0) for r in ok]) for k in sorted(keys)}
    if len(ok) < len(records):
        out["failed_runs"] = len(records) - len(ok)
    return out


def _ratio(runs: list[dict[str, Any]], num: Callable[[dict], Any], den: Callable[[dict], Any]) -> float | None:
    vals = []
    for r in runs:
        try:
            a, b = num(r), den(r)
            vals.append(a["seconds"] / b["seconds"])
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return median(vals) if vals else None


def startup_seconds(times: int = 7) -> float:
    """Median wall time of ``overleaf-import verify`` of a folder that holds no bundle: interpreter start-up,
    the CLI's imports and option parsing, up to the first file a command reads (it exits 14 there).

    Not ``--help``: only help renders through rich, which no command that does work loads. Bytecode is
    written (to a cache folder of its own, ``PYTHONPYCACHEPREFIX``) by one untimed run first, as an installed
    tool has it: with ``PYTHONDONTWRITEBYTECODE`` set, every run would compile the checkout's sources again."""
    walls = []
    with tempfile.TemporaryDirectory(prefix="oa-startup-") as tmp:
        missing = str(Path(tmp) / "no-bundle-here")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for k in range(times + 1):
            t = time.perf_counter()
            res = subprocess.run([*IMPORT, "verify", missing], capture_output=True, cwd=ROOT, timeout=120, env=env)
            if k:
                walls.append(time.perf_counter() - t)
            if res.returncode != 14:   # it must have stopped at the missing manifest, not somewhere else
                raise RuntimeError(f"start-up probe: verify exited {res.returncode}: {res.stderr.decode()[-300:]}")
    return median(walls)


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    online = {step: summarize_steps([r["online"][step] for r in runs]) for step in runs[0]["online"]}
    offline = {store: {step: summarize_steps([r["offline"][store].get(step, {"error": "missing"}) for r in runs])
                       for step in ("verify", "docker_load", "load", "skopeo")}
               for store in runs[0]["offline"]}
    ratios: dict[str, Any] = {
        "build_vs_save": _ratio(runs, lambda r: r["online"]["build"], lambda r: r["online"]["save"]),
        "build_vs_skopeo": _ratio(runs, lambda r: r["online"]["build"], lambda r: r["online"]["skopeo"]),
        "build_zstd_vs_save": _ratio(runs, lambda r: r["online"]["build_zstd"], lambda r: r["online"]["save"]),
        "build_zstd_vs_build": _ratio(runs, lambda r: r["online"]["build_zstd"], lambda r: r["online"]["build"]),
    }
    for store in offline:
        ratios[f"load_vs_docker_load_{store}"] = _ratio(runs, lambda r, s=store: r["offline"][s]["load"],
                                                        lambda r, s=store: r["offline"][s]["docker_load"])
        ratios[f"load_vs_skopeo_{store}"] = _ratio(runs, lambda r, s=store: r["offline"][s]["load"],
                                                   lambda r, s=store: r["offline"][s]["skopeo"])
        ratios[f"skopeo_vs_docker_load_{store}"] = _ratio(runs, lambda r, s=store: r["offline"][s]["skopeo"],
                                                          lambda r, s=store: r["offline"][s]["docker_load"])
        v = offline[store]["verify"]
        ratios[f"verify_bytes_per_s_{store}"] = v.get("bytes_per_s")
    return {"online": online, "offline": offline, "ratios": ratios}


def command_line(args: argparse.Namespace) -> str:
    parts = ["python3 -m bench.run", f"--size {args.size:g}", f"--runs {args.runs}", f"--mem-size {args.mem_size:g}",
             f"--verify-size {args.verify_size:g}"]
    if args.profile:
        parts.append("--profile")
    if args.skip_delta:
        parts.append("--skip-delta")
    return " ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=0.75, help="scale of the synthetic path (1: about 2 GB raw)")
    p.add_argument("--runs", type=int, default=3, help="timed runs; medians are reported (default 3)")
    p.add_argument("--mem-size", type=float, default=None,
                   help="second size for the peak-memory comparison (default: half of --size; 0: skip)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON results file")
    p.add_argument("--md", type=Path, default=None, help="Markdown file (default: --out with .md)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the temporary files go (default: TMPDIR)")
    p.add_argument("--verify-size", type=float, default=2.0,
                   help="scale of the big bundle verify is timed on (default 2: about 2.6 GB of payload; 0: skip)")
    p.add_argument("--profile", action="store_true", help="also profile build, verify, load with py-spy")
    p.add_argument("--profile-dir", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    p.add_argument("--skip-delta", action="store_true", help="leave out the delta bundle")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (engines are stopped anyway)")
    p.add_argument("--pause", type=float, default=1.0, help=argparse.SUPPRESS)   # settle pause (tests: 0)
    p.add_argument("--render", type=Path, metavar="JSON", default=None,
                   help="measure nothing: print the table and write --md again from a results file")
    args = p.parse_args(argv)
    if args.size <= 0 or args.runs < 1:
        p.error("--size must be positive and --runs at least 1")
    if args.mem_size is None:
        args.mem_size = args.size / 2
    if args.md is None:
        args.md = (args.render or args.out).with_suffix(".md")
    if args.profile and shutil.which("py-spy") is None:
        p.error("--profile needs py-spy: pip install py-spy")
    return args


def _tools_missing() -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool in ("docker", "dockerd", "containerd", "docker-registry", "skopeo"):
        if shutil.which(tool, path=path) is None:
            return f"{tool} not found (bash tests/setup.sh installs what is needed)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        result["targets"] = evaluate_targets(result)
        args.md.write_text(markdown_snippet(result))
        print(text_table(result))
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (it starts private dockerd engines)", file=sys.stderr)
        return 2
    if problem := _tools_missing():
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    global SETTLE_PAUSE
    SETTLE_PAUSE = max(0.0, args.pause)
    work = Path(tempfile.mkdtemp(prefix="oa-bench-", dir=args.work_dir))
    started = time.perf_counter()
    result: dict[str, Any] = {"schema": 2, "command": command_line(args),
                              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "params": {"size": args.size, "runs": args.runs, "mem_size": args.mem_size,
                                         "verify_size": args.verify_size}}
    try:
        with ExitStack() as stack:
            log("starting the engines: online Engine 20.10, offline Engine 20.10 (classic) and Engine 26 (containerd)")
            online = stack.enter_context(PrivateEngine(name="bon"))
            offline = {"classic": stack.enter_context(PrivateEngine(name="bcl")),
                       "containerd": stack.enter_context(PrivateEngine(name="b26", store="containerd"))}
            result["machine"] = machine_info({"classic": offline["classic"], "containerd": offline["containerd"]})
            bench = Bench(args, work, online, offline)
            t = time.perf_counter()
            main_size = SizeSetup(stack, work, args.size)
            bench.prepare_engines(main_size, stack)
            result["setup_seconds"] = time.perf_counter() - t
            result["dataset"] = main_size.path.describe()
            result["save_containerd"] = bench.save26
            runs = [bench.one_run(main_size, i + 1) for i in range(args.runs)]
            result["runs"] = runs
            result.update(summarize_runs(runs))
            result["ratios"]["startup_seconds"] = startup_seconds()
            result["memory"] = {f"{args.size:g}": {
                "scale": args.size, "unique_raw_bytes": main_size.path.unique_raw_bytes,
                "build": result["online"]["build"].get("max_rss_bytes"),
                **{f"load_{st}": result["offline"][st]["load"].get("max_rss_bytes") for st in STORES}}}
            result["errors"] = bench.errors
            # the rest is guarded: a failure there is recorded, and what was measured is still written
            if not args.skip_delta:
                result["delta"] = {st: bench.guarded(f"delta, {st} store", lambda st=st: bench.delta(main_size, st))
                                   for st in STORES}
            if args.profile:
                result["profiles"] = bench.guarded("profiles", lambda: bench.profile(main_size))
            if args.verify_size:
                big = SizeSetup(stack, work, args.verify_size)
                result["big_verify"] = bench.guarded(f"big verify at size {args.verify_size:g}",
                                                     lambda: bench.big_verify(big))
            if args.mem_size:
                small = SizeSetup(stack, work, args.mem_size)
                mem = bench.guarded(f"memory pass at size {args.mem_size:g}", lambda: bench.memory_pass(small))
                if "error" not in mem:
                    result["memory"][f"{args.mem_size:g}"] = mem
        result["targets"] = evaluate_targets(result)
        result["total_seconds"] = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.md.write_text(markdown_snippet(result))
    print(text_table(result))
    print(f"\nJSON: {_display(args.out)}   Markdown: {_display(args.md)}   ({result['total_seconds'] / 60:.1f} min)")
    if result["errors"]:
        print(f"\n{len(result['errors'])} step(s) failed:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
