"""Targets, the stdout table and the README's Performance section, from the result dict of bench/run.py.

Every target is a ratio within one run (the median of the per-run ratios) or an absolute
limit; ``evaluate_targets`` marks each met, missed, or n/a (a step failed). The Markdown
ends with ``result["analysis"]`` (hand-written paragraphs kept in the JSON: what limits
each missed target, from the profiles) when present. Nothing here names a path of the machine.

    result["targets"] = evaluate_targets(result)
    Path("bench/results.md").write_text(markdown_snippet(result))
"""
from __future__ import annotations

import math
from typing import Any

MB = 1_000_000
RSS_LIMIT = 150 * MB
LOAD_LIMIT = 1.05          # load / the engine's own `docker load`, on both image stores (issue 17)
FLAT_LIMIT = 1.10   # "flat": peak RSS grows by at most 10 % from the smaller size to the larger
STORES = ("classic", "containerd")
STORE_NAMES = {"classic": "classic store", "containerd": "containerd store"}


def _gb(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MB:.0f} MB"


def engine_label(r: dict[str, Any], store: str) -> str:
    v = ((r.get("machine") or {}).get("engines") or {}).get(store, {}).get("version") or "?"
    return f"Engine {'.'.join(str(v).split('.')[:2])} ({STORE_NAMES[store]})"


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = r.get("ratios") or {}
    out: list[dict[str, Any]] = []

    def add(key: str, what: str, value: float | None, op: str, limit: float, shown: str, limit_shown: str) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met, shown = None, "failed / not measured"
        else:
            met = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
        out.append({"id": key, "target": f"{what} {op} {limit_shown}", "value": value, "measured": shown,
                    "met": met})

    x = ratios.get("build_vs_save")
    add("build_vs_save", "engine-free build / one `docker save` (Engine 20.10)", x, "<=", 0.5,
        f"{x:.2f} x" if x else "", "0.5 x")
    x = ratios.get("build_vs_skopeo")
    add("build_vs_skopeo", "engine-free build / `skopeo copy` into one OCI layout", x, "<=", 1.2,
        f"{x:.2f} x" if x else "", "1.2 x")
    for store in STORES:
        if f"load_vs_docker_load_{store}" not in ratios:
            continue
        label = engine_label(r, store)
        x = ratios.get(f"load_vs_docker_load_{store}")
        add(f"load_vs_docker_load_{store}", f"`load` / `docker load` of its own `docker save`, {label}", x, "<=",
            LOAD_LIMIT, f"{x:.2f} x" if x else "", f"{LOAD_LIMIT:.2f} x")
        x = ratios.get(f"load_vs_skopeo_{store}")
        add(f"load_vs_skopeo_{store}", f"`load` / `skopeo copy` into the engine (one image per call), {label}", x,
            "<", 1.0, f"{x:.2f} x" if x else "", "1 x")
    big = r.get("big_verify")
    if big is not None:      # the goal is for big bundles: judged on the big one when the run made it
        x = big.get("bytes_per_s") if isinstance(big.get("bytes_per_s"), (int, float)) else None
        what = (f"of the size-{big['scale']:g} bundle ({_gb(big['payload_bytes'])} of payload)"
                if "payload_bytes" in big else "of the big bundle (failed)")
        label = f"`verify` {what}: payload bytes / wall time (median of {big.get('runs', 0)})"
    else:
        rates = [ratios.get(f"verify_bytes_per_s_{s}") for s in STORES if f"verify_bytes_per_s_{s}" in ratios]
        rates_ok = [v for v in rates if isinstance(v, (int, float))]
        x = min(rates_ok) if rates_ok and len(rates_ok) == len(rates) else None
        label = "`verify`: payload bytes / wall time (median; the slower engine's run)"
    add("verify_rate", label, x, ">=", 2e9, f"{x / 1e9:.2f} GB/s" if x else "", "2 GB/s")
    if "startup_seconds" in ratios:
        x = ratios.get("startup_seconds")
        add("startup", "start-up: `overleaf-import verify` of a folder with no bundle, wall time (median of 7)", x, "<=", 0.15,
            f"{x:.2f} s" if x else "", "0.15 s")
    mem = r.get("memory") or {}
    kinds = ["build"] + [f"load_{s}" for s in STORES]
    for kind in kinds:
        vals = [v.get(kind) for v in mem.values()]
        peak = max(vals) if vals and all(isinstance(v, (int, float)) for v in vals) else None
        name = "build" if kind == "build" else f"load ({STORE_NAMES[kind[5:]]})"
        add(f"rss_{kind}", f"peak RSS of {name}, every run and size", peak, "<=", RSS_LIMIT, _mb(peak), "150 MB")
    if len(mem) >= 2:
        by_size = sorted(mem.items(), key=lambda kv: float(kv[0]))
        (s_small, small), (s_big, big) = by_size[0], by_size[-1]
        for kind in kinds:
            a, b = small.get(kind), big.get(kind)
            x = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
            name = "build" if kind == "build" else f"load ({STORE_NAMES[kind[5:]]})"
            add(f"rss_flat_{kind}", f"peak RSS of {name}, size {s_big} / size {s_small}", x, "<=", FLAT_LIMIT,
                f"{x:.2f} x ({_mb(a)} -> {_mb(b)})" if x else "", f"{FLAT_LIMIT:.2f} x (flat)")
    return out


def _t(m: dict[str, Any] | None) -> str:
    if not m or "seconds" not in m:
        return "failed" if m and "error" in m else "-"
    if m.get("runs", 1) > 1:
        return f"{m['seconds']:.1f} ({m['min']:.1f}-{m['max']:.1f})"
    return f"{m['seconds']:.1f}"


def _cpu(m: dict[str, Any] | None) -> str:
    """``ours + engine (machine busy %)``: what the step cost the cores."""
    if not m or "cpu_seconds" not in m:
        return "-"
    busy = f" ({m['machine_busy'] * 100:.0f} %" if "machine_busy" in m else ""
    if busy:
        busy += f", others {m['others_busy'] * 100:.0f} %)" if "others_busy" in m else ")"
    return f"{m['cpu_seconds']:.1f} + {m.get('engine_cpu_seconds', 0.0):.1f}{busy}"


def _rss(m: dict[str, Any] | None) -> str:
    return _mb(m.get("max_rss_bytes")) if m and "max_rss_bytes" in m else "-"


ONLINE_HEADER = ("online step (from the local registry)", "time s, median (min-max)", "bytes written",
                 "CPU s: command + engine (machine busy, of it others)", "peak RSS")


def _online_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    on = r["online"]
    ds = r["dataset"]
    b = on.get("build", {})
    phases = ", ".join(f"{k} {v:.1f}" for k, v in (b.get("phases") or {}).items() if k != "total")
    z = on.get("build_zstd", {})
    zphases = ", ".join(f"{k} {v:.1f}" for k, v in (z.get("phases") or {}).items() if k != "total")
    return [
        ("upstream: the plan's linux/amd64 blobs as the registry serves them (gzip)", "-",
         _gb(ds.get("upstream_bytes")), "-", "-"),
        ("`docker save -o` of the 7 images, Engine 20.10 (pulled first, not timed)", _t(on.get("save")),
         _gb(on.get("save", {}).get("bytes")), _cpu(on.get("save")), "-"),
        ("`docker save -o` of the same, Engine 26 (containerd store; once, at set-up)", _t(r.get("save_containerd")),
         _gb((r.get("save_containerd") or {}).get("bytes")), _cpu(r.get("save_containerd")), "-"),
        ("`skopeo copy docker://… oci:LAYOUT:REF`, 7 calls, one layout", _t(on.get("skopeo")),
         _gb(on.get("skopeo", {}).get("bytes")), _cpu(on.get("skopeo")), _rss(on.get("skopeo"))),
        ("`overleaf-bundle build`, no engine, exact blobs" + (f" ({phases})" if phases else ""), _t(b),
         _gb(b.get("bytes")), _cpu(b), _rss(b)),
        ("`overleaf-bundle build --recompress zstd`" + (f" ({zphases})" if zphases else ""), _t(z),
         _gb(z.get("bytes")), _cpu(z), _rss(z)),
    ]


def _offline_header(r: dict[str, Any]) -> tuple[str, ...]:
    cols = ["offline step"]
    for store in STORES:
        cols += [f"{engine_label(r, store)}: s", "CPU s: command + engine"]
    cols.append("peak RSS")
    return tuple(cols)


def _offline_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    off = r.get("offline") or {}
    rows = []
    names = [("verify", "`overleaf-import verify` (payload GB/s)"),
             ("docker_load", "`docker load -i` of that engine's own `docker save`"),
             ("load", "`overleaf-import load` (verifies as it streams; image IDs checked)"),
             ("skopeo", "`skopeo copy oci:LAYOUT:REF docker-daemon:REF`, 7 calls")]
    for step, name in names:
        row = [name]
        rss = []
        for store in STORES:
            m = (off.get(store) or {}).get(step)
            t = _t(m)
            if step == "verify" and m and "bytes_per_s" in m:
                t += f" = {m['bytes_per_s'] / 1e9:.2f} GB/s"
                if m.get("tool_bytes_per_s"):
                    t += f" (own timer: {m['tool_bytes_per_s'] / 1e9:.2f} GB/s)"
            row += [t, _cpu(m)]
            if m and "max_rss_bytes" in m and step in ("verify", "load"):
                rss.append(m["max_rss_bytes"])
        row.append(_mb(max(rss)) if rss else "-")
        rows.append(tuple(row))
    delta = r.get("delta") or {}
    if delta:
        row = ["delta 6.2.1 -> 6.2.2: `overleaf-import load` of the bundle built `--have` the host's receipt"]
        rss = []
        for store in STORES:
            d = delta.get(store) or {}
            m = d.get("load")
            row += [_t(m), _cpu(m)]
            if m and "max_rss_bytes" in m:
                rss.append(m["max_rss_bytes"])
        row.append(_mb(max(rss)) if rss else "-")
        rows.append(tuple(row))
    return rows


def _delta_lines(r: dict[str, Any]) -> list[str]:
    out = []
    for store, d in (r.get("delta") or {}).items():
        if "build" not in d:
            out.append(f"delta, {engine_label(r, store)}: failed ({d.get('error', '?')[:200]})")
            continue
        b = d["build"]
        out.append(f"delta, {engine_label(r, store)}: receipt {d['receipt_seconds']:.1f} s, build --have "
                   f"{b['seconds']:.1f} s, payload {_gb(b['payload_bytes'])} ({b.get('omitted_layers')} layers left "
                   f"out; the {d['changed_layers']} of {d['image_layers']} layers the host lacks are "
                   f"{_gb(d['changed_upstream_bytes'])} upstream, the whole image "
                   f"{_gb(d['full_image_upstream_bytes'])})")
    return out


def _big_verify_lines(r: dict[str, Any]) -> list[str]:
    big = r.get("big_verify")
    if big is None:
        return []
    if "seconds" not in big:
        return [f"verify of the big bundle: failed ({str(big.get('error', '?'))[:200]})"]
    own = f", own timer {big['tool_seconds']:.2f} s" if isinstance(big.get("tool_seconds"), (int, float)) else ""
    return [f"verify of a big bundle (size {big['scale']:g}, {_gb(big['payload_bytes'])} of payload, built from a "
            f"registry of its own): {big['seconds']:.2f} s ({big['min']:.2f}-{big['max']:.2f}) = "
            f"{big['bytes_per_s'] / 1e9:.2f} GB/s{own}, peak RSS {_mb(big.get('max_rss_bytes'))}"]


def _memory_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for size, v in sorted((r.get("memory") or {}).items(), key=lambda kv: float(kv[0])):
        rows.append((size, _gb(v.get("unique_raw_bytes")), _mb(v.get("build")),
                     *(_mb(v.get(f"load_{s}")) for s in STORES)))
    return rows


def _ratio_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    names = {"build_vs_save": "build / docker save", "build_vs_skopeo": "build / skopeo copy to OCI layout",
             "build_zstd_vs_save": "build --recompress zstd / docker save",
             "build_zstd_vs_build": "build --recompress zstd / build"}
    rows = []
    for k, v in (r.get("ratios") or {}).items():
        if k.startswith("verify_bytes_per_s_") or k == "startup_seconds":   # shown with the targets
            continue
        name = names.get(k)
        if name is None:
            for store in STORES:
                if k.endswith("_" + store):
                    base = k[: -len(store) - 1]
                    name = {"load_vs_docker_load": "load / docker load", "load_vs_skopeo": "load / skopeo copy in",
                            "skopeo_vs_docker_load": "skopeo copy in / docker load"}.get(base, base)
                    name += f", {engine_label(r, store)}"
        rows.append((name or k, "-" if v is None else f"{v:.2f} x"))
    ds, on = r.get("dataset") or {}, r.get("online") or {}
    up = ds.get("upstream_bytes")
    if up:
        for key, name in (("save", "docker save"), ("skopeo", "OCI layout"), ("build", "bundle"),
                          ("build_zstd", "bundle --recompress zstd")):
            size = (on.get(key) or {}).get("bytes")
            if size:
                rows.append((f"bytes: {name} / upstream", f"{size / up:.3f} x"))
    return rows


def _status(t: dict[str, Any]) -> str:
    return "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")


def _machine_line(m: dict[str, Any]) -> str:
    engines = "; ".join(f"{store}: Engine {e['version']} (API {e['api']}, {e['driver']})"
                        for store, e in (m.get("engines") or {}).items())
    return (f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.1f} GiB RAM, {m['os']}, "
            f"kernel {m['kernel']}, Python {m['python']}, Docker CLI {m['docker_cli']}, skopeo {m['skopeo']}; "
            f"{engines}")


def _dataset_line(r: dict[str, Any]) -> str:
    ds = r["dataset"]
    return (f"synthetic images of `overleaf-bundle plan --from 4.2.8 --to 6.2.2 --mongo 5.0 --redis 6.2` "
            f"(size {ds['scale']:g}): {len(ds['plan_images'])} images ({len(ds.get('indexes', []))} of them "
            f"two-platform OCI indexes), {ds['unique_layers']} unique layers, {_gb(ds['unique_raw_bytes'])} of "
            f"unique raw layer data, {_gb(ds.get('upstream_bytes'))} as gzip blobs in the registry")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [header] + rows
    widths = [max(len(row[i].replace("`", "")) for row in rows) for i in range(len(header))]
    return ["  ".join(c.replace("`", "").ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def text_table(r: dict[str, Any]) -> str:
    lines = [f"Machine: {_machine_line(r['machine'])}", f"Data: {_dataset_line(r)}",
             f"Command: {r['command']}  ({r.get('date', '')}; times in s: median of {len(r['runs'])} runs (min-max))",
             ""]
    lines += _table(ONLINE_HEADER, _online_rows(r)) + [""]
    lines += _table(_offline_header(r), _offline_rows(r)) + [""]
    lines += _delta_lines(r)
    lines += ["", "Peak RSS by size:"]
    lines += _table(("size", "raw data", "build", *(f"load, {STORE_NAMES[s]}" for s in STORES)), _memory_rows(r))
    lines += ["", "Ratios (median of the per-run ratios):"]
    lines += ["  " + line for line in _table(("ratio", "value"), _ratio_rows(r))[1:]]
    lines += ["", "Targets:"]
    tw = max(len(t["target"].replace("`", "")) for t in r["targets"])
    mw = max(len(t["measured"]) for t in r["targets"])
    for t in r["targets"]:
        lines.append(f"  {t['target'].replace('`', '').ljust(tw)}  {t['measured'].ljust(mw)}  {_status(t)}")
    if r.get("errors"):
        lines += ["", "Failed steps:"] + [f"  {e.splitlines()[0][:200]}" for e in r["errors"]]
    return "\n".join(lines)


def _md(cell: str) -> str:
    """A table cell: a ``|`` (even inside a code span) would end the cell."""
    return cell.replace("|", "\\|")


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return (["| " + " | ".join(map(_md, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(_md, row)) + " |" for row in rows])


def markdown_snippet(r: dict[str, Any]) -> str:
    met = sum(1 for t in r["targets"] if t["met"])
    lines = [
        "## Performance",
        "",
        f"Measured on {r.get('date', '?')} with `{r['command']}` (as root, from the repository root; it starts its "
        f"own engines and registry, and takes about {r.get('total_seconds', 0) / 60:.0f} minutes). Times are "
        f"medians of {len(r['runs'])} runs (min-max) in seconds, every tool on the same images in the same run; "
        "targets are ratios within the run.",
        "",
        f"- Machine: {_machine_line(r['machine'])}.",
        f"- Data: {_dataset_line(r)}.",
        "",
    ]
    lines += _md_table(ONLINE_HEADER, _online_rows(r)) + [""]
    lines += _md_table(_offline_header(r), _offline_rows(r)) + [""]
    lines += [f"- {line}" for line in _delta_lines(r) + _big_verify_lines(r)]
    lines += ["", *_md_table(("size", "raw data", "build peak RSS",
                              *(f"load peak RSS, {STORE_NAMES[s]}" for s in STORES)), _memory_rows(r)), ""]
    lines += ["Notes: peak RSS is the `ru_maxrss` of the command's process tree (never the engine's). CPU is the "
              "command's process tree plus the engine's `dockerd` and `containerd`; \"machine busy\" is the share of "
              "both cores in use during the step, \"others\" the part of it that neither the command nor the engine "
              "used (other work on the machine: noise). Each engine is emptied before each offline step. Debian 12's "
              "skopeo speaks Docker API 1.22, which Engine 26 refuses (minimum 1.24), so its copies into Engine 26 "
              "go through a small proxy that only rewrites the version in the request path (its CPU counts as "
              "skopeo's). Engine 26's `docker save` was made once at set-up from images pulled from the registry. "
              "Every command of ours runs with its bytecode compiled once at set-up, as an installed tool has it. `skopeo copy` "
              "and `overleaf-bundle build` take turns going first in a run (odd runs: skopeo). "
              "Start-up is the wall time of `overleaf-import verify` on a folder that holds no bundle (it stops at "
              "the missing manifest, exit 14), median of 7 runs after one untimed run that writes the bytecode, as "
              "an installed tool has it (Typer is held below 0.29, which imports pydantic when it converts the "
              "first option: about 0.1 s more).",
              "", "Every ratio (median of the per-run ratios):", ""]
    lines += _md_table(("ratio", "value"), _ratio_rows(r)) + [""]
    lines += [f"Targets ({met} of {len(r['targets'])} met):", ""]
    lines += _md_table(("target", "measured", ""), [(t["target"], t["measured"], _status(t)) for t in r["targets"]])
    if r.get("errors"):
        lines += ["", "Steps that failed in this run:", ""] + [f"- {e.splitlines()[0][:300]}" for e in r["errors"]]
    if r.get("analysis"):
        lines += ["", "### What limits the missed targets", ""]
        for para in r["analysis"]:
            lines += [para, ""]
        lines.pop()
    return "\n".join(lines) + "\n"
