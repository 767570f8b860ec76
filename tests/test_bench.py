"""The benchmark's pure parts: targets, report, py-spy summary, dataset shape (no engine needed)."""
from __future__ import annotations

from pathlib import Path

from bench import dataset
from bench.profile import summarize
from bench.report import evaluate_targets, markdown_snippet, text_table
from bench.run import summarize_runs


def _run(i: int, a: float = 100.0, b: float = 20.0, d: float = 24.0) -> dict:
    return {
        "run": i,
        "a": {"seconds": a, "bytes": 2_000_000_000, "files": 7},
        "b": {"seconds": b, "bytes": 2_060_000_000, "sync_seconds": 1.0},
        "c": {"seconds": 7.0, "bytes": 1_000_000_000},
        "d": {"seconds": d + 0.5, "seconds_excl_pull": d, "phases": {"pull": 0.5, "export": 18.0, "write": 5.0},
              "payload_bytes": 1_010_000_000, "bundle_bytes": 1_010_100_000, "raw_bytes": 2_060_000_000,
              "docker_save_bytes": 2_060_000_000, "parts": 1, "blobs": 40, "max_rss_bytes": 120_000_000,
              "cpu_seconds": 30.0},
        "e": {"seconds": 25.0, "bytes": 2_060_000_000},
        "f": {"seconds": 1.0, "bytes": 1_010_100_000, "tool_seconds": 0.8, "tool_mb_per_s": 1262.0,
              "max_rss_bytes": 60_000_000, "cpu_seconds": 1.0},
        "g": {"seconds": 30.0, "tool_load_seconds": 28.0, "sent_bytes": 2_060_000_000,
              "max_rss_bytes": 80_000_000, "cpu_seconds": 10.0},
    }


def _result() -> dict:
    runs = [_run(1, d=24.0), _run(2, d=26.0), _run(3, d=25.0)]
    r = {"command": "python3 -m bench.run --size 1 --runs 3", "runs": runs,
         "machine": {"nproc": 2, "cpu_model": "CPU", "memory_bytes": 24 * 2**30, "os": "Debian 12", "kernel": "6.1",
                     "docker_engine": "20.10.24", "docker_api": "1.41", "storage_driver": "overlay2",
                     "docker_cli": "28.2.2", "python": "3.11.7", "gzip": "gzip 1.12", "zstd": "zstd v1.5.4"},
         "dataset": {"scale": 1.0, "plan_images": dataset.PLAN_IMAGES, "unique_layers": 30,
                     "unique_raw_bytes": 2_060_000_000},
         "delta": {"hop": "6.2.1 -> 6.2.2", "build_seconds": 3.0, "payload_bytes": 4_100_000,
                   "changed_zstd3_bytes": 4_000_000, "changed_gzip_bytes": 4_200_000, "changed_layers": 3,
                   "image_layers": 11, "load_max_rss_bytes": 70_000_000},
         "memory": {"0.5": {"build": 110_000_000, "load": 80_000_000, "unique_raw_bytes": 1_030_000_000},
                    "1": {"build": 120_000_000, "load": 80_000_000, "unique_raw_bytes": 2_060_000_000}}}
    r.update(summarize_runs(runs))
    r["targets"] = evaluate_targets(r)
    return r


def test_targets_use_medians_of_per_run_ratios() -> None:
    r = _result()
    by_id = {t["id"]: t for t in r["targets"]}
    assert by_id["build_vs_save"]["value"] == 25.0 / 20.0 and by_id["build_vs_save"]["met"] is True
    assert by_id["build_vs_naive"]["value"] == 0.25 and by_id["build_vs_naive"]["met"] is True
    assert by_id["bytes_vs_naive"]["value"] == 1_010_000_000 / 2_000_000_000
    assert by_id["bytes_vs_zstd"]["met"] is True            # 1.01 <= 1.02
    assert by_id["verify_rate"]["met"] is True              # 1.01 GB/s
    assert by_id["verify_load_vs_docker_load"]["value"] == 31.0 / 25.0
    assert by_id["rss_flat_build"]["value"] == 120 / 110 and by_id["rss_flat_build"]["met"] is True
    assert by_id["delta"]["value"] == 4_100_000 / 4_000_000 and by_id["delta"]["met"] is True


def test_missed_targets_are_marked() -> None:
    r = _result()
    r["memory"]["1"]["build"] = 200_000_000
    r["max_rss_bytes"]["build"] = 200_000_000
    by_id = {t["id"]: t for t in evaluate_targets(r)}
    assert by_id["rss_build"]["met"] is False
    assert by_id["rss_flat_build"]["met"] is False


def test_report_texts_hold_no_machine_paths_and_escape_pipes() -> None:
    r = _result()
    md = markdown_snippet(r)
    assert "## Performance" in md and "python3 -m bench.run --size 1 --runs 3" in md
    assert "`docker save IMAGE \\| gzip`" in md           # a pipe inside a table cell is escaped
    assert "/tmp" not in md and "/work" not in md
    table = text_table(r)
    assert "MISSED" not in table and "met" in table


def test_py_spy_summary_by_thread(tmp_path: Path) -> None:
    raw = tmp_path / "build.txt"
    raw.write_text(
        "thread (11): MainThread;main (bundler/cli.py:160);put_stream (bundler/cache.py:160) 30\n"
        "thread (11);main (bundler/cli.py:160);put_stream (bundler/cache.py:159) 10\n"
        "thread (12): export-reader;_pump (bundler/export.py:82);readinto (/usr/lib/python3.11/socket.py:706) 60\n")
    s = summarize(raw)
    assert s["samples"] == 100
    main, reader = {t["thread"]: t for t in s["threads"]}["MainThread"], s["threads"][0]
    assert reader["thread"] == "export-reader" and reader["share"] == 0.6
    assert reader["top_leaf"][0]["frame"] == "readinto (socket.py:706)"
    assert main["samples"] == 40
    assert main["top_own_code"][0] == {"frame": "put_stream (bundler/cache.py:160)", "share_of_thread": 0.75}


def test_dataset_is_at_least_2_gb_at_size_1_with_a_shared_base() -> None:
    raw = {spec.tag: sum(layer.mib for layer in spec.layers) for spec in dataset.SPECS}
    in_plan = set()
    by_tag = {spec.tag: spec for spec in dataset.SPECS}
    for tag in dataset.PLAN_IMAGES:
        while tag in by_tag:
            in_plan.add(tag)
            tag = by_tag[tag].base
    assert sum(raw[t] for t in in_plan) * 2**20 >= 2e9
    assert sum(1 for s in dataset.SPECS if s.base == dataset.APP_BASE) == 3   # 4.2.9, 5.5.8, 6.2.1 share it
    assert by_tag[dataset.DELTA_NEW_IMAGE].base == dataset.DELTA_OLD_IMAGE
    kinds = {layer.kind for spec in dataset.SPECS for layer in spec.layers}
    assert kinds == {"text", "random"}
