"""The commands the home page and Getting started show work as written, on the memory broker.

Each `taskflow run` starts, handles work for a moment and exits 0 on SIGINT (Ctrl+C) or SIGTERM;
each other command exits 0, and `taskflow info` prints what the page says it prints. The
commands with `--broker kafka://…` run in tests/kafka/test_docs_commands_kafka.py.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from tests._doc_commands import Command, shown, workdir
from tests._process import ROOT, AppProcess

PAGES = ("index.md", "getting-started.md")
COMMANDS = [c for page in PAGES for c in shown(page) if not c.on_kafka]


def test_the_pages_show_the_commands_tested_here() -> None:
    # A page whose blocks changed shape would otherwise leave nothing to run.
    assert [(c.page, c.line) for c in COMMANDS] == [
        ("index.md", "taskflow run examples.billing:app"),
        ("index.md", "taskflow info examples.billing:app"),
        ("getting-started.md", "taskflow --version"),
        ("getting-started.md", "taskflow info quickstart:app"),
        ("getting-started.md", "taskflow run quickstart:app"),
    ]


RUNS = [c for c in COMMANDS if c.argv[1] == "run"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", RUNS, ids=[c.line for c in RUNS])
def test_a_run_the_pages_show_starts_and_stops_cleanly(
    command: Command, sig: signal.Signals, tmp_path: Path
) -> None:
    program, _, reference, *args = command.argv
    env = {"TASKFLOW_BROKER": "", "TASKFLOW_REDIS_URL": ""}
    cwd = workdir(command, tmp_path)
    with AppProcess(reference, *args, env=env, cwd=cwd, program=[program]) as app:
        app.wait_for(r"→ consuming orders")
        if reference.startswith("quickstart"):
            app.wait_for(r"\[on_order\] order 1 from customer-1")  # it did some work
        assert app.stop(sig, timeout=30) == 0
    assert "stopped cleanly" in app.log


OTHERS = [c for c in COMMANDS if c.argv[1] != "run"]


@pytest.mark.parametrize("command", OTHERS, ids=[c.line for c in OTHERS])
def test_another_command_the_pages_show_exits_0(command: Command, tmp_path: Path) -> None:
    done = subprocess.run(
        command.argv,
        cwd=workdir(command, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / command.page).read_text()
    if command.page == "getting-started.md":
        output = "\n".join(line.rstrip() for line in done.stdout.splitlines())
        assert output  # what the page shows after the command is what it prints
        shown_output = _block_after(page, command.line)
        assert _timeless(shown_output) == _timeless(output)


def _block_after(page: str, line: str) -> str:
    """The text block that follows the bash block holding `line`."""
    after = page[page.index(f"\n{line}\n") :]
    match = re.search(r"```text\n(.*?)\n```", after, re.DOTALL)
    assert match is not None, f"no output shown after {shlex.quote(line)}"
    return match.group(1)


def _timeless(text: str) -> str:
    return re.sub(r"next \S+", "next <time>", text)
