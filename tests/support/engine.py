"""Real Docker engines, a real registry and synthetic images, for tests, demos and benchmarks.

Nothing here is mocked: it starts the machine's own ``dockerd`` (Debian
``docker.io``, Engine 20.10) and ``docker-registry`` (Distribution 2.8) as root,
and builds images offline from a static busybox (Debian ``busybox-static``).

- :class:`PrivateEngine`: a throw-away ``dockerd`` with its own data root, exec
  root, socket and pidfile, so that several run side by side (an "online" and
  an "offline" host) without touching the machine's own engine.
- :class:`PrivateRegistry`: a throw-away registry on loopback.
- :func:`build_image`: a small image, ``FROM`` a shared busybox base, with
  files and optional big data layers (:class:`DataLayer`).
- :func:`seed_overleaf_images`: stand-ins named like the real Overleaf, mongo,
  redis, nginx and TeX Live images.
- :func:`push_to_registry`: pushes images into the registry under mirror names
  (``mongo:8.0`` -> ``127.0.0.1:PORT/library/mongo:8.0``).

Example::

    from tests.support.engine import (
        PrivateEngine, PrivateRegistry, push_to_registry, seed_overleaf_images)

    with PrivateEngine(name="online") as engine, PrivateRegistry() as registry:
        refs = seed_overleaf_images(engine, ["5.5.4"], mongo=["6.0"], redis=["7.4"])
        push_to_registry(engine, registry, refs)
        print(engine.host, registry.address, registry.tags("library/mongo"))
"""

from __future__ import annotations

import atexit
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import yaml
from docker.models.images import Image

MiB = 1024 * 1024
BASE_IMAGE = "airgap-test/base:1"
"""Shared base of every synthetic image: a static busybox with its applets and ``run-forever``."""

FileContent = bytes | str
"""Content of a file put into an image; content starting with ``#!`` or an ELF header is made executable."""

_MTIME = 1_700_000_000  # fixed mtime of the files in a build context, so that rebuilds hit the cache
_SBIN_PATH = ":/usr/local/sbin:/usr/sbin:/sbin"


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _short_tempdir(prefix: str) -> Path:
    """A new directory with a short path: unix socket paths must stay under ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix=f"oa-{prefix}-", dir="/tmp"))


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_processes_under(directory: Path) -> None:
    """SIGKILL processes whose command line names ``directory`` (a killed dockerd's containerd and shims)."""
    needle = os.fsencode(directory) + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _delete_containers(exec_root: Path) -> None:
    """Kill and delete the containers that a killed dockerd left running (runc state under its exec root)."""
    runc = shutil.which("runc", path=os.environ.get("PATH", "") + _SBIN_PATH)
    for state in exec_root.glob("runtime-runc/*") if runc else ():
        listing = subprocess.run([runc, "--root", str(state), "list", "-q"], capture_output=True, text=True)
        for container in listing.stdout.split():
            subprocess.run([runc, "--root", str(state), "delete", "--force", container], capture_output=True)


def _unmount_under(directory: Path) -> None:
    """Unmount every mount point at or below ``directory``, deepest first."""
    root = os.fsdecode(directory)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


class PrivateEngine:
    """A throw-away ``dockerd`` with its own data root, exec root, socket and pidfile.

    ``with PrivateEngine(name="offline") as engine: engine.client().images.list()``

    Everything lives in one short directory (``/tmp/oa-NAME-XXXX`` unless
    ``base_dir`` is given): ``data/`` (data root), ``exec/`` (exec root),
    ``docker.sock``, ``pid``, ``daemon.json`` (empty, so that the machine's
    ``/etc/docker/daemon.json`` is not read) and ``dockerd.log``. Each engine
    also gets its own containerd namespaces, in case dockerd attaches to a
    system containerd instead of starting its own. ``stop()`` removes the
    directory unless ``keep=True``. Needs root.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "engine",
        keep: bool = False,
        storage_driver: str | None = "overlay2",
    ) -> None:
        self.name = name
        self.keep = keep
        self.storage_driver = storage_driver
        self.dir = Path(base_dir) if base_dir is not None else _short_tempdir(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "pid"
        self.log_path = self.dir / "dockerd.log"
        self.host = f"unix://{self.socket}"
        if len(os.fsencode(self.socket)) >= 100:
            raise ValueError(f"socket path too long for a unix socket (max ~100 bytes): {self.socket}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: dict[int, docker.DockerClient] = {}

    def __repr__(self) -> str:
        return f"PrivateEngine(name={self.name!r}, host={self.host!r})"

    def __enter__(self) -> PrivateEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> PrivateEngine:
        """Start dockerd and wait until its API answers; RuntimeError (with the log's tail) if it does not."""
        if self._proc is not None:
            return self
        dockerd = shutil.which("dockerd", path=os.environ.get("PATH", "") + _SBIN_PATH)
        if dockerd is None:
            raise RuntimeError("dockerd not found: install the engine with `apt-get install docker.io` (as root)")
        if os.geteuid() != 0:
            raise RuntimeError("a private dockerd needs root: run the tests as root")
        config = self.dir / "daemon.json"
        config.write_text("{}\n")
        namespace = "oa" + re.sub(r"[^a-z0-9]", "", self.dir.name.lower())
        args = [
            dockerd,
            "--config-file", str(config),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "-H", self.host,
            "--pidfile", str(self.pidfile),
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--containerd-namespace", namespace,
            "--containerd-plugins-namespace", namespace + "-plugins",
        ]  # fmt: skip
        if self.storage_driver:
            args += ["--storage-driver", self.storage_driver]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            problem = None
            if self._proc.poll() is not None:
                problem = f"dockerd exited with code {self._proc.returncode}"
            elif time.monotonic() > deadline:
                problem = f"dockerd did not answer within {timeout:.0f}s"
            elif self.socket.exists():
                try:
                    with docker.APIClient(base_url=self.host, version="auto", timeout=5):
                        return self
                except docker.errors.DockerException:
                    pass
            if problem:
                message = f"private engine {self.name!r} failed to start: {problem}\n--- {self.log_path} (tail) ---\n"
                message += _log_tail(self.log_path)
                self.stop()
                raise RuntimeError(message)
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """``os.environ`` pointing the docker CLI (and docker-py's ``from_env``) at this engine."""
        env = dict(os.environ)
        for key in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(key, None)
        env["DOCKER_HOST"] = self.host
        env["DOCKER_BUILDKIT"] = "0"  # the legacy builder builds offline; BuildKit on 20.10 is not set up here
        return env

    def client(self, timeout: int = 600) -> docker.DockerClient:
        """A docker-py client for this engine (API version negotiated; one per timeout, closed by ``stop()``)."""
        if timeout not in self._clients:
            self._clients[timeout] = docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)
        return self._clients[timeout]

    def stop(self) -> None:
        """Stop dockerd (SIGTERM, then SIGKILL), unmount what it left, remove the directory unless ``keep``."""
        atexit.unregister(self.stop)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        proc, self._proc = self._proc, None
        _stop_process(proc, timeout=30)
        if proc is not None and proc.returncode == -signal.SIGKILL:  # nobody shut its containers down
            _delete_containers(self.exec_root)
            _kill_processes_under(self.dir)
            time.sleep(0.5)
        if self.dir.exists():
            _unmount_under(self.dir)
            if not self.keep:
                shutil.rmtree(self.dir)


class PrivateRegistry:
    """A throw-away Distribution registry (Debian ``docker-registry``) on ``127.0.0.1:<free port>``.

    ``with PrivateRegistry() as registry: push_to_registry(engine, registry, ["mongo:8.0"])``

    Plain HTTP on loopback, which dockerd trusts as an insecure registry by
    default; deletes are enabled. Storage, config and log live in one
    directory, removed by ``stop()`` unless ``keep=True``.
    """

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, *, keep: bool = False) -> None:
        self.keep = keep
        self.dir = Path(base_dir) if base_dir is not None else _short_tempdir("registry")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "storage"
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PrivateRegistry(address={self.address!r})"

    def __enter__(self) -> PrivateRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references pushed here."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30.0) -> PrivateRegistry:
        """Start the registry on a free port and wait until ``GET /v2/`` answers."""
        if self._proc is not None:
            return self
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry not found: install it with `apt-get install docker-registry`")
        for _attempt in range(3):  # another process may grab the free port before the registry binds it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            config = {
                "version": "0.1",
                "log": {"level": "info", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.root)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": self.address, "secret": secrets.token_hex(16)},
            }
            self.config_path.write_text(yaml.safe_dump(config))
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            atexit.register(self.stop)
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.url + "/v2/", timeout=2) as answer:
                        if answer.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.1)
            if self._proc.poll() is None or "address already in use" not in _log_tail(self.log_path):
                break
        tail = _log_tail(self.log_path)
        self.stop()
        raise RuntimeError(f"registry did not start on {self.address}\n--- {self.log_path} (tail) ---\n{tail}")

    def tags(self, repository: str) -> list[str]:
        """Tags of ``repository`` (e.g. ``library/mongo``) from ``/v2/<repository>/tags/list``."""
        with urllib.request.urlopen(f"{self.url}/v2/{repository}/tags/list", timeout=10) as answer:
            return sorted(json.load(answer).get("tags") or [])

    def stop(self) -> None:
        """Stop the registry and remove its directory unless ``keep``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        _stop_process(proc, timeout=10)
        if not self.keep and self.dir.exists():
            shutil.rmtree(self.dir)


# --- synthetic images -------------------------------------------------------------------------

_VOCAB: tuple[bytes, ...] = tuple(
    "".join(random.Random(i).choices("etaoinshrdlucmfwypvbgkqjxz", k=3 + i % 8)).encode()
    + (b"\n" if i % 9 == 0 else b" ")
    for i in range(256)
)  # 256 words of 4-11 bytes with their separator: one random byte picks one word


@dataclass(frozen=True)
class DataLayer:
    """A big file of deterministic filler, added to an image as a layer of its own (for benchmarks).

    ``kind="random"`` gives incompressible bytes; ``kind="text"`` gives
    text-like words that zstd or gzip shrink several times. The same
    ``(path, size, kind, seed)`` always gives the same bytes, e.g.
    ``DataLayer("/opt/blob", 200 * MiB, "random", seed=1)``.
    """

    path: str
    size: int
    kind: Literal["random", "text"] = "random"
    seed: int = 0

    def chunks(self) -> Iterator[bytes]:
        """The file's content, in blocks of 1 MiB (the last one shorter)."""
        if self.kind not in ("random", "text"):
            raise ValueError(f"unknown DataLayer kind {self.kind!r}")
        rng = random.Random(f"{self.seed}:{self.kind}:{self.path}")
        left = self.size
        while left > 0:
            n = min(MiB, left)
            if self.kind == "random":
                yield rng.randbytes(n)
            else:  # words average 7.5 bytes: draw a little less than enough, then top up
                block = b""
                while len(block) < n:
                    block += b"".join(map(_VOCAB.__getitem__, rng.randbytes((n - len(block)) // 8 + 64)))
                yield block[:n]
            left -= n


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, so that ``tarfile`` streams generated data."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._view:
            self._view = memoryview(next(self._chunks, b""))
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (statically linked)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        end = "<" if head[5] == 1 else ">"
        if head[4] == 2:  # 64-bit
            (phoff,) = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def find_static_busybox() -> Path:
    """The machine's statically linked busybox (Debian ``busybox-static`` installs ``/bin/busybox``)."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    found = shutil.which("busybox")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise RuntimeError("no statically linked busybox found: install it with `apt-get install busybox-static`")


_RUN_FOREVER = """#!/bin/sh
# run-forever [COMMAND...]: run COMMAND (default: idle) and exit 0 at once on SIGTERM or SIGINT,
# so that `docker stop` is quick even when this script is PID 1.
trap 'exit 0' TERM INT
[ $# -gt 0 ] || set -- sleep 2147483647
"$@" &
wait $!
"""


def _client(target: PrivateEngine | docker.DockerClient) -> docker.DockerClient:
    return target.client() if isinstance(target, PrivateEngine) else target


def _add_file(tar: tarfile.TarFile, name: str, content: FileContent | DataLayer) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = _MTIME
    if isinstance(content, DataLayer):
        info.size, info.mode = content.size, 0o644
        tar.addfile(info, _ChunkReader(content.chunks()))
        return
    data = content.encode() if isinstance(content, str) else content
    info.size, info.mode = len(data), 0o755 if data.startswith((b"#!", b"\x7fELF")) else 0o644
    tar.addfile(info, io.BytesIO(data))


def _build(
    client: docker.DockerClient,
    tag: str,
    dockerfile: list[str],
    context: Mapping[str, FileContent | DataLayer],
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Build ``tag`` with the legacy builder from a tar context streamed from a temporary file."""
    with tempfile.TemporaryFile() as tar_file:
        with tarfile.open(fileobj=tar_file, mode="w") as tar:
            _add_file(tar, "Dockerfile", "\n".join(dockerfile) + "\n")
            for name, content in context.items():
                _add_file(tar, name, content)
        tar_file.seek(0)
        image, _log = client.images.build(
            fileobj=tar_file, custom_context=True, tag=tag, rm=True, forcerm=True,
            pull=False, network_mode="none", labels=dict(labels or {}),
        )  # fmt: skip
    return image


def ensure_base_image(target: PrivateEngine | docker.DockerClient) -> Image:
    """Build :data:`BASE_IMAGE` on this engine unless it is there already.

    ``FROM scratch``, a static busybox with its applets linked into ``/bin``,
    ``/tmp``, and ``/usr/local/bin/run-forever`` (see :func:`build_image`).
    """
    client = _client(target)
    try:
        return client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    dockerfile = [
        "FROM scratch",
        "COPY busybox /bin/busybox",
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp"]',
        "COPY files/ /",
    ]
    context = {"busybox": find_static_busybox().read_bytes(), "files/usr/local/bin/run-forever": _RUN_FOREVER}
    return _build(client, BASE_IMAGE, dockerfile, context)


def build_image(
    target: PrivateEngine | docker.DockerClient,
    tag: str,
    files: Mapping[str, FileContent] | None = None,
    *,
    extra_layers: Sequence[Mapping[str, FileContent]] = (),
    data: Sequence[DataLayer] = (),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    base: str = BASE_IMAGE,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Build a synthetic image offline and tag it ``tag``; return the docker-py ``Image``.

    Layers, in order: ``files`` (one layer), each mapping of ``extra_layers``
    (one layer each), each :class:`DataLayer` of ``data`` (one layer each).
    Keys are absolute paths in the image; content starting with ``#!`` (or an
    ELF header) gets mode 0755, the rest 0644. ``base`` is :data:`BASE_IMAGE` (built on demand,
    so images share its layers), another local image (never pulled), or
    ``"scratch"``. Images from the base can run ``sh``, ``sleep``, ``httpd``
    and ``run-forever CMD...`` (which makes ``docker stop`` quick).
    """
    client = _client(target)
    if base == BASE_IMAGE:
        ensure_base_image(client)
    dockerfile = [f"FROM {base}"]
    context: dict[str, FileContent | DataLayer] = {}
    for i, layer in enumerate([files or {}, *extra_layers]):
        if layer:
            dockerfile.append(f"COPY layer{i}/ /")
            context.update({f"layer{i}/{path.lstrip('/')}": content for path, content in layer.items()})
    for i, blob in enumerate(data):
        dockerfile.append(f"COPY data{i}/ /")
        context[f"data{i}/{blob.path.lstrip('/')}"] = blob
    if entrypoint is not None:
        dockerfile.append(f"ENTRYPOINT {json.dumps(list(entrypoint))}")
    if cmd is not None:
        dockerfile.append(f"CMD {json.dumps(list(cmd))}")
    return _build(client, tag, dockerfile, context, labels)


# --- stand-ins for the images an Overleaf host runs --------------------------------------------

APP_BASE_IMAGE = "airgap-test/overleaf-app-base:1"
MONGO_BASE_IMAGE = "airgap-test/mongo-base:1"
REDIS_BASE_IMAGE = "airgap-test/redis-base:1"
MONGO_MAJORS = ("3.6", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0")
"""Mongo's upgrade path, one major at a time: mongod X starts on data whose FCV is X or the one before."""

_APP_BASE_FILES: dict[str, FileContent] = {
    "/overleaf/README": "Stand-in for the Overleaf application image (tests only).\n" * 64,
    "/var/www/index.html": "<html><body>Overleaf stand-in</body></html>\n",
    "/var/www/status": "ok\n",
}
_APP_CMD = ["run-forever", "httpd", "-f", "-p", "80", "-h", "/var/www"]

_MONGO_ENTRYPOINT = """#!/bin/sh
# Stand-in for the mongo image's docker-entrypoint.sh: arguments that start with a flag mean "mongod FLAGS".
case "${1:-}" in -*) set -- mongod "$@" ;; esac
exec "$@"
"""

_MONGO_LIB = """# Sourced by the mongod and mongo shell stand-ins: this image's version and the FCV range it accepts.
share=/usr/local/share/mongo-standin
version=$(cat $share/version); max=$(cat $share/fcv); min=$(cat $share/min-fcv)
num() { echo "$1" | awk -F. '{ print $1 * 1000 + $2 }'; }
accepted() { [ -n "$1" ] && [ "$(num "$1")" -le "$(num "$max")" ] && { [ -z "$min" ] || [ "$(num "$1")" -ge "$(num "$min")" ]; }; }
mkdir -p /data/db
"""

_MONGOD = """#!/bin/sh
# Stand-in for mongod: records its arguments in /data/db/mongod.log, refuses (exit 62) data whose
# featureCompatibilityVersion (/data/db/fcv) is newer than itself or older than its predecessor, then idles.
. /usr/local/lib/mongo-standin.sh
if [ "${1:-}" = --version ]; then echo "db version v$version"; exit 0; fi
echo "mongod $*" >> /data/db/mongod.log
[ -s /data/db/fcv ] || echo "$max" > /data/db/fcv
have=$(cat /data/db/fcv)
if ! accepted "$have"; then
  echo "mongod $version: data has featureCompatibilityVersion $have, need ${min:-$max} to $max" >&2
  exit 62
fi
echo "mongod $version waiting for connections (featureCompatibilityVersion $have)"
exec run-forever
"""

_MONGO_SHELL = """#!/bin/sh
# Stand-in for mongosh and the legacy mongo shell: appends each call ("NAME ARGS", then stdin when there
# is no --eval) to /data/db/mongosh.log and answers like a healthy server. setFeatureCompatibilityVersion
# changes /data/db/fcv (within what this mongod accepts); getParameter featureCompatibilityVersion reads it.
. /usr/local/lib/mongo-standin.sh
js=
prev=
for arg in "$@"; do
  if [ "$prev" = --eval ]; then js="$js$arg;"; fi
  prev=$arg
done
echo "$(basename "$0") $*" >> /data/db/mongosh.log
if [ -z "$js" ] && [ ! -t 0 ]; then js=$(cat); printf '%s\\n' "$js" >> /data/db/mongosh.log; fi
case "$js" in
  *setFeatureCompatibilityVersion*)
    want=$(printf '%s' "$js" | grep -o 'setFeatureCompatibilityVersion[^0-9]*[0-9.]*' | grep -o '[0-9.]*$' | head -n 1)
    if ! accepted "$want"; then
      echo "MongoServerError: invalid featureCompatibilityVersion '$want' for mongod $version" >&2
      exit 1
    fi
    echo "$want" > /data/db/fcv
    echo "{ ok: 1 }" ;;
  *featureCompatibilityVersion*)
    echo "{ featureCompatibilityVersion: { version: '$(cat /data/db/fcv 2>/dev/null || echo "$max")' }, ok: 1 }" ;;
  *) echo "{ ok: 1 }" ;;
esac
"""

_REDIS_ENTRYPOINT = """#!/bin/sh
# Stand-in for the redis image's docker-entrypoint.sh: arguments that start with a flag mean "redis-server FLAGS".
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
exec "$@"
"""

_REDIS_SERVER = """#!/bin/sh
# Stand-in for redis-server: prints its version, records its arguments in /data/redis-server.log, then idles.
version=$(cat /usr/local/share/redis-standin/version)
case "${1:-}" in -v|--version) echo "Redis server v=$version sha=00000000:0 malloc=libc bits=64"; exit 0 ;; esac
mkdir -p /data
echo "redis-server $*" >> /data/redis-server.log
echo "Redis $version ready to accept connections"
exec run-forever
"""

_REDIS_CLI = """#!/bin/sh
# Stand-in for redis-cli: records its arguments in /data/redis-cli.log; PING -> PONG, a scan finds nothing.
mkdir -p /data
echo "redis-cli $*" >> /data/redis-cli.log
for arg in "$@"; do
  case "$arg" in
    [Pp][Ii][Nn][Gg]) echo PONG; exit 0 ;;
    --scan|[Kk][Ee][Yy][Ss]) exit 0 ;;
    [Ii][Nn][Ff][Oo]) echo "redis_version:$(cat /usr/local/share/redis-standin/version)"; exit 0 ;;
  esac
done
echo OK
"""

_NGINX = """#!/bin/sh
# Stand-in for nginx: -v and -t answer at once; otherwise serve /usr/share/nginx/html on port 80.
case "${1:-}" in
  -v|-V) echo "nginx version: nginx/$(cat /usr/share/nginx/VERSION)" >&2; exit 0 ;;
  -t) echo "nginx: configuration file /etc/nginx/nginx.conf test is successful" >&2; exit 0 ;;
esac
exec run-forever httpd -f -p 80 -h /usr/share/nginx/html
"""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def _series(version: str) -> str:
    """``"8.0.4"`` -> ``"8.0"``, ``"6"`` -> ``"6.0"``: the major.minor a tag names."""
    parts = (version.split(".") + ["0"])[:2]
    return ".".join(parts)


def _ensure(client: docker.DockerClient, tag: str, files: Mapping[str, FileContent]) -> None:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        build_image(client, tag, files)


def _standin_labels(kind: str, version: str) -> dict[str, str]:
    return {"org.opencontainers.image.version": version, "airgap-test.standin": kind}


def seed_overleaf_images(
    target: PrivateEngine | docker.DockerClient,
    versions: Sequence[str] = (),
    *,
    edition: Literal["ce", "pro"] = "ce",
    git_bridge: bool = False,
    mongo: Sequence[str] = (),
    redis: Sequence[str] = (),
    nginx: Sequence[str] = (),
    texlive: Sequence[str] = (),
) -> list[str]:
    """Build small stand-ins named exactly like the real images; return their references in build order.

    - App (``versions``): ``sharelatex/sharelatex:V`` (CE) or
      ``quay.io/sharelatex/sharelatex-pro:V`` (Server Pro); ``git_bridge`` adds
      ``quay.io/sharelatex/git-bridge:V`` (Server Pro only). All start from one
      app base; within one call, each version of a major.minor series is built
      ``FROM`` the one before and adds a small layer, like hotfix chains.
      ``CMD`` serves ``/var/www`` with busybox httpd on port 80.
    - ``mongo:T``: entrypoint takes flags (``--replSet overleaf``) like the real
      one; ``mongod`` keeps the data's FCV in ``/data/db/fcv`` and refuses
      (exit 62) a skipped major or a downgrade. As in the real images, ``mongo``
      (legacy shell) exists below 6.0 and ``mongosh`` from 5.0; both log every
      call to ``/data/db/mongosh.log`` and apply ``setFeatureCompatibilityVersion``.
    - ``redis:T``: entrypoint takes ``redis-server --appendonly yes`` or flags;
      ``redis-cli ping`` prints PONG; calls are logged under ``/data``.
    - ``nginx:T`` and ``quay.io/sharelatex/texlive-full:T``: small long-running images.
    """
    if edition not in ("ce", "pro"):
        raise ValueError(f"edition must be 'ce' or 'pro', not {edition!r}")
    if git_bridge and edition != "pro":
        raise ValueError("git-bridge exists only for Server Pro (edition='pro')")
    client = _client(target)
    refs: list[str] = []

    def add(ref: str, files: Mapping[str, FileContent], kind: str, version: str, **kwargs: Any) -> None:
        build_image(client, ref, files, labels=_standin_labels(kind, version), **kwargs)
        refs.append(ref)

    if versions:
        _ensure(client, APP_BASE_IMAGE, _APP_BASE_FILES)
    app_repo = "sharelatex/sharelatex" if edition == "ce" else "quay.io/sharelatex/sharelatex-pro"
    previous: dict[str, str] = {}
    for version in sorted(versions, key=_version_key):
        ref = f"{app_repo}:{version}"
        files = {"/overleaf/VERSION": version + "\n", f"/overleaf/hotfix/{version}.txt": f"{edition} {version}\n" * 256}
        base = previous.get(_series(version), APP_BASE_IMAGE)
        add(ref, files, f"overleaf-{edition}", version, base=base, cmd=_APP_CMD)
        previous[_series(version)] = ref
        if git_bridge:
            add(f"quay.io/sharelatex/git-bridge:{version}", {"/opt/git-bridge/VERSION": version + "\n"},
                "git-bridge", version, cmd=["run-forever"])  # fmt: skip

    if mongo:
        _ensure(client, MONGO_BASE_IMAGE, {
            "/usr/local/bin/docker-entrypoint.sh": _MONGO_ENTRYPOINT, "/usr/local/bin/mongod": _MONGOD,
            "/usr/local/lib/mongo-standin.sh": _MONGO_LIB,
        })  # fmt: skip
    for tag in mongo:
        fcv = _series(tag)
        min_fcv = MONGO_MAJORS[MONGO_MAJORS.index(fcv) - 1] if fcv in MONGO_MAJORS[1:] else ""
        major = int(fcv.split(".")[0])
        shells = [name for name, present in (("mongo", major < 6), ("mongosh", major >= 5)) if present]
        files = {f"/usr/local/share/mongo-standin/{k}": v + "\n" for k, v in
                 {"version": tag, "fcv": fcv, "min-fcv": min_fcv}.items()}  # fmt: skip
        files.update({f"/usr/local/bin/{shell}": _MONGO_SHELL for shell in shells})
        add(f"mongo:{tag}", files, "mongo", tag, base=MONGO_BASE_IMAGE,
            entrypoint=["docker-entrypoint.sh"], cmd=["mongod"])  # fmt: skip

    if redis:
        _ensure(client, REDIS_BASE_IMAGE, {
            "/usr/local/bin/docker-entrypoint.sh": _REDIS_ENTRYPOINT,
            "/usr/local/bin/redis-server": _REDIS_SERVER, "/usr/local/bin/redis-cli": _REDIS_CLI,
        })  # fmt: skip
    for tag in redis:
        add(f"redis:{tag}", {"/usr/local/share/redis-standin/version": tag + "\n"}, "redis", tag,
            base=REDIS_BASE_IMAGE, entrypoint=["docker-entrypoint.sh"], cmd=["redis-server"])  # fmt: skip

    for tag in nginx:
        files = {"/usr/sbin/nginx": _NGINX, "/usr/share/nginx/VERSION": tag + "\n",
                 "/usr/share/nginx/html/index.html": "<html><body>nginx stand-in</body></html>\n"}  # fmt: skip
        add(f"nginx:{tag}", files, "nginx", tag, cmd=["nginx", "-g", "daemon off;"])

    for tag in texlive:
        add(f"quay.io/sharelatex/texlive-full:{tag}", {"/usr/local/texlive/VERSION": tag + "\n"},
            "texlive-full", tag, cmd=["run-forever"])  # fmt: skip
    return refs


# --- registry mirrors --------------------------------------------------------------------------


def split_reference(ref: str) -> tuple[str, str, str]:
    """Split a tagged reference like Docker does: ``"mongo:8.0"`` -> ``("docker.io", "library/mongo", "8.0")``."""
    if "@" in ref:
        raise ValueError(f"digest references are not supported here: {ref}")
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain in ("docker.io", "index.docker.io"):
        domain = "docker.io"
        if "/" not in path:
            path = "library/" + path
    return domain, path, tag


def mirror_reference(ref: str, address: str, mirrors: Mapping[str, str] | None = None) -> str:
    """Where ``ref`` lives in a mirror registry at ``address``.

    Docker Hub images go to ``ADDRESS/PATH`` and other registries to
    ``ADDRESS/DOMAIN/PATH`` (the mapping ``--mirror docker.io=ADDRESS``,
    ``--mirror quay.io=ADDRESS/quay.io``); ``mirrors`` overrides the prefix per
    source registry, e.g. ``{"quay.io": "127.0.0.1:5000/q"}``.
    """
    domain, path, tag = split_reference(ref)
    prefix = (mirrors or {}).get(domain) or (address if domain == "docker.io" else f"{address}/{domain}")
    return f"{prefix}/{path}:{tag}"


def push_to_registry(
    target: PrivateEngine | docker.DockerClient,
    registry: PrivateRegistry | str,
    refs: Iterable[str],
    *,
    mirrors: Mapping[str, str] | None = None,
    keep_tags: bool = False,
) -> dict[str, str]:
    """Push local images into ``registry`` under their mirror names; return ``{ref: pushed ref}``.

    Each image is tagged with its :func:`mirror_reference`, pushed, and (unless
    ``keep_tags``) untagged again. RuntimeError on any ``errorDetail`` in a push's status stream.
    """
    client = _client(target)
    address = registry.address if isinstance(registry, PrivateRegistry) else registry
    pushed: dict[str, str] = {}
    for ref in refs:
        dest = mirror_reference(ref, address, mirrors)
        repository, _, tag = dest.rpartition(":")
        client.images.get(ref).tag(repository, tag)
        try:
            for status in client.api.push(repository, tag=tag, stream=True, decode=True):
                if "errorDetail" in status or "error" in status:
                    detail = status.get("errorDetail") or status.get("error")
                    raise RuntimeError(f"push of {ref} as {dest} failed: {detail}")
        finally:
            if not keep_tags:
                client.images.remove(dest, noprune=True)
        pushed[ref] = dest
    return pushed
