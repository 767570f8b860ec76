"""What both command-line tools share: clean errors, --json output, progress bars.

Commands call :func:`run` with a function; an :class:`AirgapError` becomes a
two-line message on stderr (what is wrong, what to do) and its exit code; any other
exception becomes exit code 1 with a one-line summary. ``--verbose`` adds the
traceback. With ``--json`` the error is printed as a JSON object on stdout too.
"""
from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable

from .errors import AirgapError


class Ctx:
    """Global options shared by every command of a CLI."""

    verbose: bool = False
    json: bool = False


CTX = Ctx()


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def say(msg: str = "") -> None:
    """Human output: on stdout normally, on stderr when --json owns stdout."""
    print(msg, file=sys.stderr if CTX.json else sys.stdout, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except AirgapError as err:
        _fail(err.message, err.hint, err.exit_code, err)
    except KeyboardInterrupt as err:
        _fail("interrupted", "Run the same command again to continue (an upgrade: add --resume).", 130, err)
    except OSError as err:
        import errno as _errno
        if err.errno is None:  # e.g. an HTTP error from the engine API (requests raises OSError subclasses)
            _fail(f"unexpected error: {type(err).__name__}: {err}",
                  "Run again with --verbose and report the output.", 1, err)
        if err.errno == _errno.ENOSPC:
            _fail(f"no space left on the device: {err.filename or ''}".rstrip(),
                  "Free space (or choose another folder) and run the same command again.", 22, err)
        _fail(f"{err.strerror or err}: {err.filename or ''}".rstrip(": "),
              "Check the path and its permissions.", 1, err)
    except Exception as err:  # noqa: BLE001 - last resort: never a bare traceback
        _fail(f"unexpected error: {type(err).__name__}: {err}",
              "Run again with --verbose and report the output.", 1, err)


def _fail(message: str, hint: str, code: int, err: BaseException) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"  -> {hint}", file=sys.stderr)
    if CTX.verbose:
        traceback.print_exception(err, file=sys.stderr)
    elif not isinstance(err, AirgapError):
        print("  (--verbose shows the cause)", file=sys.stderr)
    if CTX.json:
        details = getattr(err, "details", None)  # e.g. the list of bad files, for scripts
        emit_json({"error": message, "hint": hint, "exit_code": code, **(details if isinstance(details, dict) else {})})
    sys.stderr.flush()
    raise SystemExit(code)


def progress(total: int | None, desc: str, unit: str = "B", **kw: Any):
    """A tqdm bar on stderr, hidden when stderr is not a terminal unless forced."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, disable=not sys.stderr.isatty() and not kw.pop("force", False),
                dynamic_ncols=True, leave=False, **kw)
