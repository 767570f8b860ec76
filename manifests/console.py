"""What both command-line tools share: clean errors, --json output, progress bars.

Every command is decorated with :func:`command` (which calls :func:`run`): an
:class:`AirgapError` becomes a two-line message on stderr (what is wrong, what to do) and
its exit code; any other exception becomes exit code 1 with a one-line summary.
``--verbose`` adds the traceback. With ``--json`` the error is printed as a JSON object on
stdout too.

Terminal safety: a string that came from a bundle, a file name or host state may hold
escape sequences that repaint the terminal (a fake "Signature: good"). Wrap every such
value in :func:`safe` where it is put into a human message; :func:`say`, :func:`warn`
and the error printer also pass whole messages through :func:`safe_lines` (which keeps
the line breaks the message itself is made of). ``--json`` output is left exact:
``json.dumps`` escapes control characters itself.

    say(f"Bundle: {safe(m.from_version)} -> {safe(m.to_version)}")
    safe("ok\\x1b[2K\\rSignature: good")    # shown as: ok\\x1b[2K\\rSignature: good (no escape reaches the terminal)
"""
from __future__ import annotations

import functools
import json
import re
import sys
import traceback
from typing import Any, Callable, TypeVar

from .errors import AirgapError, DiskSpaceError, Interrupted


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI), and the Unicode bidi overrides/isolates
# and zero-width characters that reorder or hide text ("Trojan Source")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_KEEP_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def safe(text: object) -> str:
    """``text`` (any value: str() is taken) with every control character shown as a visible escape.

    Escapes C0 and C1 controls (ESC, CR, newline, tab, the one-byte CSI 0x9b...), DEL and the
    Unicode bidi/zero-width controls, so that printing it cannot move the cursor, clear lines,
    change colours or start a new line. Printable text, including non-ASCII letters, is kept.
    """
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def safe_lines(text: object) -> str:
    """As :func:`safe`, but keeps line breaks (for whole messages made of several lines)."""
    return _UNSAFE_KEEP_NL.sub(_escape, text if isinstance(text, str) else str(text))


class Ctx:
    """Global options shared by every command of a CLI."""

    verbose: bool = False
    json: bool = False
    emitted: int = 0      # JSON documents written on stdout in this run: one at the most

    def reset(self, *, verbose: bool = False, json: bool = False) -> None:
        """Start of a command-line run (the Typer callback): the global options, nothing emitted yet."""
        self.verbose, self.json, self.emitted = verbose, json, 0


CTX = Ctx()


def emit_json(obj: Any) -> None:
    """Write the run's JSON document on stdout (a failure after it adds no second one: see :func:`run`)."""
    CTX.emitted += 1
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def say(msg: str = "") -> None:
    """Human output: on stdout normally, on stderr when --json owns stdout."""
    print(safe_lines(msg), file=sys.stderr if CTX.json else sys.stdout, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {safe_lines(msg)}", file=sys.stderr, flush=True)


def interactive(*, secret: bool = False) -> bool:
    """Whether a question may be asked: stdin is a terminal (and, unless for a ``secret`` read through
    getpass, stderr is one too and --json does not own the output)."""
    try:
        if not sys.stdin.isatty():
            return False
        return secret or (sys.stderr.isatty() and not CTX.json)
    except (AttributeError, ValueError):   # closed or replaced streams
        return False


def _is_prompt_abort(err: BaseException) -> bool:
    """Ctrl-C (or end of input) at a ``typer.prompt``/``typer.confirm`` question: typer raises its Abort."""
    typer = sys.modules.get("typer")
    return typer is not None and isinstance(err, typer.Abort)


_INTERRUPTED = ("interrupted", "Run the same command again to continue (an upgrade: add --resume).")


def run(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; turn every failure into its message, hint and exit code (see :mod:`manifests.errors`)."""
    try:
        return fn()
    except AirgapError as err:
        _fail(err, err)
    except KeyboardInterrupt as err:
        _fail(Interrupted(*_INTERRUPTED), err)
    except OSError as err:
        _fail(_os_error(err), err)
    except Exception as err:  # noqa: BLE001 - last resort: never a bare traceback
        if _is_prompt_abort(err):
            _fail(Interrupted(*_INTERRUPTED), err)
        _fail(AirgapError(f"unexpected error: {type(err).__name__}: {safe(err)}",
                          "Run again with --verbose and report the output."), err)


F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Decorate a Typer command: its ``json_out`` option (``--json`` after the command's name) joins the
    global one, and its whole body runs under :func:`run` (clean errors, documented exit codes). The
    signature is the command's own (``functools.wraps``), so Typer sees its options unchanged.

        @app.command()
        @command
        def status(json_out: bool = JsonOpt) -> None: ...
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("json_out"):
            CTX.json = True
        return run(lambda: fn(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _os_error(err: OSError) -> AirgapError:
    """An OSError nobody expected, as the error that explains it (no space: 22; else 1)."""
    import errno as _errno

    if err.errno is None:  # e.g. an HTTP error from the engine API (requests raises OSError subclasses)
        return AirgapError(f"unexpected error: {type(err).__name__}: {safe(err)}",
                           "Run again with --verbose and report the output.")
    if err.errno == _errno.ENOSPC:
        return DiskSpaceError(f"no space left on the device: {err.filename or ''}".rstrip(),
                              "Free space (or choose another folder) and run the same command again.")
    return AirgapError(f"{err.strerror or err}: {err.filename or ''}".rstrip(": "), "Check the path and its permissions.")


def _fail(err: AirgapError, cause: BaseException) -> None:
    print(safe_lines(err.diagnostics()), file=sys.stderr)
    if CTX.verbose:
        traceback.print_exception(cause, file=sys.stderr)
    elif cause is not err:
        print("  (--verbose shows the cause)", file=sys.stderr)
    if CTX.json and not CTX.emitted:   # one JSON document per run: a result already out stays the only one
        emit_json(err.to_dict())
    sys.stderr.flush()
    raise SystemExit(err.exit_code)


class _NoBar:
    """What :func:`progress` returns when no bar is shown: counts like tqdm's, prints nothing, imports nothing."""

    def __init__(self, total: int | None) -> None:
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more."""
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Nothing to show."""

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "B", **kw: Any):
    """A tqdm bar on stderr, hidden when stderr is not a terminal unless forced.

    A hidden bar is a :class:`_NoBar`: scripts and ``--json`` runs do not pay tqdm's import at start-up.
    """
    force = kw.pop("force", False)
    if not force and not sys.stderr.isatty():
        return _NoBar(total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, dynamic_ncols=True, leave=False, **kw)
