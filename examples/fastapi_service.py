"""A FastAPI service that runs its taskflow workers in its own process.

The API publishes a signup; a consumer sends the welcome mail; a periodic task
counts them. The workers start in the web app's lifespan and drain on its way
out, so a SIGTERM to uvicorn stops the HTTP server first, then lets the running
handlers finish, then exits.

    pip install -e '.[examples]'   # FastAPI and uvicorn, from the checkout
    python -m examples.fastapi_service
    # or: uvicorn examples.fastapi_service:api

Then post a signup and read who was welcomed (`TASKFLOW_BROKER` selects Kafka):

    curl -X POST localhost:8000/signups -H 'content-type: application/json' \
        -d '{"email": "ada@example.com"}'
    curl localhost:8000/welcomed
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from taskflow import App, Context, logfmt
from taskflow.runner import Runtime, running

logger = logging.getLogger(__name__)


# --8<-- [start:workers]
class Signup(BaseModel):
    email: str


workers = App("signups")


@workers.on_startup
async def open_mailbox() -> None:
    workers.state.welcomed = []  # stands in for a mail client opened at startup


@workers.consume("signups", ordering="key")
async def send_welcome(signup: Signup, ctx: Context) -> None:
    ctx.state.welcomed.append(signup.email)
    ctx.logger.info("welcomed %s", signup.email)


@workers.every(minutes=10)
async def count_signups(ctx: Context) -> None:
    ctx.logger.info("%d welcomed so far", len(ctx.state.welcomed))


# --8<-- [end:workers]


# --8<-- [start:lifespan]
@asynccontextmanager
async def run_workers(app: App) -> AsyncIterator[Runtime]:
    """Run `app`'s workers until the block ends, then shut them down gracefully.

    The web server owns the signals: when it stops, the block ends and the
    workers drain within the app's shutdown_timeout, as they would on SIGTERM
    under `taskflow run`.
    """
    async with running(app) as runtime:
        manager = asyncio.create_task(
            runtime.manager.run(), name=f"taskflow:{app.name}"
        )
        try:
            yield runtime
        finally:
            runtime.manager.request_stop("the web server is stopping")
            report = await manager
            if report.clean:
                logger.info("workers of %s stopped cleanly", app.name)
            else:
                logger.error(
                    "workers of %s: cancelled %s",
                    app.name,
                    ", ".join(report.cancelled),
                )


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with run_workers(workers) as runtime:
        # the endpoints reach it as request.app.state.workers
        api.state.workers = runtime
        yield


api = FastAPI(lifespan=lifespan)
# --8<-- [end:lifespan]


# --8<-- [start:endpoints]
@api.post("/signups", status_code=202)
async def sign_up(signup: Signup) -> dict[str, str]:
    # returns once the broker has it
    await workers.publish("signups", signup, key=signup.email)
    return {"status": "accepted"}


@api.get("/welcomed")
async def welcomed() -> list[str]:
    return list(workers.state.welcomed)


@api.get("/readyz")
async def ready(request: Request) -> JSONResponse:
    """503 once shutdown begins, or while a worker is not running (restarting
    after a crash)."""
    runtime: Runtime = request.app.state.workers
    states = {
        name: status.state.value
        for name, status in runtime.manager.statuses.items()
    }
    ok = not runtime.manager.stop_requested and set(states.values()) <= {
        "running"
    }
    return JSONResponse(
        {"ready": ok, "workers": states}, status_code=200 if ok else 503
    )


# --8<-- [end:endpoints]


if __name__ == "__main__":
    import uvicorn

    # taskflow's log lines, as `taskflow run` prints them
    logfmt.configure("INFO")
    uvicorn.run(api, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
