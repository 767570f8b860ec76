"""The one blob verifier of load and push (importer/images/blobs.py): exact size, digest, decoding, caps."""
from __future__ import annotations

import hashlib
import io

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.bundle import BlobEntry
from manifests.errors import IntegrityError

from importer.images.blobs import BlobStream


def entry(content: bytes, zst: bool = False, size: int | None = None, digest: str | None = None) -> tuple[BlobEntry, bytes]:
    stored = zstandard.ZstdCompressor().compress(content) if zst else content
    blob = BlobEntry(digest or "sha256:" + hashlib.sha256(content).hexdigest(), "layer",
                     "application/vnd.oci.image.layer.v1.tar", len(content) if size is None else size,
                     "zstd" if zst else "none", len(stored))
    return blob, stored


def read_through(blob: BlobEntry, stored: bytes, n: int = 7) -> bytes:
    s = BlobStream(io.BytesIO(stored), blob)
    out = bytearray()
    while chunk := s.read(n):
        out += chunk
    s.finish()
    return bytes(out)


@pytest.mark.parametrize("zst", [False, True])
def test_intact_blob_reads_back_exactly(zst):
    content = b"layer bytes " * 1000
    assert read_through(*entry(content, zst)) == content
    blob, stored = entry(content, zst)
    assert BlobStream(io.BytesIO(stored), blob).read_all(1 << 20) == content


@pytest.mark.parametrize("zst", [False, True])
def test_short_long_and_altered_blobs_are_refused(zst):
    content = b"abcdefgh" * 100
    blob, stored = entry(content, zst, size=len(content) + 1)
    with pytest.raises(IntegrityError, match="bytes early"):
        read_through(blob, stored)
    blob, stored = entry(content, zst, size=len(content) - 1)
    with pytest.raises(IntegrityError, match="longer than the manifest"):
        read_through(blob, stored)
    blob, stored = entry(content, zst, digest="sha256:" + "0" * 64)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        read_through(blob, stored)


def test_finish_reads_what_the_consumer_left_and_checks_it():
    blob, stored = entry(b"x" * 100, digest="sha256:" + "0" * 64)
    s = BlobStream(io.BytesIO(stored), blob)
    s.read(10)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        s.finish()


def test_bad_zstd_and_the_cap():
    blob, _ = entry(b"z" * 10, zst=True)
    with pytest.raises(IntegrityError, match="zstd"):
        read_through(blob, b"\x28\xb5\x2f\xfd" + b"\xff" * 20)
    blob, stored = entry(b"y" * 100)
    with pytest.raises(IntegrityError, match="over the limit"):
        BlobStream(io.BytesIO(stored), blob, "hint").read_all(99)


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=2000), zst=st.booleans(), pos=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_changed_stored_byte_is_refused(content, zst, pos, flip):
    blob, stored = entry(content, zst)
    if not stored:
        return
    bad = bytearray(stored)
    bad[pos % len(bad)] ^= flip
    try:
        got = read_through(blob, bytes(bad))
    except IntegrityError:
        return
    assert got == content   # only a change zstd ignores (e.g. a frame's unused bits) may pass, never other bytes
