"""Load requests to the engine: each a ``POST /images/load`` whose body this process writes through a pipe.

The archive writer (:func:`importer.images.load.write_archive`) runs in the caller's thread and writes
each request's archive into :attr:`Upload.archive`; a thread per request streams the pipe's other end to
the engine and collects its status items. A request is :meth:`~Upload.finish`-ed with its index and the
tar end, or :meth:`~Upload.cut`: the pipe is closed without a tar end and the HTTP body is broken off
before its last chunk, so the engine only ever sees a cut archive and registers nothing from it.

On the classic store one run may send several requests one after another (see :mod:`importer.images.load`):
:meth:`Uploads.finish` writes a request's index only after the requests it depends on have finished, so
while the engine registers one request's layers the next one is already streaming.

    uploads = Uploads(client)
    up = uploads.open()
    up.archive.add_bytes(...)
    uploads.finish(up, "manifest.json", index, after=[earlier])
    messages = uploads.wait_all()
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Iterable, Iterator

import docker
import docker.errors
import requests.exceptions

from manifests.errors import EngineError

from importer.images.archive import CHUNK, ArchiveWriter
from importer.images.engine import down_error, engine_name, stream_error

PIPE_SIZE = 1024 * 1024
RETRY = "Check the engine's free space and log (journalctl -u docker), then run the same command again."


class _Cut(Exception):
    """Raised inside the request body: the upload is broken off mid-body."""


class Upload:
    """One load request; its body is what is written into :attr:`archive`."""

    def __init__(self, client: docker.DockerClient, number: int, pool: ThreadPoolExecutor) -> None:
        self.number = number
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.lost: BaseException | None = None
        self._cut = False
        self.complete = False  # its index and tar end were written: the engine registers it, whatever we do
        self._rfd, wfd = os.pipe()
        try:  # a 1 MiB pipe (Linux): fewer wake-ups between the writer and the upload thread
            import fcntl
            fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except OSError:
            pass
        self._out = os.fdopen(wfd, "wb", buffering=CHUNK)
        self.archive = ArchiveWriter(self._out)
        self._future: Future[None] = pool.submit(self._run, client)

    def _body(self) -> Iterator[bytes]:
        while True:
            chunk = os.read(self._rfd, PIPE_SIZE)
            if not chunk:
                break
            yield chunk
        if self._cut:
            raise _Cut()  # requests drops the connection: no last chunk, the engine discards the archive

    def _run(self, client: docker.DockerClient) -> None:
        try:
            for item in client.api.load_image(data=self._body(), quiet=True):
                if not isinstance(item, dict):
                    continue
                problem = stream_error(item)
                if problem is not None:
                    self.errors.append(problem)
                    continue
                text = str(item.get("stream") or item.get("status") or "").strip()
                if text:
                    self.messages.append(text)
        except _Cut:
            pass
        except docker.errors.APIError as exc:
            self.errors.append(getattr(exc, "explanation", None) or str(exc))
        except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
            self.lost = exc
        except BaseException as exc:  # noqa: BLE001 - anything else is handed to the caller's thread too
            self.lost = exc
        finally:
            os.close(self._rfd)  # a writer still blocked on the pipe now gets EPIPE and stops

    def finish(self, index_name: str, index: bytes) -> None:
        """The last member and the tar end: the engine now registers what this request carried."""
        self.archive.add_bytes(index_name, index)
        self.archive.close()
        self.complete = True
        self._out.close()

    def cut(self) -> None:
        self._cut = True
        self.archive.aborted = True
        try:
            self._out.close()
        except OSError:  # the engine already stopped reading (EPIPE on the last flush)
            pass

    def wait(self, timeout: float | None = None) -> None:
        wait_for([self._future], timeout)

    def problem(self) -> EngineError | None:
        """What the engine said or did wrong with this request, once it is done."""
        if self.errors:
            return EngineError(f"the Docker engine at {engine_name()} failed to load the images: "
                               + "; ".join(self.errors), "Nothing was kept. " + RETRY)
        if self.lost is not None:
            err = down_error(self.lost, "load images into")
            err.__cause__ = self.lost
            return err
        return None


class Uploads:
    """The load requests of one run, in the order they were opened."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.all: list[Upload] = []
        # two threads are enough (one request registering while the next streams; a third waits, and its
        # writer with it, until one is done) and keep the memory flat: each new thread gets a malloc arena
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="image-load")

    def open(self) -> Upload:
        up = Upload(self.client, len(self.all) + 1, self._pool)
        self.all.append(up)
        return up

    def finish(self, up: Upload, index_name: str, index: bytes, after: Iterable[Upload] = ()) -> None:
        """Write ``up``'s index once every request in ``after`` has finished without a problem (the engine
        then holds the layers ``up`` lists but does not carry)."""
        for dep in after:
            dep.wait()
            problem = dep.problem()
            if problem is not None:
                raise problem
        up.finish(index_name, index)

    def cut_all(self) -> None:
        """Cut every request still open, and wait for the complete ones: the engine registers those anyway,
        and the rollback that follows must see what they added."""
        for up in self.all:
            if not up.complete:
                up.cut()
        for up in self.all:
            up.wait(timeout=None if up.complete else 30)

    def wait_all(self) -> list[str]:
        """Every request's messages, in order; the first problem is raised."""
        for up in self.all:
            up.wait()
        for up in self.all:
            problem = up.problem()
            if problem is not None:
                raise problem
        return [m for up in self.all for m in up.messages]
