"""The payload format (strict ustar, parts, per-segment hashes): round trips and refusals."""
from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from manifests.bundle import PartRef
from manifests.errors import IntegrityError
from manifests.payload import (END_OF_ARCHIVE, PartWriter, PayloadFormatError, SegmentReader, check_part,
                               iter_members, member_header, padding, parse_header)

SEG = 64 * 1024


def _name(data: bytes, zst: bool = False) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest() + (".zst" if zst else "")


def write_payload(folder: Path, blobs: list[bytes], max_part: int, seg: int = SEG) -> list[PartRef]:
    w = PartWriter(folder, max_part, seg)
    for b in blobs:
        w.write(member_header(_name(b), len(b)))
        w.write(b)
        w.write(padding(len(b)))
    w.write(END_OF_ARCHIVE)
    w.close()
    return w.parts


def read_payload(folder: Path, parts: list[PartRef], seg: int = SEG) -> list[bytes]:
    r = SegmentReader(parts, seg, lambda n: folder / n)
    try:
        return [m.read() for _, _, m in iter_members(r)]
    finally:
        r.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(min_size=0, max_size=300_000), min_size=1, max_size=5, unique=True),
       max_part=st.integers(min_value=SEG // 2, max_value=700_000))
def test_round_trip_any_split(tmp_path_factory, blobs, max_part):
    folder = tmp_path_factory.mktemp("p")
    parts = write_payload(folder, blobs, max_part)
    assert all(p.size <= max_part for p in parts)
    for p in parts:
        data = (folder / p.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p.sha256
        assert len(p.segments) == -(-p.size // SEG)
    assert read_payload(folder, parts) == blobs


def test_python_tarfile_reads_the_payload(tmp_path):
    blobs = [b"a" * 1000, os.urandom(5000)]
    parts = write_payload(tmp_path, blobs, 10**6)
    with tarfile.open(tmp_path / parts[0].name) as tar:
        assert [tar.extractfile(m).read() for m in tar.getmembers()] == blobs


def test_big_size_uses_base256_and_parses():
    h = member_header("blobs/sha256/" + "a" * 64, 9 * 1024**3)
    assert h[124] == 0x80
    assert parse_header(h) == ("blobs/sha256/" + "a" * 64, 9 * 1024**3)
    info = tarfile.TarInfo.frombuf(h, "ascii", "strict")
    assert info.size == 9 * 1024**3


def test_a_flipped_byte_is_caught_before_it_is_released(tmp_path):
    blob = os.urandom(3 * SEG)
    parts = write_payload(tmp_path, [blob], 10**7)
    path = tmp_path / parts[0].name
    data = bytearray(path.read_bytes())
    data[2 * SEG + 7] ^= 1      # in the third segment
    path.write_bytes(bytes(data))
    r = SegmentReader(parts, SEG, lambda n: tmp_path / n)
    got = bytearray()
    with pytest.raises(IntegrityError, match="damaged or altered"):
        while chunk := r.read(4096):
            got += chunk
    r.close()
    assert len(got) <= 2 * SEG      # nothing of the bad segment came out
    assert check_part(path, parts[0], SEG) is not None


def test_missing_and_truncated_and_fifo_parts(tmp_path):
    parts = write_payload(tmp_path, [os.urandom(200_000)], 120_000)
    assert len(parts) == 2
    p1 = tmp_path / parts[1].name
    p1.write_bytes(p1.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match="payload.001"):
        read_payload(tmp_path, parts)
    p1.unlink()
    with pytest.raises(IntegrityError, match="cannot be read"):
        read_payload(tmp_path, parts)
    os.mkfifo(p1)
    with pytest.raises(IntegrityError, match="not a regular file"):
        read_payload(tmp_path, parts)
    assert "not a regular file" in check_part(p1, parts[1], SEG)


def _signed_part(folder: Path, payload: bytes) -> list[PartRef]:
    w = PartWriter(folder, 10**7, SEG)
    w.write(payload)
    w.close()
    return w.parts


@pytest.mark.parametrize("kind", ["pax", "gnu", "symlink", "dotdot"])
def test_strict_reader_refuses_what_the_builder_never_writes(tmp_path, kind):
    import io
    buf = io.BytesIO()
    fmt = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}.get(kind, tarfile.USTAR_FORMAT)
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        name = "blobs/sha256/" + "b" * 64
        info = tarfile.TarInfo(name if kind != "gnu" else name + "x" * 60)
        if kind == "pax":
            info.pax_headers = {"comment": "x"}
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
        if kind == "dotdot":
            info.name = "../../etc/cron.d/x"
        tar.addfile(info, io.BytesIO(b"" if kind == "symlink" else b""))
    parts = _signed_part(tmp_path, buf.getvalue())
    with pytest.raises(PayloadFormatError):
        read_payload(tmp_path, parts)


def test_data_after_the_end_is_refused(tmp_path):
    payload = member_header(_name(b"x"), 1) + b"x" + padding(1) + END_OF_ARCHIVE + b"junk"
    parts = _signed_part(tmp_path, payload)
    with pytest.raises(PayloadFormatError, match="after the end"):
        read_payload(tmp_path, parts)
