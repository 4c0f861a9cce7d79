"""The Failures guide's walk-through, run as the page shows it, on a broker of its own.

docs/failures.md follows one parcel from its first failure to its replay and shows what each step
printed. This test runs the same steps (`taskflow run`, `taskflow send`, `taskflow dlq show`,
`taskflow dlq replay`, the /metrics and /status endpoints) and checks that every output the page
shows is what they print now, but for the times and the checkout's path, which differ each run.
The page wraps long lines to fit its code column: a line that goes on is followed by lines
indented by four spaces (a command's by a trailing backslash, as in a shell).

The broker is a fresh Tansu of the test's own (whatever `TASKFLOW_TEST_KAFKA` says), as a
reader's new local Kafka is: the topics are created as they are first used (4 partitions each)
and start empty, so partitions, offsets and counts are those of the page. The page says
`--broker kafka://localhost:9092` and `localhost:8080`; here they are the test broker's address
and a free port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests._doc_commands import TASKFLOW
from tests._process import ROOT, AppProcess
from tests._tansu import TansuBroker
from tests.kafka.conftest import KAFKA_ENV

PAGE = ROOT / "docs" / "failures.md"
APP = "examples.failures:app"
KAFKA = "kafka://localhost:9092"
P7 = """'{"id": "P-7", "country": "NL", "grams": 2400}' --key P-7"""
P8 = """'{"id": "P-8", "country": "DE", "grams": 40000}' --key P-8"""
SEND_P7 = f"taskflow send {APP} parcels {P7} --broker {KAFKA}"
SEND_P8 = f"taskflow send {APP} parcels {P8} --broker {KAFKA}"
SHOW = f"taskflow dlq show {APP} parcels.DLQ --broker {KAFKA}"
DRY_RUN = f"taskflow dlq replay {APP} parcels.DLQ --error KeyError --dry-run --broker {KAFKA}"
REPLAY = f"taskflow dlq replay {APP} parcels.DLQ --error KeyError --broker {KAFKA}"
METRICS = "curl -s localhost:8080/metrics | grep -E '^taskflow_consumer_(retries|dead_letters)'"
STATUS_FIELDS = ("name", "group", "topics", "retry_topics", "dead_letter", "lag")
STATUS = f"curl -s localhost:8080/status | jq -c '.workers[] | {{{', '.join(STATUS_FIELDS)}}}'"
RUN = f"taskflow run {APP} --broker {KAFKA} --http-port 8080"
RUN_FIXED = f"PARCELS_FIXED=1 {RUN}"

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPACES = re.compile(r"\s+")
CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ")
MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
FRAME = re.compile(r'File "[^"]*/(examples|taskflow)/([^"]+)", line \d+')


@dataclass(frozen=True, slots=True)
class Shown:
    """One command the page shows in a `console` block, and the output it shows for it."""

    command: str
    output: list[str]


def blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == kind]


def unwrap(lines: list[str]) -> list[str]:
    """The lines as printed: each indented line goes on the one before it, after a space, or
    right after it when that one ends in a comma (a wrap inside a metric's labels or JSON)."""
    whole: list[str] = []
    for line in lines:
        if line.startswith("    ") and whole:
            glue = "" if whole[-1].endswith(",") else " "
            whole[-1] += glue + line.strip()
        else:
            whole.append(line)
    return whole


def command(body: str) -> tuple[str, list[str]]:
    """The command a block starts with (its `\\`-continued lines joined), and the rest."""
    lines = body.splitlines()
    parts = [lines.pop(0)]
    while parts[-1].endswith("\\"):
        parts[-1] = parts[-1].removesuffix("\\").rstrip()
        parts.append(lines.pop(0).strip())
    return " ".join(parts), lines


def console() -> list[Shown]:
    """The page's `console` blocks: a `$ command`, then what it printed."""
    shown = []
    for body in blocks("console"):
        line, output = command(body)
        assert line.startswith("$ "), line
        shown.append(Shown(line.removeprefix("$ "), unwrap(output)))
    return shown


def logged() -> list[str]:
    """The log lines the page shows: its `text` blocks, and the tracebacks in `pytb` ones,
    without the `…` that stands for the frames left out."""
    lines = [line for body in blocks("text") for line in unwrap(body.splitlines())]
    lines += [line for body in blocks("pytb") for line in body.splitlines()]
    return [line for line in lines if line.strip() != "…"]


def normal(line: str) -> str:
    """`line` without what differs from run to run: the times, the checkout's path, and the
    line numbers inside the files (which would fail the page at every unrelated edit)."""
    line = SPACES.sub(" ", CLOCK.sub("HH:MM:SS.mmm ", line))
    line = MOMENT.sub("<time>", line)
    return FRAME.sub(r'File "…/\1/\2", line N', line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def fresh() -> Iterator[str]:
    """A broker of the test's own, empty like a reader's new local Kafka."""
    with TansuBroker() as broker:
        yield f"kafka://{broker.bootstrap}"


class Walk:
    """The reader's terminal: runs the page's commands against the test broker and port."""

    def __init__(self, broker: str, port: int) -> None:
        self.broker = broker
        self.port = port
        self.env = {**os.environ, **KAFKA_ENV, "TASKFLOW_BROKER": ""}
        self.env.pop("PYTHONPATH", None)
        self.printed: dict[str, list[list[str]]] = {}

    def argv(self, command: str) -> list[str]:
        words = [self.broker if w == KAFKA else w for w in shlex.split(command)]
        words = [str(self.port) if w == "8080" else w for w in words]
        assert words[0] == "taskflow"
        return [TASKFLOW, *words[1:]]

    def run(self, command: str) -> list[str]:
        done = subprocess.run(
            self.argv(command),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stderr}"
        return self.note(command, done.stdout.splitlines())

    def note(self, command: str, lines: list[str]) -> list[str]:
        self.printed.setdefault(command, []).append(lines)
        return lines

    def app(self, command: str) -> AppProcess:
        """`taskflow run …`, after the `NAME=value` settings the command starts with."""
        env, words = {**self.env}, shlex.split(command)
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        _, _, reference, *args = self.argv(shlex.join(words))
        return AppProcess(reference, *args, env=env, program=[TASKFLOW])

    def scrape(self) -> None:
        """What the page's two `curl` commands print, made by reading the same endpoints."""
        base = f"http://127.0.0.1:{self.port}"
        metrics = httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
        pattern = re.compile(r"^taskflow_consumer_(retries|dead_letters)")
        self.note(METRICS, [line for line in metrics if pattern.search(line)])
        workers = httpx.get(f"{base}/status", timeout=10).json()["workers"]
        picked = [{field: w[field] for field in STATUS_FIELDS} for w in workers]
        self.note(STATUS, [json.dumps(w, separators=(",", ":")) for w in picked])


def test_the_page_shows_the_steps_this_test_runs() -> None:
    assert [command(body)[0] for body in blocks("bash")] == [RUN, RUN_FIXED]
    assert [shown.command for shown in console()] == [
        SEND_P7,
        SEND_P8,
        SHOW,
        DRY_RUN,
        REPLAY,
        REPLAY,
        METRICS,
        STATUS,
    ]


async def test_the_walk_through_prints_what_the_page_shows(fresh: str) -> None:
    walk = Walk(fresh, free_port())
    with walk.app(RUN) as app:
        app.wait_for(r"→ consuming parcels as group shipping$", timeout=60)
        app.wait_for(r"→ consuming parcels.retry.2s, parcels.retry.5s", timeout=60)
        walk.run(SEND_P7)
        app.wait_for(r"☠ .* exhausted after 3 attempt", timeout=60)
        walk.run(SEND_P8)
        app.wait_for(r"☠ .* rejected after 1 attempt", timeout=60)
        walk.run(SHOW)
        walk.scrape()
        assert app.stop(signal.SIGINT) == 0
    with walk.app(RUN_FIXED) as fixed:
        fixed.wait_for(r"→ consuming parcels as group shipping$", timeout=60)
        walk.run(DRY_RUN)
        walk.run(REPLAY)
        fixed.wait_for(r"label for parcel P-7", timeout=60)
        walk.run(REPLAY)  # again: nothing is replayed twice
        assert fixed.stop(signal.SIGINT) == 0
    log = {normal(line) for line in app.lines + fixed.lines}

    assert [line for line in logged() if normal(line) not in log] == []
    runs = {command: iter(outputs) for command, outputs in walk.printed.items()}
    for shown in console():
        page, printed = shown.output, next(runs[shown.command])
        if shown.command == METRICS:  # a scrape lists its series in no set order
            page, printed = sorted(page), sorted(printed)
        assert [normal(line) for line in page] == [normal(line) for line in printed]
