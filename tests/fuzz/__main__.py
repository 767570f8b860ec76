"""``python3 -m tests.fuzz [--seconds N] [NAME ...]``: run each harness for N seconds (atheris/libFuzzer).

Each harness runs in its own process (libFuzzer owns the process and exits at the end).
A crashing or hanging input is saved as ``tests/fuzz/crashes/<harness>-crash-<sha1>``; the
run then goes on with the next harness, and the exit code is 1 if anything was found.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import HARNESSES

HERE = Path(__file__).resolve().parent


def _child(name: str, argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        mod = importlib.import_module(HARNESSES[name])
    allowed = tuple(mod.ALLOWED)

    def one(data: bytes) -> None:
        try:
            mod.target(data)
        except allowed:
            pass

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.fuzz", description=__doc__)
    ap.add_argument("--seconds", type=int, default=60, help="time per harness (default 60)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("names", nargs="*", help=f"harnesses to run (default all: {', '.join(HARNESSES)})")
    args, rest = ap.parse_known_args()
    if args.child:
        _child(args.child, [*args.names, *rest])  # the corpus folder, then libFuzzer's -flags
        return 0
    names = args.names or list(HARNESSES)
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        ap.error(f"unknown harness(es) {unknown}; known: {', '.join(HARNESSES)}")
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    found = 0
    for name in names:
        mod = importlib.import_module(HARNESSES[name])
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
            for i, seed in enumerate(getattr(mod, "SEEDS", [])):
                Path(corpus, f"seed-{i}").write_bytes(seed)
            start = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "tests.fuzz", "--child", name, corpus,
                 f"-max_total_time={args.seconds}", "-timeout=10", "-rss_limit_mb=2048",
                 f"-artifact_prefix={crashes}/{name}-", "-print_final_stats=1"],
                cwd=HERE.parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            took = time.monotonic() - start
        runs = [line for line in proc.stdout.splitlines() if line.startswith("stat::number_of_executed_units")]
        status = "ok" if proc.returncode == 0 else f"FINDING (exit {proc.returncode})"
        print(f"{name:16s} {took:6.1f} s  {runs[0].split(':')[-1].strip() if runs else '?':>9s} runs  {status}")
        if proc.returncode != 0:
            found += 1
            print("\n".join(proc.stdout.splitlines()[-40:]))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
