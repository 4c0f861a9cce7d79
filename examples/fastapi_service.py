"""A FastAPI service that runs its taskflow workers in its own process.

The API publishes a signup; a consumer sends the welcome mail; a periodic task
counts them. The web app's lifespan enters `taskflow.running(tasks)`: the
workers run beside the API and drain on its way out, so a SIGTERM to uvicorn
stops the HTTP server first, then lets the running handlers finish, then exits.
With `SIGNUPS_WORKERS=0` the same service only publishes, for web replicas
whose consumers run elsewhere (under `taskflow run`).

    pip install -e '.[examples]'   # FastAPI and uvicorn, from the checkout
    python -m examples.fastapi_service
    # or: uvicorn examples.fastapi_service:api

Then post a signup and read who was welcomed (`TASKFLOW_BROKER` selects Kafka):

    curl -X POST localhost:8000/signups -H 'content-type: application/json' \
        -d '{"email": "ada@example.com"}'
    curl localhost:8000/welcomed
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import taskflow
from taskflow import App, Context, logfmt
from taskflow.runner import Runtime


# --8<-- [start:workers]
class Signup(BaseModel):
    email: str


tasks = App("signups")


@tasks.on_startup
async def open_mailbox() -> None:
    tasks.state.welcomed = []  # stands in for a mail client opened at startup


@tasks.consume("signups", ordering="key")
async def send_welcome(signup: Signup, ctx: Context) -> None:
    ctx.state.welcomed.append(signup.email)
    ctx.logger.info("welcomed %s", signup.email)


@tasks.every(minutes=10)
async def count_signups(ctx: Context) -> None:
    ctx.logger.info("%d welcomed so far", len(ctx.state.welcomed))


# --8<-- [end:workers]


# --8<-- [start:lifespan]
# "0": this replica only publishes; its consumers run elsewhere
RUN_WORKERS = os.environ.get("SIGNUPS_WORKERS", "1") != "0"


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    # Connects the broker and runs the startup hooks; with workers, runs
    # them in the background until uvicorn stops, then drains them within
    # the app's shutdown_timeout, as SIGTERM does under `taskflow run`.
    async with taskflow.running(tasks, workers=RUN_WORKERS) as runtime:
        # the endpoints reach it as request.app.state.tasks
        api.state.tasks = runtime
        yield


api = FastAPI(lifespan=lifespan)
# --8<-- [end:lifespan]


# --8<-- [start:endpoints]
@api.post("/signups", status_code=202)
async def sign_up(signup: Signup) -> dict[str, str]:
    # returns once the broker has it; wait=False would return once queued
    await tasks.publish("signups", signup, key=signup.email)
    return {"status": "accepted"}


@api.get("/welcomed")
async def welcomed() -> list[str]:
    return list(tasks.state.welcomed)


@api.get("/readyz")
async def ready(request: Request) -> JSONResponse:
    """503 once shutdown begins, or while a worker is not running (restarting
    after a crash)."""
    runtime: Runtime = request.app.state.tasks
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
