"""The once-across-replicas recipe (examples/recipes/once_across_replicas.py), every second."""

from __future__ import annotations

from datetime import timedelta

from examples.recipes.once_across_replicas import create_app

app = create_app(every=timedelta(seconds=1))
