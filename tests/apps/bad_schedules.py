"""Apps whose periodic task is refused at registration, for the CLI's exit-2 tests.

``BAD_SCHEDULE`` picks the mistake: ``cron`` (an expression with a sixth-field typo) or ``zone``
(a time zone that does not exist).
"""

from __future__ import annotations

import os

from taskflow import App

app = App("bad-schedules")


async def report() -> None:
    pass


if os.environ.get("BAD_SCHEDULE") == "zone":
    app.cron("0 3 * * *", tz="Europe/Atlantis")(report)
else:
    app.cron("*/5 * * * * * * *")(report)
