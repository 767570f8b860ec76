"""Bounded, non-blocking reads of small files that may be hostile, and strict JSON.

Every small file the tools read from a bundle or from the host (``manifest.json``,
its signature, trusted ``.pub`` keys, the state file, receipts, the journal,
``backup.json``) goes through :func:`read_regular` (large ones, payload parts, through :func:`open_regular`):

* the file is opened with ``O_NONBLOCK`` (a FIFO planted in its place cannot hang
  the open) and, for files inside an untrusted folder, ``O_NOFOLLOW`` (the name
  itself may not be a symbolic link: callers resolve links they accept first);
* ``fstat`` of the open descriptor must show a regular file: FIFOs, sockets,
  devices and folders are refused;
* the size is capped, before and while reading: a 1 GiB ``manifest.json`` is
  refused, not read into memory.

Every refusal raises the caller's :class:`~manifests.errors.AirgapError` subclass
(so it keeps its documented exit code) with a message naming the file and the cap.
A missing file raises :class:`FileNotFoundError`, for callers that treat absence
specially.

:func:`loads_json` is ``json.loads`` without the surprises: ``NaN``/``Infinity``,
integers longer than 19 digits, nesting deeper than Python's recursion limit and
bad UTF-8 all raise the caller's error instead of ``ValueError``/``RecursionError``.

    data = read_regular(bundle / "manifest.json", LIMITS.manifest, "the manifest", IntegrityError)
    obj = loads_json(state_bytes, "the state file /var/lib/overleaf-airgap/state.json", StateError)
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from .errors import AirgapError, IntegrityError
from .limits import LIMITS, MiB
from .units import human_size

# The caps live in manifests/limits.py (one config); these names are kept for the callers that use them.
MANIFEST_CAP = LIMITS.manifest
SIGNATURE_CAP = LIMITS.signature
KEY_CAP = LIMITS.public_key
STATE_CAP = LIMITS.host_state
RECEIPT_CAP = LIMITS.receipt
JOURNAL_CAP = LIMITS.journal
BACKUP_JSON_CAP = LIMITS.backup_json
MAX_INT_DIGITS = LIMITS.json_int_digits

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a folder``... for a ``st_mode`` that is not a regular file."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _open_checked(path: Path, what: str, error: type[AirgapError], follow_symlinks: bool, hint: str) -> int:
    """A non-blocking descriptor of the regular file ``path``; ``error`` for anything else."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):
            raise error(f"{what} {path} is a symbolic link, which is not accepted here",
                        hint or "Replace the link with the real file.") from None
        reason = "a symbolic link loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise error(f"cannot read {what} {path}: {reason}", hint or "Check the path and its permissions.") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}", hint or "Check the path.") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: refused",
                    hint or "Replace it with the real file.")
    return fd


def open_regular(path: Path | str, what: str, error: type[AirgapError] = IntegrityError, hint: str = "", *,
                 follow_symlinks: bool = True):
    """``path`` opened for streaming reads (unbuffered, blocking) only if it is a regular file.

    For large files read in pieces (payload parts); small files go through :func:`read_regular`.
    A missing file raises ``error`` too (a part that is not there is a problem of the bundle).
    """
    try:
        fd = _open_checked(Path(path), what, error, follow_symlinks, hint)
    except FileNotFoundError:
        raise error(f"{what} cannot be read ({path}): no such file", hint) from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def read_regular(path: Path | str, cap: int, what: str, error: type[AirgapError] = IntegrityError, *,
                 follow_symlinks: bool = False, hint: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them.

    ``what`` names the file in messages ("the manifest", "the trusted key"). ``error`` is
    the exception class raised for a non-regular, oversized or unreadable file.
    ``follow_symlinks=False`` refuses a symbolic link as the last component of ``path``.
    Raises :class:`FileNotFoundError` when the file does not exist.
    """
    path = Path(path)
    fd = _open_checked(path, what, error, follow_symlinks, hint)
    try:
        st = os.fstat(fd)
        if st.st_size > cap:
            raise error(f"{what} {path} is {st.st_size} bytes, more than the {human_size(cap)} allowed: refused "
                        "without reading it", hint or "It is not the file this tool wrote; use the original.")
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(1 * MiB, cap + 1 - total))
            except BlockingIOError:  # pragma: no cover - regular files never block
                raise error(f"{what} {path} would block: refused", hint or "Replace it with the real file.") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise error(f"{what} {path} grew past the {human_size(cap)} allowed while it was read: refused",
                            hint or "Make sure nothing writes to it, then try again.")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}",
                    hint or "Check the path and its permissions.") from None
    finally:
        os.close(fd)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a {len(text)}-digit number is not allowed")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def loads_json(data: bytes, what: str, error: type[AirgapError], hint: str = "") -> Any:
    """Strict ``json.loads`` of UTF-8 ``data``: any decoding problem raises ``error`` naming ``what``."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_int=_bounded_int,
                          parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start})", hint) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be read", hint) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge numbers
        raise error(f"{what} is not valid JSON: {exc}", hint) from None


HASH_READ_SIZE = 1024 * 1024


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None,
                read_size: int = HASH_READ_SIZE) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in ``read_size`` blocks into one reused buffer (sequential
    read-ahead asked for); ``on_bytes(n)`` after each block (a progress bar). The one file hasher of
    both tools: bundle files at build and verify, backup trees at restore."""
    h = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as fh:
        # a small file gets a buffer its size (+1, to see the end in one read): no 1 MiB zeroed per wheel
        buf = bytearray(max(1, min(read_size, os.fstat(fh.fileno()).st_size + 1)))
        view = memoryview(buf)
        try:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):   # no fadvise here (or not for this file system): only slower
            pass
        while n := fh.readinto(buf):
            h.update(view[:n])
            total += n
            if on_bytes:
                on_bytes(n)
    return total, h.hexdigest()
