"""Apps made by functions: one that works, one that raises, one that returns the wrong thing."""

from __future__ import annotations

from taskflow import App, Context


def create_app() -> App:
    app = App("made")

    @app.every(minutes=5)
    async def tidy(ctx: Context) -> None: ...

    return app


def broken() -> App:
    raise RuntimeError("the factory is broken")


def not_an_app() -> object:
    return {"name": "made"}


def configured_later() -> App:
    """An app whose factory sets an option after making it: the code's last word."""
    app = App("later")
    app.shutdown_timeout = 7
    return app
