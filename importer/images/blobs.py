"""One verifier for the image blobs a payload carries, used by ``load`` and by ``push``.

A payload member holds one blob as the bundle stored it (plain, or zstd-encoded:
``BlobEntry.encoding``). :class:`BlobStream` gives back the blob's own bytes, decoded if
needed, never more than ``BlobEntry.size`` of them, hashing them as they pass;
:meth:`BlobStream.finish` then proves the end: nothing follows, the size is the
manifest's, and the sha256 is the blob's digest. Every failure is an
:class:`~manifests.errors.IntegrityError` (exit code 14) that names the blob. The
segment hashes (:class:`manifests.payload.SegmentReader`) already prove the stored bytes
are the signed ones; this check proves the bundle's builder listed the right blob.

    stream = BlobStream(member, blob)
    data = stream.read_all(LIMITS.small_blob)     # or stream.read(n) ... then stream.finish()
"""
from __future__ import annotations

import hashlib
from typing import Any

import zstandard

from manifests.bundle import BlobEntry
from manifests.errors import IntegrityError
from manifests.payload import zstd_decompressor

CHUNK = 1024 * 1024
BAD_BLOB = "The bundle is malformed or was made by a bad signer: do not use it; ask its builder for a new one."


class BlobStream:
    """The content of ``blob`` read from its payload ``member``: exactly ``blob.size`` bytes, hashed.

    ``hint`` is the error's advice (push adds that no tag was pushed).
    """

    def __init__(self, member: Any, blob: BlobEntry, hint: str = BAD_BLOB) -> None:
        self.blob = blob
        self.hint = hint
        self.src = (zstd_decompressor().stream_reader(member, read_size=CHUNK, read_across_frames=True, closefd=False)
                    if blob.encoding == "zstd" else member)
        self.hash = hashlib.sha256()
        self.left = blob.size
        self.count = 0

    def _read(self, n: int) -> bytes:
        try:
            return self.src.read(n)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob {self.blob.digest}: its zstd encoding does not decode ({exc})",
                                 self.hint) from None

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (a chunk for ``n < 0``); b"" only at the blob's end; an early end raises."""
        want = CHUNK if n is None or n < 0 else n
        data = self._read(min(want, self.left)) if self.left and want else b""
        if not data and self.left and want:
            raise IntegrityError(f"blob {self.blob.digest} ends {self.left} bytes early (the manifest says "
                                 f"{self.blob.size} bytes)", self.hint)
        self.hash.update(data)
        self.left -= len(data)
        self.count += len(data)
        return data

    def read_all(self, cap: int) -> bytes:
        """The whole blob (refused over ``cap`` bytes before a byte is read), then :meth:`finish`."""
        if self.blob.size > cap:
            raise IntegrityError(f"{self.blob.kind} blob {self.blob.digest} is {self.blob.size} bytes, over the "
                                 f"limit of {cap}", self.hint)
        data = bytearray()
        while self.left:
            data += self.read(self.left)
        self.finish()
        return bytes(data)

    def finish(self) -> None:
        """Nothing after the blob's bytes, the size is the manifest's, and the digest matches (what the
        consumer left unread is read and hashed first)."""
        while self.left:
            self.read(self.left)
        if self._read(1):
            raise IntegrityError(f"blob {self.blob.digest} is longer than the manifest says ({self.blob.size} bytes)",
                                 self.hint)
        if "sha256:" + self.hash.hexdigest() != self.blob.digest:
            raise IntegrityError(f"blob {self.blob.digest} does not match its digest (content altered)", self.hint)
