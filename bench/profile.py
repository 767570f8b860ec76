"""py-spy helpers for ``python3 -m bench.run --profile``: record a command, then name its busiest frames.

py-spy samples every thread (``--idle`` keeps the ones that wait, so that a pipeline's
threads show where each spends its wall time) and writes collapsed stacks (``-f raw``):
one line per distinct stack, ``frame;frame;...;leaf COUNT``. :func:`summarize` gives,
per thread, its share of the samples and its top leaf frames (function, file:line).

    cmd = [*py_spy_wrap(Path("build.txt")), "overleaf-bundle", "build", ...]
    summarize(Path("build.txt"))["threads"][0]["top"]
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RATE = 50   # samples per second: enough for runs of tens of seconds, light on 2 cores


def py_spy_wrap(raw_out: Path) -> list[str]:
    return ["py-spy", "record", "--idle", "--threads", "--nonblocking", "-r", str(RATE), "-f", "raw",
            "-o", str(raw_out), "--"]


_THREAD = re.compile(r"^thread \((\d+|0x[0-9A-Fa-f]+)\)(?:: (.*))?$")
_OURS = re.compile(r"\((bundler|importer|manifests)/")


def _clean(frame: str) -> str:
    """Cut absolute paths down to the package part, as py-spy does for installed packages."""
    return re.sub(r"\(/[^)]*/((?:site-packages|lib/python[0-9.]+)/)?", "(", frame)


def summarize(raw: Path, top: int = 8) -> dict[str, Any]:
    """Per thread (by name): share of all samples, top leaf frames, top innermost frames of our own code."""
    leaf: dict[str, Counter] = defaultdict(Counter)
    ours: dict[str, Counter] = defaultdict(Counter)
    thread_total: Counter = Counter()
    total = 0
    lines = raw.read_text(errors="replace").splitlines()
    names = {m.group(1): m.group(2) for line in lines if (m := _THREAD.match(line.split(";", 1)[0])) and m.group(2)}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        thread = "?"
        if frames and (m := _THREAD.match(frames[0])):
            frames.pop(0)
            thread = m.group(2) or names.get(m.group(1), "?")
        if not frames:
            continue
        thread = re.sub(r"_\d+$", "_N", thread)  # pool threads (hash_0, hash_1) count as one kind
        total += n
        thread_total[thread] += n
        leaf[thread][_clean(frames[-1])] += n
        own = [f for f in frames if _OURS.search(f)]
        ours[thread][_clean(own[-1]) if own else "(not our code)"] += n
    threads = []
    for thread, n in thread_total.most_common():
        threads.append({
            "thread": thread, "samples": n, "share": round(n / total, 3) if total else 0.0,
            "top_leaf": [{"frame": f, "share_of_thread": round(c / n, 3)} for f, c in leaf[thread].most_common(top)],
            "top_own_code": [{"frame": f, "share_of_thread": round(c / n, 3)}
                             for f, c in ours[thread].most_common(top)],
        })
    return {"samples": total, "rate_hz": RATE, "threads": threads}
