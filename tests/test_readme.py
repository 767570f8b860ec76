"""Every command line the README shows parses as written (options exist, values have the right type).

The README's commands are its interface: a renamed or missing option must fail here, not in an
admin's terminal. Each ``overleaf-bundle ...`` / ``overleaf-import ...`` line of the README's
``sh`` blocks is split like a shell would (continuation lines joined, comments dropped) and
parsed by the real Click command behind it, down to the sub-command, without running it.
The demo (``bash tests/demo.sh``) and the integration tests run the same commands for real.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from bundler.cli import app as bundle_app
from importer.cli import app as import_app

README = Path(__file__).resolve().parent.parent / "README.md"
TOOLS = {"overleaf-bundle": bundle_app, "overleaf-import": import_app}


def readme_commands() -> list[str]:
    text = README.read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            words = shlex.split(line, comments=True) if line else []
            if words and words[0] in TOOLS:
                lines.append(line)
    return lines


def parse(line: str) -> typer.Context:
    words = shlex.split(line, comments=True)
    cmd = typer.main.get_command(TOOLS[words[0]])
    ctx = cmd.make_context(words[0], words[1:])
    while hasattr(cmd, "resolve_command"):   # a group (Typer vendors its own Click: no isinstance)
        protected = getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])
        name, cmd, rest = cmd.resolve_command(ctx, [*protected, *ctx.args])
        assert cmd is not None, f"no sub-command {name!r}"
        ctx = cmd.make_context(name, rest, parent=ctx)
    assert not ctx.args, f"arguments left over: {ctx.args}"
    return ctx


COMMANDS = readme_commands()
# Click's UsageError as Typer vendors it (NoSuchOption and "unexpected extra argument" are ones)
ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def test_the_readme_shows_both_tools():
    assert any(c.startswith("overleaf-bundle build") for c in COMMANDS)
    assert any(c.startswith("overleaf-import upgrade") for c in COMMANDS)
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line):
    parse(line)


def test_a_wrong_option_would_be_caught():
    for line, needle in (("overleaf-bundle build --from 5.5.4 --nonsense", "--nonsense"),
                         ("overleaf-import verify . --max-part-size 2M", "--max-part-size"),
                         ("overleaf-bundle plan --from 5.5.4 --to 6.2.2 --json extra", "extra")):
        with pytest.raises(ClickUsageError, match=needle):
            parse(line)
