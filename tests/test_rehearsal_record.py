"""The rehearsal record (importer/upgrade/rehearsal_record.py): round trip and strict reading. Pure tests."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from importer.upgrade.rehearsal_record import RehearsalRecord, StepTiming
from manifests.errors import ToolkitError


def _record() -> RehearsalRecord:
    r = RehearsalRecord.new("b-1", "5.5.8", "6.2.2", sandbox="/srv/tk.rehearsal")
    r.add_step(StepTiming("01-backup", "backup", "Backup", "done", 3.25))
    r.add_step(StepTiming("02-app-6.2.2", "app", "Overleaf 6.2.2", "failed", 10.0))
    r.backup_seconds, r.backup_bytes, r.health_seconds = 2.0, 4096, 1.5
    return r


def test_a_saved_record_reads_back_the_same(tmp_path):
    r = _record()
    path = r.save(tmp_path)
    assert path.parent == tmp_path / ".overleaf-airgap" / "rehearsals"
    back = RehearsalRecord.load(path)
    assert back == r
    assert back.total_seconds == pytest.approx(3.25 + 10.0 + 2.0 + 1.5)


@pytest.mark.parametrize("change", [
    lambda d: d.update(schema=2), lambda d: d.update(kind="journal"), lambda d: d.update(ok="yes"),
    lambda d: d["steps"][0].update(seconds=-1), lambda d: d["steps"][0].update(status="maybe"),
    lambda d: d.update(steps={}), lambda d: d.update(backup_bytes=1.5), lambda d: d.pop("sandbox"),
])
def test_a_record_that_is_not_what_save_writes_is_refused(tmp_path, change):
    d = _record().to_dict()
    change(d)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ToolkitError, match="malformed"):
        RehearsalRecord.load(path)


def test_a_fifo_or_non_json_record_is_refused(tmp_path):
    import os
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ToolkitError):
        RehearsalRecord.load(fifo)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(ToolkitError):
        RehearsalRecord.load(bad)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.floats(0, 1e6)), max_size=5))
def test_any_record_round_trips_through_its_dict(steps):
    r = RehearsalRecord.new("b", "4.2.9", "5.5.8", sandbox="s")
    for i, (title, seconds) in enumerate(steps):
        r.add_step(StepTiming(f"{i:02d}", "app", title, "done", seconds))
    assert RehearsalRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
