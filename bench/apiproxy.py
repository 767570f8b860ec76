"""A unix-socket proxy that lifts old Docker API versions in request paths (for Debian 12's skopeo and Engine 26).

Debian 12's ``skopeo`` (1.9) talks to a Docker engine with API version 1.22, fixed. Engine 25
and newer refuse versions below 1.24 ("client version 1.22 is too old"), and
``DOCKER_MIN_API_VERSION`` cannot go below 1.24 either. The calls skopeo makes
(``/_ping``, ``POST /images/load``) are the same in 1.24, so this proxy rewrites
``/v1.NN/`` to ``/v1.24/`` in each request line (and asks for ``Connection: close``, so
that every request comes on a connection of its own), then copies the bytes both ways
with ``os.splice`` (no copy through Python). The benchmark counts the proxy's CPU time
with skopeo's.

    with ApiVersionProxy(engine.socket, work / "api.sock") as proxy:
        subprocess.run(["skopeo", "copy", f"--dest-daemon-host={proxy.host}", src, "docker-daemon:x:1"])
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

MIN_VERSION = (1, 24)
_REQUEST = re.compile(rb"^([A-Z]+) /v(\d+)\.(\d+)/")
_HEAD_LIMIT = 64 * 1024
_PIPE = 1 << 20


def rewrite_head(head: bytes) -> bytes:
    """The request head with an old ``/v1.NN/`` lifted to 1.24 and ``Connection: close``."""
    lines = head.split(b"\r\n")
    m = _REQUEST.match(lines[0])
    if m and (int(m.group(2)), int(m.group(3))) < MIN_VERSION:
        lines[0] = m.group(1) + b" /v%d.%d/" % MIN_VERSION + lines[0][m.end():]
    kept = [line for line in lines[1:] if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])


class ApiVersionProxy:
    def __init__(self, upstream: Path, listen: Path) -> None:
        self.upstream = upstream
        self.listen = listen
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cpu0 = 0.0

    @property
    def host(self) -> str:
        return f"unix://{self.listen}"

    def __enter__(self) -> "ApiVersionProxy":
        self.listen.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.listen))
        self._server.listen(16)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="api-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._server:
            self._server.close()
        self.listen.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._handle, args=(conn,), name="api-proxy-conn", daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk or len(head) > _HEAD_LIMIT:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            upstream.connect(str(self.upstream))
            upstream.sendall(rewrite_head(head) + rest)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF (kernel to kernel through a pipe), then half-close ``dst``."""
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(src.fileno(), w, _PIPE)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

