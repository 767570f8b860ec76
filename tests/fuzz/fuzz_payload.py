"""The payload reader: SegmentReader + the strict ustar reader + zstd decoding of ``.zst`` members.

The fuzzed bytes stand for a payload part whose segment hashes are *correct* (as if a bad
signer made it): so every byte reaches the tar reader and, for ``.zst`` members, the zstd
decoder of :class:`importer.images.blobs.BlobStream` (the blob verifier of load and push). They must refuse with :class:`IntegrityError` (or its
:class:`PayloadFormatError`), never crash or hang.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from manifests.bundle import BlobEntry, PartRef
from manifests.errors import IntegrityError
from manifests.payload import END_OF_ARCHIVE, SegmentReader, iter_members, member_header, padding

from importer.images.blobs import BlobStream

ALLOWED = (IntegrityError,)
SEGMENT = 64 * 1024
_DIR = Path(tempfile.mkdtemp(prefix="oa-fuzz-payload-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _member(data: bytes, zst: bool = False) -> bytes:
    import zstandard

    stored = zstandard.ZstdCompressor().compress(data) if zst else data
    name = "blobs/sha256/" + hashlib.sha256(data).hexdigest() + (".zst" if zst else "")
    return member_header(name, len(stored)) + stored + padding(len(stored))


SEEDS = [_member(b'{"a":1}') + _member(b"layer" * 100, zst=True) + END_OF_ARCHIVE, END_OF_ARCHIVE]


def target(data: bytes) -> None:
    path = _DIR / "payload.000"
    path.write_bytes(data)
    segs = tuple(hashlib.sha256(data[k:k + SEGMENT]).hexdigest() for k in range(0, len(data), SEGMENT))
    part = PartRef("payload.000", len(data), hashlib.sha256(data).hexdigest(), segs)
    reader = SegmentReader([part] if data else [], SEGMENT, lambda name: _DIR / name)
    try:
        for name, size, member in iter_members(reader):
            hexd = name.split("/")[-1].split(".")[0]
            if name.endswith(".zst"):
                blob = BlobEntry("sha256:" + hexd, "layer", "application/vnd.oci.image.layer.v1.tar", 1 << 20,
                                 "zstd", size)
            else:
                blob = BlobEntry("sha256:" + hexd, "config", "application/vnd.oci.image.config.v1+json", size,
                                 "none", size)
            v = BlobStream(member, blob)
            while v.left and v.read(65536):
                pass
            if blob.encoding == "none":
                v.finish()
    finally:
        reader.close()
