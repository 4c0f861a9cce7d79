"""Run ``taskflow run MODULE:APP`` as a real subprocess and watch its log.

A reader thread collects stderr lines as they come, so a test can wait for a line (bounded), send
real signals, and read the exit code, without sleeping blindly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent


class AppProcess:
    """One ``python -m taskflow run`` child with its log captured (`command` names another
    taskflow command taking ``MODULE:APP``, ``dashboard`` say).

    `program` replaces ``python -m taskflow`` (with the ``taskflow`` script, say), and `cwd` the
    checkout's root as the directory it runs in.
    """

    def __init__(
        self,
        app_ref: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdout: Path | None = None,
        cwd: Path = ROOT,
        program: Sequence[str] = (sys.executable, "-m", "taskflow"),
        command: str = "run",
    ) -> None:
        self.app_ref = app_ref
        self.command = command
        self.cwd = cwd
        self.program = list(program)
        self.stdout = stdout
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.env.pop("PYTHONPATH", None)
        self.env.pop("PYTHONASYNCIODEBUG", None)  # the child runs as in production
        self.env["PYTHONUNBUFFERED"] = "1"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> Self:
        command = [*self.program, self.command, self.app_ref, *self.args]
        out = self.stdout.open("wb") if self.stdout else None
        try:
            self._proc = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out or subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def proc(self) -> subprocess.Popen[str]:
        assert self._proc is not None, "not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, *, count: int = 1) -> str:
        """Wait until `count` log lines match `pattern` (a regex); return the last of them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.poll() is not None and not self._reader_alive():
                    raise AssertionError(
                        f"app exited ({self.proc.returncode}) before {pattern!r}:\n{self._tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self._tail()}")
                self._changed.wait(min(remaining, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit code; fail the test (after killing the child) past `timeout`."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"app did not exit within {timeout}s:\n{self._tail()}") from None
        self._close_pipe()
        return code

    def _close_pipe(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.send(sig)
        return self.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_pipe()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05
) -> None:
    """Poll `predicate` until true: for facts only another process's files can tell us."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def count_lines(path: Path) -> int:
    """Lines in `path` so far (0 when it does not exist yet)."""
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0
