"""``python -m tests.reliability._flood URL SECONDS CLIENTS``: ask for URL as fast as possible.

CLIENTS concurrent keep-alive connections, each asking again as soon as it has its answer, for
SECONDS; then one JSON line on stdout: how many answers of each status (0: the connection failed
or was closed), and the first 200 answer's body. Plain asyncio streams rather than an HTTP client
library, so that the flood spends its CPU on requests; at a lower priority, as scrapers on other
machines would not take the app's CPU. Only ever run against 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


async def flood(url: str, seconds: float, clients: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    answers: Counter[int] = Counter()
    bodies: list[str] = []
    until = time.monotonic() + seconds

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
        answers[status] += 1
        if status == 200 and not bodies:
            bodies.append(body.decode())
        return "connection: close" not in head.lower()

    async def client() -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                answers[0] += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.monotonic() < until and await ask(reader, writer):
                    pass
            except (OSError, asyncio.IncompleteReadError):
                answers[0] += 1
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"answers": dict(answers), "body": bodies[0] if bodies else ""}


if __name__ == "__main__":
    url, seconds, clients = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    assert url.startswith("http://127.0.0.1:"), "only this machine's loopback"
    os.nice(10)
    print(json.dumps(asyncio.run(flood(url, seconds, clients))))
