"""Targets, the stdout table and the README's Markdown snippet, from the result dict of bench/run.py.

Every target is a ratio within one run (the median over the runs) or an absolute limit;
``evaluate_targets`` marks each met or missed. Nothing here names a path of the machine.
"""
from __future__ import annotations

from typing import Any

MB = 1_000_000
RSS_LIMIT = 150 * MB
FLAT_LIMIT = 1.10   # "flat": peak RSS grows by at most 10 % from the smaller size to the larger


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    ratios, rss = r["ratios"], r["max_rss_bytes"]
    out: list[dict[str, Any]] = []

    def add(key: str, what: str, value: float | None, op: str, limit: float, shown: str, limit_shown: str) -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"id": key, "target": f"{what} {op} {limit_shown}", "value": value, "measured": shown,
                    "met": met})

    x = ratios["build_vs_save"]
    add("build_vs_save", "build time (d, excl. pull) / docker save (b)", x, "<=", 1.25, f"{x:.2f} x", "1.25 x")
    x = ratios["build_vs_naive"]
    add("build_vs_naive", "build time (d, excl. pull) / save|gzip+sha256sum (a)", x, "<=", 0.25, f"{x:.2f} x",
        "0.25 x")
    x = ratios["bytes_vs_naive"]
    add("bytes_vs_naive", "bundle payload bytes / total of (a)", x, "<=", 0.55, f"{x:.3f} x", "0.55 x")
    x = ratios["bytes_vs_zstd"]
    add("bytes_vs_zstd", "bundle payload bytes / size of (c)", x, "<=", 1.02, f"{x:.3f} x", "1.02 x")
    x = ratios["verify_bytes_per_s"]
    add("verify_rate", "verify (f): bytes checked / wall time", x, ">=", 1e9, f"{x / 1e9:.2f} GB/s", "1 GB/s")
    x = ratios["verify_load_vs_docker_load"]
    add("verify_load_vs_docker_load", "verify (f) + load (g) / docker load (e)", x, "<=", 1.3, f"{x:.2f} x",
        "1.3 x")
    mem = r.get("memory") or {}
    for tool in ("build", "load"):
        peak = max([rss[tool]] + [v[tool] for v in mem.values()])
        add(f"rss_{tool}", f"peak RSS of {tool}, every run and size", peak, "<=", RSS_LIMIT, _mb(peak), "150 MB")
    if len(mem) >= 2:
        by_size = sorted(mem.items(), key=lambda kv: float(kv[0]))
        (s_small, small), (s_big, big) = by_size[0], by_size[-1]
        for tool in ("build", "load"):
            x = big[tool] / small[tool]
            add(f"rss_flat_{tool}", f"peak RSS of {tool}, size {s_big} / size {s_small}", x, "<=", FLAT_LIMIT,
                f"{x:.2f} x ({_mb(small[tool])} -> {_mb(big[tool])})", f"{FLAT_LIMIT:.2f} x (flat)")
    d = r.get("delta")
    if d:
        x = d["payload_bytes"] / d["changed_zstd3_bytes"]
        add("delta", "delta payload bytes / zstd -3 of the changed layers", x, "<=", 1.1,
            f"{x:.3f} x ({_gb(d['payload_bytes'])} / {_gb(d['changed_zstd3_bytes'])})", "1.1 x")
    return out


def _cpu(m: dict[str, Any]) -> str:
    """``client + engine CPU seconds (machine busy %)``: what the step cost the 2 cores."""
    if "cpu_seconds" not in m:
        return "-"
    busy = f" ({m['machine_busy'] * 100:.0f} %)" if "machine_busy" in m else ""
    return f"{m['cpu_seconds']:.1f} + {m.get('engine_cpu_seconds', float('nan')):.1f}{busy}"


def _steps(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(step, time, output, CPU, peak RSS) rows."""
    med, by = r["medians"], r["bytes"]
    rss = r["max_rss_bytes"]
    raw = r["dataset"]["unique_raw_bytes"]
    runs = r["runs"]

    def t(step: str) -> str:
        m = med[step]
        return f"{m['seconds']:.1f} ({m['min']:.1f}-{m['max']:.1f})"

    d_excl = [x["d"]["seconds_excl_pull"] for x in runs]
    phases = ", ".join(f"{k} {v:.1f}" for k, v in med["d"]["phases"].items() if k != "total")
    verify_rate = r["ratios"]["verify_bytes_per_s"]
    rows = [
        ("(a) `docker save IMAGE | gzip` per image, then `sha256sum`", t("a"),
         f"{_gb(by['a'])} in {runs[-1]['a']['files']} files", _cpu(med["a"]), "-"),
        ("(b) one `docker save -o` of all images", t("b"), _gb(by["b"]), _cpu(med["b"]), "-"),
        ("(c) `zstd -T0 -3` of (b)", t("c"), _gb(by["c"]), _cpu(med["c"]), "-"),
        ("(d) `overleaf-bundle build`, excl. its pull phase",
         f"{med['d']['seconds_excl_pull']:.1f} ({min(d_excl):.1f}-{max(d_excl):.1f})",
         f"payload {_gb(by['payload'])} in {runs[-1]['d']['parts']} part(s)", _cpu(med["d"]), _mb(rss["build"])),
        (f"(d) the whole command, by phase: {phases}", f"{med['d']['seconds']:.1f}", "", "", ""),
        ("(e) `docker load -i` of (b), empty engine", t("e"), f"{_gb(raw)} raw loaded", _cpu(med["e"]), "-"),
        ("(f) `overleaf-import verify`", t("f"), f"{verify_rate / 1e9:.2f} GB/s checked", _cpu(med["f"]),
         _mb(rss["verify"])),
        ("(g) `overleaf-import load` (verifies, then streams), empty engine", t("g"),
         f"{len(r['dataset']['plan_images'])} images, IDs pinned", _cpu(med["g"]), _mb(rss["load"])),
    ]
    d = r.get("delta")
    if d:
        rows.append((f"(h) delta bundle {d['hop']}, `build --have` receipt", f"{d['build_seconds']:.1f} (1 run)",
                     f"payload {_gb(d['payload_bytes'])}; changed layers {d['changed_layers']}/{d['image_layers']}: "
                     f"{_gb(d['changed_zstd3_bytes'])} zstd -3, {_gb(d['changed_gzip_bytes'])} gzip", "-",
                     _mb(d["load_max_rss_bytes"]) + " (its load)"))
    return rows


HEADER = ("step", "time s, median (min-max)", "output", "CPU s: client + engine (machine busy)", "peak RSS")


def _machine_line(m: dict[str, Any]) -> str:
    return (f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.1f} GiB RAM, {m['os']}, "
            f"kernel {m['kernel']}, Docker Engine {m['docker_engine']} (API {m['docker_api']}, "
            f"{m['storage_driver']}), Docker CLI {m['docker_cli']}, Python {m['python']}, {m['gzip']}, {m['zstd']}")


def _dataset_line(r: dict[str, Any]) -> str:
    ds = r["dataset"]
    return (f"synthetic path of `overleaf-bundle plan --from 4.2.8 --to 6.2.2 --mongo 5.0 --redis 6.2` "
            f"(size {ds['scale']:g}): {len(ds['plan_images'])} images, {ds['unique_layers']} unique layers, "
            f"{_gb(ds['unique_raw_bytes'])} of unique raw layer data")


def _status(t: dict[str, Any]) -> str:
    return "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")


def _memory_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for size, v in sorted((r.get("memory") or {}).items(), key=lambda kv: float(kv[0])):
        rows.append((size, _gb(v["unique_raw_bytes"]), _mb(v["build"]), _mb(v["load"])))
    return rows


def text_table(r: dict[str, Any]) -> str:
    lines = [f"Machine: {_machine_line(r['machine'])}", f"Data: {_dataset_line(r)}",
             f"Command: {r['command']}   (times in seconds: median of {len(r['runs'])} runs (min-max))", ""]
    rows = [HEADER] + _steps(r)
    widths = [max(len(row[i].replace("`", "")) for row in rows) for i in range(len(HEADER))]
    for row in rows:
        lines.append("  ".join(c.replace("`", "").ljust(w) for c, w in zip(row, widths)).rstrip())
    lines += ["", "Peak RSS by size:"]
    for size, raw, b, ld in _memory_rows(r):
        lines.append(f"  size {size}: {raw} raw   build {b}   load {ld}")
    lines += ["", "Targets:"]
    tw = max(len(t["target"]) for t in r["targets"])
    mw = max(len(t["measured"]) for t in r["targets"])
    for t in r["targets"]:
        lines.append(f"  {t['target'].ljust(tw)}  {t['measured'].ljust(mw)}  {_status(t)}")
    return "\n".join(lines)


def _md(cell: str) -> str:
    """A table cell: a ``|`` (even inside a code span) would end the cell."""
    return cell.replace("|", "\\|")


def markdown_snippet(r: dict[str, Any]) -> str:
    met = sum(1 for t in r["targets"] if t["met"])
    lines = [
        "## Performance",
        "",
        f"Measured with `{r['command']}` (as root, from the repository root; it starts its own engines and "
        f"registry). Times are medians of {len(r['runs'])} runs (min-max) in seconds, every step on the same "
        "images, in the same run. Targets are ratios within a run.",
        "",
        f"- Machine: {_machine_line(r['machine'])}.",
        f"- Data: {_dataset_line(r)}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---|---|---|---|",
    ]
    for row in _steps(r):
        lines.append("| " + " | ".join(map(_md, row)) + " |")
    lines += ["", "| size | raw data | build peak RSS | load peak RSS |", "|---|---|---|---|"]
    for row in _memory_rows(r):
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Notes: peak RSS is the `ru_maxrss` of our process (the engine's memory is not counted). CPU is "
              "the client's process tree plus the engine's dockerd; \"machine busy\" is the share of both cores in "
              "use during the step (other work on the machine counts too). `docker save -o` leaves its file in the "
              "page cache, while the build fsyncs its cache entries and parts. Every image was pulled before the "
              "build, so its pull phase (reported apart) only checks manifests.",
              "", f"Targets ({met} of {len(r['targets'])} met):", "", "| target | measured | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {_md(t['target'])} | {_md(t['measured'])} | {_status(t)} |")
    return "\n".join(lines) + "\n"
