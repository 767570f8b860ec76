"""Benchmark: ``overleaf-bundle build`` and ``overleaf-import verify``/``load`` against ``docker save | gzip``
and plain ``docker save`` / ``docker load``, on one synthetic upgrade path, with targets.

Run it as root (it starts its own ``dockerd`` engines and registry, like the integration
tests; never the machine's engine), from the repository root::

    python3 -m bench.run [--size SCALE] [--runs 3] [--mem-size SCALE2] [--out bench/results.json]
                         [--md bench/results.md] [--work-dir DIR] [--profile] [--keep]
    python3 -m bench.run --render bench/results.json      # table and Markdown again, measuring nothing

``--size 1`` (the default) builds about 2.06 GB of unique raw image data: the seven images
of ``overleaf-bundle plan --from 4.2.8 --to 6.2.2 --mongo 5.0 --redis 6.2`` (see
bench/dataset.py: an app base shared by every Overleaf version, per-version app layers,
compressible text-like and incompressible layers, MongoDB and Redis). ``--size 0.25``
gives a quick run. On 2 cores, ``--size 1 --runs 3`` takes about 20 minutes and needs
about 15 GB of free disk under ``--work-dir`` (default: the system's temp folder).

Each run measures, side by side on the same images:

(a) naive: ``docker save IMAGE | gzip > IMAGE.tar.gz`` for each image, then ``sha256sum`` of the files
(b) one multi-image ``docker save -o images.tar IMAGES...``
(c) ``zstd -T0 -3`` of (b)
(d) ``overleaf-bundle build`` of the plan through the private registry (``--mirror``), ``--no-importer``
    (no wheels); every image was pulled beforehand, so the build's pull phase only checks manifests
    (reported apart, and left out of the build time that the targets use)
(e) ``docker load -i images.tar`` of (b) into an empty engine
(f) ``overleaf-import verify`` of (d)
(g) ``overleaf-import load`` of (d) into an empty engine (it verifies again before it streams)

then, once: (h) a delta bundle for the patch hop 6.2.1 -> 6.2.2, built ``--have`` the receipt that
``overleaf-import inventory`` wrote on a host holding 6.2.1 (and the MongoDB and Redis it runs), its
payload bytes against the zstd -3 size of the layers that actually changed (and it is verified and
loaded on that host); and a second, smaller size (``--mem-size``, default half of ``--size``; 0 skips
it) on which one build and one load are measured again, to show whether peak memory stays flat.

Peak resident memory is the ``ru_maxrss`` of our processes (``os.wait4``), not the engine's.
Timings are wall clock; every target is a ratio within one run (median over the runs) or an
absolute rate, and each is marked met or missed. Output: a table on stdout, a JSON file
(``--out``) and a Markdown snippet for the README (``--md``). Neither holds a path of this
machine. ``--profile`` (needs ``pip install py-spy``) runs (d), (f) and (g) once more under
``py-spy record`` and adds each one's busiest functions to the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from tests.support.engine import PrivateEngine, PrivateRegistry, mirror_reference, push_to_registry

from . import dataset
from .report import evaluate_targets, markdown_snippet, text_table

MB = 1_000_000
ROOT = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT = 3 * 3600


def _script(name: str, module: str) -> list[str]:
    """The installed console script of this interpreter, else the same entry point with -m."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


BUNDLE = _script("overleaf-bundle", "bundler.cli")
IMPORT = _script("overleaf-import", "importer.cli")


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


def measure(cmd: list[str], env: dict[str, str], *, cwd: Path | None = None, check: bool = True,
            timeout: float = TOOL_TIMEOUT) -> Measured:
    """Run ``cmd``; wall time, exit code, peak RSS and CPU time of the process tree (``os.wait4``)."""
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
        raise RuntimeError(f"command failed with exit code {m.rc}: {shlex.join(cmd)}\n"
                           f"--- stdout ---\n{m.stdout[-3000:]}\n--- stderr ---\n{m.stderr[-3000:]}")
    return m


def engine_cpu_seconds(engine: PrivateEngine) -> float:
    """CPU time of the engine's dockerd so far, with its waited-for children (e.g. the untar helper of a load)."""
    try:
        pid = int(engine.pidfile.read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs (/proc/stat): busy excludes idle and iowait."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuWatch:
    """Engine CPU seconds and the machine's busy share over one step (other work on the machine shows too)."""

    def __init__(self, engine: PrivateEngine) -> None:
        self.engine = engine

    def __enter__(self) -> "CpuWatch":
        self.e0 = engine_cpu_seconds(self.engine)
        self.m0 = machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = machine_cpu()
        self.engine_seconds = engine_cpu_seconds(self.engine) - self.e0
        self.machine_busy = (busy - self.m0[0]) / max(1, total - self.m0[1])

    def fields(self, m: "Measured") -> dict[str, float]:
        return {"cpu_seconds": m.cpu_seconds, "engine_cpu_seconds": self.engine_seconds,
                "machine_busy": self.machine_busy}


def settle() -> None:
    """Write dirty pages back before the next measurement, so one step's writes do not slow the next."""
    os.sync()
    time.sleep(1.0)


def file_size(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def clear_images(engine: PrivateEngine) -> None:
    """Remove every image from ``engine`` (loaded images have no parents, so one pass usually does)."""
    api = engine.client().api
    for _attempt in range(5):
        ids = api.images(all=True, quiet=True)
        if not ids:
            return
        for image in ids:
            try:
                api.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                continue  # a parent of another image: removed on a later pass
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


def transfer(src: PrivateEngine, dst: PrivateEngine, refs: list[str], work: Path) -> None:
    """Copy images between engines with docker save / docker load (set-up only, not measured)."""
    tar = work / "transfer.tar"
    measure(["docker", "save", "-o", str(tar), *refs], src.env())
    measure(["docker", "load", "-i", str(tar)], dst.env())
    tar.unlink()


def save_archive_layers(archive: Path) -> dict[str, Any]:
    """Read a ``docker save`` archive's index: per image its layer members, and each layer's size and member.

    Layer members of the classic store are named by v1 id; ``manifest.json`` lists them in the
    order of the config's ``rootfs.diff_ids``, which maps each member to its diff_id.
    """
    with tarfile.open(archive, mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.loads(tar.extractfile("manifest.json").read())
        layers: dict[str, dict[str, Any]] = {}
        images: dict[str, list[str]] = {}
        for entry in manifest:
            config = json.loads(tar.extractfile(entry["Config"]).read())
            diff_ids = config["rootfs"]["diff_ids"]
            for tag in entry.get("RepoTags") or ():
                images[tag] = diff_ids
            for member_name, diff_id in zip(entry["Layers"], diff_ids):
                member = members[member_name]
                while member.issym() or member.islnk():  # a shared layer appears once, then as a link
                    target = member.linkname if member.islnk() else os.path.normpath(
                        os.path.join(os.path.dirname(member.name), member.linkname))
                    member = members[target]
                layers[diff_id] = {"size": member.size, "member": member.name}
    return {"images": images, "layers": layers}


# --- the machine ----------------------------------------------------------------------------------
def machine_info(engine: PrivateEngine) -> dict[str, Any]:
    def first_line(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (proc.stdout or proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    mem = 0
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
    version = engine.client().version()
    info = engine.client().info()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "cpu_model": cpu,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "docker_engine": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "storage_driver": info.get("Driver"),
        "docker_cli": first_line(["docker", "version", "--format", "{{.Client.Version}}"]),
        "python": platform.python_version(),
        "gzip": first_line(["gzip", "--version"]),
        "zstd": "zstd " + (re.search(r"v[0-9.]+", first_line(["zstd", "--version"])) or ["?"])[0],
    }


# --- one size: engines, registry, images -------------------------------------------------------------
class Hosts:
    """An online engine with the synthetic path, a registry mirroring it, an offline engine, a signing key."""

    def __init__(self, stack: ExitStack, work: Path, scale: float, tools_env: dict[str, str]) -> None:
        self.work = work
        self.scale = scale
        self.tools_env = tools_env
        log(f"starting engines and registry for size {scale}")
        self.online = stack.enter_context(PrivateEngine(name="bon"))
        self.offline = stack.enter_context(PrivateEngine(name="boff"))
        self.registry = stack.enter_context(PrivateRegistry())
        started = time.perf_counter()
        log(f"building the synthetic path at size {scale}")
        self.path = dataset.build_path(self.online, scale, log=lambda m: log(m))
        log("pushing the plan's images into the registry, and pulling them through it (as the build will)")
        push_to_registry(self.online, self.registry, dataset.PLAN_IMAGES)
        api = self.online.client().api
        for ref in dataset.PLAN_IMAGES:
            repo, _, tag = mirror_reference(ref, self.registry.address).rpartition(":")
            for status in api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in status or "errorDetail" in status:
                    raise RuntimeError(f"pull of {repo}:{tag} failed: {status}")
        self.ids = image_ids(self.online, dataset.PLAN_IMAGES)
        self.key = work / "keys" / "bench.key"
        self.key.parent.mkdir(parents=True, exist_ok=True)
        measure([*BUNDLE, "keygen", "--out", str(self.key), "--no-passphrase"], self.env(self.online))
        self.pub = Path(str(self.key) + ".pub")
        self.setup_seconds = time.perf_counter() - started
        log(f"set-up done in {self.setup_seconds:.0f} s")

    def env(self, engine: PrivateEngine) -> dict[str, str]:
        return {**engine.env(), **self.tools_env}

    def mirror_args(self) -> list[str]:
        return ["--mirror", f"docker.io={self.registry.address}"]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.sequence = int(time.time())
        (work / "trust.d").mkdir(parents=True, exist_ok=True)
        self.tools_env = {
            "OVERLEAF_AIRGAP_STATE": str(work / "host-state.json"),     # never the machine's own state
            "OVERLEAF_AIRGAP_TRUST_DIR": str(work / "trust.d"),
            "OVERLEAF_AIRGAP_CATALOG_OVERLAY": str(work / "no-overlay.yaml"),
        }

    def next_sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    # -- the measured steps --
    def build(self, hosts: Hosts, out: Path, extra: list[str], plan_args: list[str] | None = None,
              wrap: list[str] | None = None) -> Measured:
        cmd = [*(wrap or []), *BUNDLE, "build", *(plan_args or dataset.PLAN_ARGS), "--key", str(hosts.key),
               "--out", str(out), *hosts.mirror_args(), "--no-importer", "--sequence", self.next_sequence(),
               "--json", *extra]
        return measure(cmd, hosts.env(hosts.online))

    def verify(self, hosts: Hosts, bundle: Path, wrap: list[str] | None = None) -> Measured:
        return measure([*(wrap or []), *IMPORT, "--json", "verify", str(bundle), "--trust", str(hosts.pub)],
                       hosts.env(hosts.offline))

    def load(self, hosts: Hosts, bundle: Path, wrap: list[str] | None = None) -> Measured:
        return measure([*(wrap or []), *IMPORT, "--json", "load", str(bundle), "--trust", str(hosts.pub)],
                       hosts.env(hosts.offline))

    def one_run(self, hosts: Hosts, index: int) -> dict[str, Any]:
        run_dir = self.work / f"run{index}"
        a_dir, b_dir, c_dir, d_dir = (run_dir / x for x in "abcd")
        for p in (a_dir, b_dir, c_dir, d_dir):
            p.mkdir(parents=True)
        refs = dataset.PLAN_IMAGES
        res: dict[str, Any] = {"run": index}
        try:
            settle()
            log(f"run {index}: (a) docker save | gzip per image, sha256sum")
            names = [ref.replace("/", "_").replace(":", "_") + ".tar.gz" for ref in refs]
            script = "set -eo pipefail\n" + "".join(
                f"docker save {shlex.quote(ref)} | gzip > {shlex.quote(name)}\n" for ref, name in zip(refs, names))
            script += "sha256sum " + " ".join(map(shlex.quote, names)) + " > SHA256SUMS\n"
            with CpuWatch(hosts.online) as cw:
                m = measure(["bash", "-c", script], hosts.online.env(), cwd=a_dir)
            res["a"] = {"seconds": m.seconds, "bytes": file_size(a_dir / n for n in names), "files": len(names),
                        **cw.fields(m)}
            shutil.rmtree(a_dir)
            settle()

            log(f"run {index}: (b) docker save of all images into one file")
            archive = b_dir / "images.tar"
            with CpuWatch(hosts.online) as cw:
                m = measure(["docker", "save", "-o", str(archive), *refs], hosts.online.env())
            res["b"] = {"seconds": m.seconds, "bytes": archive.stat().st_size, **cw.fields(m)}
            t = time.perf_counter()
            os.sync()
            res["b"]["sync_seconds"] = time.perf_counter() - t
            if index == 1:
                index_info = save_archive_layers(archive)
                hosts.path.set_sizes({d: v["size"] for d, v in index_info["layers"].items()})
            settle()

            log(f"run {index}: (c) zstd -T0 -3 of (b)")
            zst = c_dir / "images.tar.zst"
            with CpuWatch(hosts.online) as cw:
                m = measure(["zstd", "-T0", "-3", "-q", str(archive), "-o", str(zst)], hosts.online.env())
            res["c"] = {"seconds": m.seconds, "bytes": zst.stat().st_size, **cw.fields(m)}
            zst.unlink()
            settle()

            log(f"run {index}: (d) overleaf-bundle build")
            bundle = d_dir / "bundle"
            with CpuWatch(hosts.online) as cw:
                m = self.build(hosts, bundle, [])
            s = m.json()
            phases = s.get("seconds") or {}
            res["d"] = {"seconds": m.seconds, "seconds_excl_pull": m.seconds - phases.get("pull", 0.0),
                        "phases": phases, "payload_bytes": s["payload_bytes"], "bundle_bytes": s["bundle_bytes"],
                        "raw_bytes": s["raw_bytes"], "docker_save_bytes": s["docker_save_bytes"],
                        "parts": len(s["parts"]), "blobs": s["blobs"], "max_rss_bytes": m.max_rss_bytes,
                        **cw.fields(m)}
            settle()

            log(f"run {index}: (e) docker load of (b) into an empty engine")
            clear_images(hosts.offline)
            settle()
            with CpuWatch(hosts.offline) as cw:
                m = measure(["docker", "load", "-i", str(archive)], hosts.offline.env())
            self._check_loaded(hosts)
            res["e"] = {"seconds": m.seconds, "bytes": res["b"]["bytes"], **cw.fields(m)}
            archive.unlink()
            clear_images(hosts.offline)
            settle()

            log(f"run {index}: (f) overleaf-import verify")
            with CpuWatch(hosts.offline) as cw:
                m = self.verify(hosts, bundle)
            checked = m.json()["checked"]
            res["f"] = {"seconds": m.seconds, "bytes": checked["bytes"], "tool_seconds": checked["seconds"],
                        "tool_mb_per_s": checked["mb_per_s"], "max_rss_bytes": m.max_rss_bytes, **cw.fields(m)}
            settle()

            log(f"run {index}: (g) overleaf-import load into an empty engine")
            with CpuWatch(hosts.offline) as cw:
                m = self.load(hosts, bundle)
            self._check_loaded(hosts)
            res["g"] = {"seconds": m.seconds, "tool_load_seconds": m.json()["load"]["seconds"],
                        "sent_bytes": m.json()["load"]["send_bytes"], "max_rss_bytes": m.max_rss_bytes,
                        **cw.fields(m)}
            clear_images(hosts.offline)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        log(f"run {index}: " + ", ".join(f"({k}) {v['seconds']:.1f} s" for k, v in res.items() if k != "run"))
        return res

    def _check_loaded(self, hosts: Hosts) -> None:
        got = image_ids(hosts.offline, dataset.PLAN_IMAGES)
        if got != hosts.ids:
            raise RuntimeError(f"the offline engine does not hold the online images after the load: {got}")

    def delta(self, hosts: Hosts) -> dict[str, Any]:
        """(h): a host on 6.2.1 writes a receipt; the patch hop's bundle built --have it; its bytes, and its load."""
        d_dir = self.work / "delta"
        d_dir.mkdir()
        try:
            log("(h) delta: putting 6.2.1 (and the MongoDB and Redis it runs) on the offline host")
            clear_images(hosts.offline)
            transfer(hosts.online, hosts.offline, dataset.DELTA_HOST_IMAGES, d_dir)
            receipt = d_dir / "receipt.json"
            inv = measure([*IMPORT, "--json", "inventory", "--out", str(receipt)], hosts.env(hosts.offline))
            settle()
            log("(h) delta: overleaf-bundle build --have the receipt")
            bundle = d_dir / "bundle"
            m = self.build(hosts, bundle, ["--have", str(receipt)], plan_args=dataset.DELTA_PLAN_ARGS)
            s = m.json()

            # the layers that actually changed: 6.2.2's layers whose chain the host lacks
            new = hosts.path.image_layers[dataset.DELTA_NEW_IMAGE]
            host_chains = {tuple(layers[:k + 1]) for ref in dataset.DELTA_HOST_IMAGES
                           for layers in [hosts.path.image_layers[ref]] for k in range(len(layers))}
            changed = [d for k, d in enumerate(new) if tuple(new[:k + 1]) not in host_chains]
            archive = d_dir / "new.tar"
            measure(["docker", "save", "-o", str(archive), dataset.DELTA_NEW_IMAGE], hosts.online.env())
            index = save_archive_layers(archive)
            raw = zstd_size = gzip_size = 0
            with tarfile.open(archive, mode="r:") as tar:
                for diff_id in changed:
                    layer = d_dir / "layer.tar"
                    with tar.extractfile(index["layers"][diff_id]["member"]) as src, open(layer, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1024 * 1024)
                    raw += layer.stat().st_size
                    measure(["zstd", "-T0", "-3", "-q", "-f", str(layer), "-o", str(layer) + ".zst"], os.environ.copy())
                    measure(["bash", "-c", f"gzip -c {shlex.quote(str(layer))} > {shlex.quote(str(layer))}.gz"],
                            os.environ.copy())
                    zstd_size += Path(str(layer) + ".zst").stat().st_size
                    gzip_size += Path(str(layer) + ".gz").stat().st_size
            settle()
            log("(h) delta: overleaf-import load of the delta on the 6.2.1 host")
            ld = self.load(hosts, bundle)
            loaded = image_ids(hosts.offline, [dataset.DELTA_NEW_IMAGE])[dataset.DELTA_NEW_IMAGE]
            if loaded != hosts.ids[dataset.DELTA_NEW_IMAGE]:
                raise RuntimeError(f"the delta load gave {loaded}, not {hosts.ids[dataset.DELTA_NEW_IMAGE]}")
            clear_images(hosts.offline)
            return {
                "hop": "6.2.1 -> 6.2.2", "receipt_seconds": inv.seconds,
                "build_seconds": m.seconds, "payload_bytes": s["payload_bytes"], "bundle_bytes": s["bundle_bytes"],
                "omitted_layers": s["omitted_layers"], "image_layers": len(new), "changed_layers": len(changed),
                "changed_raw_bytes": raw, "changed_zstd3_bytes": zstd_size, "changed_gzip_bytes": gzip_size,
                "full_image_save_bytes": archive.stat().st_size,
                "load_seconds": ld.seconds, "load_sent_bytes": ld.json()["load"]["send_bytes"],
                "load_max_rss_bytes": ld.max_rss_bytes,
            }
        finally:
            shutil.rmtree(d_dir, ignore_errors=True)

    def memory_pass(self, hosts: Hosts) -> dict[str, Any]:
        """One build and one load at this size: peak RSS (and times, for information)."""
        out_dir = self.work / "mem"
        out_dir.mkdir()
        try:
            settle()
            log(f"memory pass at size {hosts.scale}: build")
            b = self.build(hosts, out_dir / "bundle", [])
            s = b.json()
            clear_images(hosts.offline)
            settle()
            log(f"memory pass at size {hosts.scale}: load")
            ld = self.load(hosts, out_dir / "bundle")
            self._check_loaded(hosts)
            clear_images(hosts.offline)
            return {"scale": hosts.scale, "unique_raw_bytes": s["raw_bytes"], "payload_bytes": s["payload_bytes"],
                    "build": {"seconds": b.seconds, "max_rss_bytes": b.max_rss_bytes},
                    "load": {"seconds": ld.seconds, "max_rss_bytes": ld.max_rss_bytes}}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def profile(self, hosts: Hosts) -> dict[str, Any]:
        """(d), (f), (g) once more under py-spy; the busiest functions of each (own samples, by thread)."""
        from .profile import py_spy_wrap, summarize

        out_dir = self.work / "prof"
        out_dir.mkdir()
        profiles: dict[str, Any] = {}
        try:
            bundle = out_dir / "bundle"
            for name, fn in (("build", lambda w: self.build(hosts, bundle, [], wrap=w)),
                             ("verify", lambda w: self.verify(hosts, bundle, wrap=w)),
                             ("load", lambda w: self.load(hosts, bundle, wrap=w))):
                if name == "load":
                    clear_images(hosts.offline)
                settle()
                log(f"profiling {name} with py-spy")
                raw = out_dir / f"{name}.txt"
                m = fn(py_spy_wrap(raw))
                profiles[name] = {"seconds_under_profiler": m.seconds, **summarize(raw)}
                if self.args.profile_dir:
                    dest = Path(self.args.profile_dir)
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(raw, dest / f"py-spy-{name}.txt")
            clear_images(hosts.offline)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return profiles


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every step's time and of the per-run ratios the targets use."""
    def col(step: str, key: str = "seconds") -> list[float]:
        return [r[step][key] for r in runs]

    med = {step: {"seconds": median(col(step)), "min": min(col(step)), "max": max(col(step)),
                  **{k: median(col(step, k)) for k in ("cpu_seconds", "engine_cpu_seconds", "machine_busy")
                     if all(k in r[step] for r in runs)}}
           for step in "abcdefg"}
    med["d"]["seconds_excl_pull"] = median(col("d", "seconds_excl_pull"))
    med["d"]["phases"] = {k: median([r["d"]["phases"].get(k, 0.0) for r in runs])
                          for k in runs[0]["d"]["phases"]}
    med["f_plus_g"] = {"seconds": median([r["f"]["seconds"] + r["g"]["seconds"] for r in runs])}
    ratios = {
        "build_vs_save": median([r["d"]["seconds_excl_pull"] / r["b"]["seconds"] for r in runs]),
        "build_wall_vs_save": median([r["d"]["seconds"] / r["b"]["seconds"] for r in runs]),
        "build_vs_naive": median([r["d"]["seconds_excl_pull"] / r["a"]["seconds"] for r in runs]),
        "bytes_vs_naive": median([r["d"]["payload_bytes"] / r["a"]["bytes"] for r in runs]),
        "bytes_vs_zstd": median([r["d"]["payload_bytes"] / r["c"]["bytes"] for r in runs]),
        "verify_bytes_per_s": median([r["f"]["bytes"] / r["f"]["seconds"] for r in runs]),
        "verify_load_vs_docker_load": median([(r["f"]["seconds"] + r["g"]["seconds"]) / r["e"]["seconds"]
                                              for r in runs]),
        "load_vs_docker_load": median([r["g"]["seconds"] / r["e"]["seconds"] for r in runs]),
    }
    last = runs[-1]
    sizes = {"a": last["a"]["bytes"], "b": last["b"]["bytes"], "c": last["c"]["bytes"],
             "payload": last["d"]["payload_bytes"], "bundle": last["d"]["bundle_bytes"]}
    rss = {"build": max(r["d"]["max_rss_bytes"] for r in runs), "verify": max(r["f"]["max_rss_bytes"] for r in runs),
           "load": max(r["g"]["max_rss_bytes"] for r in runs)}
    return {"medians": med, "ratios": ratios, "bytes": sizes, "max_rss_bytes": rss}


def command_line(args: argparse.Namespace) -> str:
    parts = ["python3 -m bench.run", f"--size {args.size:g}", f"--runs {args.runs}"]
    if args.mem_size is not None:
        parts.append(f"--mem-size {args.mem_size:g}")
    if args.profile:
        parts.append("--profile")
    return " ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=1.0, help="scale of the synthetic path (1: about 2 GB raw)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of (a)-(g); medians are reported (default 3)")
    p.add_argument("--mem-size", type=float, default=None,
                   help="second size for the memory comparison (default: half of --size; 0: skip)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON results file")
    p.add_argument("--md", type=Path, default=None, help="Markdown snippet file (default: --out with .md)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the temporary files go (default: TMPDIR)")
    p.add_argument("--profile", action="store_true", help="also profile build, verify, load with py-spy")
    p.add_argument("--profile-dir", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    p.add_argument("--skip-delta", action="store_true", help="leave out (h), the delta bundle")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (engines are stopped anyway)")
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
    for tool in ("docker", "gzip", "zstd", "sha256sum", "dockerd", "docker-registry"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            print(f"bench: {tool} not found (bash tests/setup.sh installs what is needed)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="oa-bench-", dir=args.work_dir))
    started = time.perf_counter()
    result: dict[str, Any] = {"schema": 1, "command": command_line(args),
                              "params": {"size": args.size, "runs": args.runs, "mem_size": args.mem_size}}
    bench = Bench(args, work)
    try:
        with ExitStack() as stack:
            hosts = Hosts(stack, work, args.size, bench.tools_env)
            result["machine"] = machine_info(hosts.online)
            result["setup_seconds"] = hosts.setup_seconds
            runs = [bench.one_run(hosts, i + 1) for i in range(args.runs)]
            result["dataset"] = hosts.path.describe()
            result["runs"] = runs
            result.update(summarize_runs(runs))
            if not args.skip_delta:
                result["delta"] = bench.delta(hosts)
            if args.profile:
                result["profiles"] = bench.profile(hosts)
        result["memory"] = {f"{args.size:g}": {"build": result["max_rss_bytes"]["build"],
                                               "load": result["max_rss_bytes"]["load"],
                                               "unique_raw_bytes": result["dataset"]["unique_raw_bytes"]}}
        if args.mem_size:
            with ExitStack() as stack:
                small = Hosts(stack, work / "mem-size", args.mem_size, bench.tools_env)
                mp = bench.memory_pass(small)
            result["memory"][f"{args.mem_size:g}"] = {"build": mp["build"]["max_rss_bytes"],
                                                      "load": mp["load"]["max_rss_bytes"],
                                                      "unique_raw_bytes": mp["unique_raw_bytes"],
                                                      "build_seconds": mp["build"]["seconds"],
                                                      "load_seconds": mp["load"]["seconds"]}
        result["targets"] = evaluate_targets(result)
        result["total_seconds"] = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown_snippet(result)
    args.md.write_text(md)
    print(text_table(result))
    print(f"\nJSON: {_display(args.out)}   Markdown: {_display(args.md)}")
    return 0


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
