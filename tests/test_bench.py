"""The benchmark: its pure parts (targets, report, py-spy summary, dataset shape, API proxy head
rewrite) and one smoke run of ``python3 -m bench.run`` at a tiny size on real engines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import dataset
from bench.apiproxy import rewrite_head
from bench.profile import summarize
from bench.report import evaluate_targets, markdown_snippet, text_table
from bench.run import main, summarize_runs, summarize_steps


def _step(seconds: float, **extra: float) -> dict:
    return {"seconds": seconds, "cpu_seconds": seconds / 2, "engine_cpu_seconds": 1.0, "machine_busy": 0.5,
            "max_rss_bytes": 80_000_000, **extra}


def _run(i: int, build: float = 4.0, load: float = 11.0) -> dict:
    offline = {store: {"verify": _step(0.25, bytes=640_000_000, bytes_per_s=640_000_000 / 0.25),
                       "docker_load": _step(10.0), "load": _step(load), "skopeo": _step(20.0)}
               for store in ("classic", "containerd")}
    offline["containerd"]["load"] = {"error": "load failed"} if i == 2 else offline["containerd"]["load"]
    return {"run": i, "online": {"save": _step(10.0, bytes=1_030_000_000), "skopeo": _step(5.0, bytes=640_000_000),
                                 "build": _step(build, bytes=641_000_000, phases={"fetch": build - 1, "write": 1.0}),
                                 "build_zstd": _step(12.0, bytes=500_000_000)},
            "offline": offline}


def _result() -> dict:
    runs = [_run(1, build=4.0), _run(2, build=6.0), _run(3, build=5.0, load=12.0)]
    r = {"command": "python3 -m bench.run --size 0.5 --runs 3 --mem-size 0.25", "date": "2026-12-01 12:00 UTC",
         "runs": runs, "total_seconds": 700.0,
         "machine": {"nproc": 2, "cpu_model": "CPU", "memory_bytes": 24 * 2**30, "os": "Debian 12", "kernel": "6.1",
                     "python": "3.11.7", "docker_cli": "28.2.2", "skopeo": "1.9.3",
                     "engines": {"classic": {"version": "20.10.24", "api": "1.41", "driver": "overlay2"},
                                 "containerd": {"version": "26.1.5", "api": "1.45", "driver": "overlayfs"}}},
         "dataset": {"scale": 0.5, "plan_images": dataset.PLAN_IMAGES, "unique_layers": 22, "indexes": ["mongo:8.0"],
                     "unique_raw_bytes": 1_030_000_000, "upstream_bytes": 640_000_000},
         "memory": {"0.25": {"unique_raw_bytes": 515_000_000, "build": 70_000_000, "load_classic": 80_000_000,
                             "load_containerd": 80_000_000},
                    "0.5": {"unique_raw_bytes": 1_030_000_000, "build": 72_000_000, "load_classic": 81_000_000,
                            "load_containerd": 200_000_000}},
         "errors": ["run 2, containerd store, load: load failed"]}
    r.update(summarize_runs(runs))
    r["targets"] = evaluate_targets(r)
    return r


def test_targets_use_medians_of_per_run_ratios_and_skip_failed_runs() -> None:
    r = _result()
    by_id = {t["id"]: t for t in r["targets"]}
    assert by_id["build_vs_save"]["value"] == 0.5 and by_id["build_vs_save"]["met"] is True
    assert by_id["build_vs_skopeo"]["value"] == 1.0 and by_id["build_vs_skopeo"]["met"] is True
    # 1.1 x misses the issue-17 goal of 1.05 x
    assert by_id["load_vs_docker_load_classic"]["value"] == 1.1 and by_id["load_vs_docker_load_classic"]["met"] is False
    # the failed run 2 is left out: median of 1.1 and 1.2
    assert by_id["load_vs_docker_load_containerd"]["value"] == pytest.approx(1.15)
    assert r["offline"]["containerd"]["load"]["failed_runs"] == 1
    assert by_id["load_vs_skopeo_classic"]["met"] is True                 # 0.55 < 1
    assert by_id["verify_rate"]["value"] == 2.56e9 and by_id["verify_rate"]["met"] is True
    assert by_id["rss_load_containerd"]["met"] is False                   # 200 MB at size 0.5
    assert by_id["rss_flat_load_containerd"]["met"] is False
    assert by_id["rss_flat_build"]["met"] is True
    assert "startup" not in by_id                                          # not measured in this record


def test_startup_target_is_judged_in_seconds() -> None:
    r = _result()
    r["ratios"]["startup_seconds"] = 0.21
    by_id = {t["id"]: t for t in evaluate_targets(r)}
    assert by_id["startup"]["met"] is False and by_id["startup"]["measured"] == "0.21 s"
    r["ratios"]["startup_seconds"] = 0.12
    assert {t["id"]: t for t in evaluate_targets(r)}["startup"]["met"] is True


def test_verify_target_is_judged_on_the_big_bundle_when_the_run_made_one() -> None:
    r = _result()
    records = [_step(s, bytes=2_600_000_000, bytes_per_s=2_600_000_000 / s) for s in (1.4, 1.6, 1.5)]
    r["big_verify"] = {"scale": 2, "payload_bytes": 2_600_000_000, "records": records, **summarize_steps(records)}
    t = {x["id"]: x for x in evaluate_targets(r)}["verify_rate"]
    assert t["value"] == 2_600_000_000 / 1.5 and t["met"] is False and "size-2 bundle" in t["target"]
    assert "verify of a big bundle (size 2, 2.60 GB of payload" in markdown_snippet({**r, "targets": [t]})
    r["big_verify"] = {"error": "build failed"}
    t = {x["id"]: x for x in evaluate_targets(r)}["verify_rate"]
    assert t["met"] is None                      # failed: not judged on the small bundle instead


def test_a_step_that_failed_in_every_run_gives_na() -> None:
    steps = summarize_steps([{"error": "boom"}, {"error": "boom"}])
    assert steps == {"error": "boom"}
    r = _result()
    for run in r["runs"]:
        run["online"]["skopeo"] = {"error": "skopeo missing"}
    r.update(summarize_runs(r["runs"]))
    t = {x["id"]: x for x in evaluate_targets(r)}["build_vs_skopeo"]
    assert t["met"] is None and t["measured"] == "failed / not measured"


def test_report_texts_hold_every_number_no_machine_paths_and_escape_pipes() -> None:
    r = _result()
    r["analysis"] = ["**load, containerd store**: limited by the engine's unpack (py-spy: 80 % waiting)."]
    md = markdown_snippet(r)
    assert md.startswith("## Performance") and "python3 -m bench.run --size 0.5 --runs 3 --mem-size 0.25" in md
    assert "2026-12-01 12:00 UTC" in md and "skopeo 1.9.3" in md and "Engine 26.1.5" in md
    assert "0.50 x" in md and "2.56 GB/s" in md and "MISSED" in md and "| met |" in md
    assert "### What limits the missed targets" in md and "py-spy: 80 %" in md
    assert "load failed" in md                                           # failed steps are listed
    assert "/tmp" not in md and "/work" not in md and "/root" not in md
    assert "`skopeo copy docker://… oci:LAYOUT:REF`, 7 calls, one layout" in md
    assert "bytes: bundle / upstream | 1.002 x" in md
    table = text_table(r)
    assert "MISSED" in table and "2.56 GB/s" in table


def test_py_spy_summary_by_thread(tmp_path: Path) -> None:
    raw = tmp_path / "build.txt"
    raw.write_text(
        "thread (11): MainThread;main (bundler/cli.py:160);put_stream (bundler/cache.py:160) 30\n"
        "thread (11);main (bundler/cli.py:160);put_stream (bundler/cache.py:159) 10\n"
        "thread (12): fetch_0;_pump (bundler/fetch.py:82);readinto (/usr/lib/python3.11/socket.py:706) 60\n")
    s = summarize(raw)
    assert s["samples"] == 100
    main_thread, reader = {t["thread"]: t for t in s["threads"]}["MainThread"], s["threads"][0]
    assert reader["thread"] == "fetch_N" and reader["share"] == 0.6
    assert reader["top_leaf"][0]["frame"] == "readinto (socket.py:706)"
    assert main_thread["top_own_code"][0] == {"frame": "put_stream (bundler/cache.py:160)", "share_of_thread": 0.75}


def test_dataset_shape_at_size_1() -> None:
    by_ref = {s.ref: s for s in dataset.SPECS}
    assert set(dataset.ALL_IMAGES) == set(by_ref)
    unique = {(layer.seed, layer.path): layer for ref in dataset.PLAN_IMAGES for layer in by_ref[ref].layers}
    assert sum(layer.mib for layer in unique.values()) * 2**20 >= 2e9
    assert {layer.kind for layer in unique.values()} == {"text", "random"}
    apps = [r for r in dataset.PLAN_IMAGES if r.startswith("sharelatex/")]
    assert len({by_ref[r].layers[:3] for r in apps}) == 1                 # one shared app base
    new, old = by_ref[dataset.DELTA_NEW_IMAGE].layers, by_ref[dataset.DELTA_OLD_IMAGE].layers
    assert new[:len(old)] == old and len(new) == len(old) + 2             # 6.2.2 = 6.2.1 + a hotfix
    assert all(by_ref[r].oci_index for r in dataset.PLAN_IMAGES if r.startswith(("mongo:", "redis:")))


def test_make_layer_is_a_deterministic_gzip_tar(tmp_path: Path) -> None:
    import gzip
    import hashlib
    import tarfile

    a = dataset.make_layer("/opt/x/blob.bin", 1 << 20, "text", "s", str(tmp_path / "a.gz"))
    b = dataset.make_layer("/opt/x/blob.bin", 1 << 20, "text", "s", str(tmp_path / "b.gz"))
    assert a == b and a["size"] < a["raw_size"] / 2
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == a["diff_id"] and len(raw) == a["raw_size"]
    with tarfile.open(tmp_path / "a.gz") as tar:
        assert tar.getnames() == ["opt", "opt/x", "opt/x/blob.bin"]


def test_proxy_lifts_old_api_versions_only() -> None:
    head = b"POST /v1.22/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\nX: y"
    out = rewrite_head(head)
    assert out.startswith(b"POST /v1.24/images/load?quiet=1 HTTP/1.1\r\n")
    assert b"keep-alive" not in out and out.endswith(b"X: y\r\nConnection: close\r\n\r\n")
    assert rewrite_head(b"GET /v1.41/_ping HTTP/1.1\r\nHost: d").startswith(b"GET /v1.41/_ping ")
    assert rewrite_head(b"GET /_ping HTTP/1.1").startswith(b"GET /_ping ")


@pytest.mark.engine
def test_benchmark_smoke_run_at_a_tiny_size(tmp_path: Path) -> None:
    """The whole benchmark once, at a tiny size (every layer 1 MiB), on its own real engines and registry."""
    out = tmp_path / "results.json"
    rc = main(["--size", "0.01", "--runs", "1", "--mem-size", "0.005", "--verify-size", "0.02", "--pause", "0", "--out", str(out),
               "--work-dir", str(tmp_path)])
    r = json.loads(out.read_text())
    assert r["errors"] == [] and rc == 0
    assert {t["id"] for t in r["targets"]} >= {"build_vs_save", "build_vs_skopeo", "load_vs_docker_load_classic",
                                               "load_vs_docker_load_containerd", "load_vs_skopeo_containerd",
                                               "verify_rate", "rss_flat_build", "rss_flat_load_containerd"}
    assert all(t["met"] is not None for t in r["targets"])
    assert r["online"]["build"]["bytes"] > r["dataset"]["upstream_bytes"] > 0
    assert r["delta"]["classic"]["build"]["omitted_layers"] > 0
    assert r["big_verify"]["payload_bytes"] > r["online"]["build"]["payload_bytes"] and r["big_verify"]["runs"] == 1
    md = (tmp_path / "results.md").read_text()
    assert "## Performance" in md and str(tmp_path) not in md
