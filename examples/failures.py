"""One poison message, from its first failure to its replay.

A label service prices parcels. Its rate table does not know the Netherlands
yet, so a parcel to `NL` fails with a `KeyError` every time: it waits on two
retry topics, then lands in `parcels.DLQ`. `PARCELS_FIXED=1` stands for the
release that adds the rate; with it, the replayed dead letter goes through. A
parcel over the carrier's weight limit is rejected at once.

    taskflow run examples.failures:app --broker kafka://localhost:9092
    PARCELS_FIXED=1 taskflow run examples.failures:app \
        --broker kafka://localhost:9092

docs/failures.md walks through it.
"""

# --8<-- [start:app]
from __future__ import annotations

import os
from dataclasses import dataclass

from taskflow import App, Context

app = App("shipping")


@dataclass
class Parcel:
    id: str
    country: str
    grams: int


class TooHeavy(Exception):
    """Over the carrier's weight limit: no retry makes a parcel lighter."""


def rate(country: str) -> float:
    """Euros per kilogram to `country`."""
    rates = {"DE": 1.20, "FR": 1.50}
    if os.environ.get("PARCELS_FIXED") == "1":  # the release that fixes it
        rates["NL"] = 1.10
    return rates[country]  # the bug: KeyError for a country it lacks


@app.consume(
    "parcels",
    # a failure waits 2 s on parcels.retry.2s, then 5 s on parcels.retry.5s
    retry_topics=[2, 5],
    # after the last stage, or at once for TooHeavy
    dead_letter="parcels.DLQ",
    reject_on=(TooHeavy,),
)
async def on_parcel(parcel: Parcel, ctx: Context) -> None:
    if parcel.grams > 31_500:
        raise TooHeavy(f"parcel {parcel.id}: {parcel.grams} g, over 31500 g")
    price = rate(parcel.country) * parcel.grams / 1000
    ctx.logger.info(
        "label for parcel %s to %s: %.2f EUR (attempt %d)",
        parcel.id,
        parcel.country,
        price,
        ctx.attempt,
    )


# --8<-- [end:app]
