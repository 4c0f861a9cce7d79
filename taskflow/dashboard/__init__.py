"""The operations dashboard: every replica, consumer, periodic task and dead letter of an app on
one page, read-only.

`taskflow.dashboard.view` gathers what is shown, `taskflow.dashboard.server` serves it: at ``/`` of
the operations endpoint, or alone with ``taskflow dashboard MODULE:APP``.
"""

from __future__ import annotations

from taskflow.dashboard.server import Dashboard, serve

__all__ = ["Dashboard", "serve"]
