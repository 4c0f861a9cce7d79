"""Customer profiles on a compacted topic, kept as a table; a tombstone deletes.

The latest record of each key is a customer's profile; a record whose value is
null (a tombstone) deletes it. One consumer reads all the topic holds into a
table, so its handler admits None; another hears only of the changes made once
it runs, and never of the deletions:

    taskflow run examples.compacted:app
"""

from __future__ import annotations

from taskflow import App, Context

app = App("profiles")


@app.on_startup
async def prepare() -> None:
    app.state.profiles = {}  # customer -> profile
    app.state.changes = []  # names of the profiles written while the app runs


# --8<-- [start:table]
@app.consume(
    "customer-profiles",
    group="profile-table",
    start="earliest",  # no committed offset yet: read all the topic holds
    consumer_options={
        "isolation_level": "read_committed",
        "fetch_max_wait_ms": 100,
    },
)
async def on_profile(profile: dict[str, str] | None, ctx: Context) -> None:
    """`| None`: a tombstone arrives as None, and deletes the customer."""
    assert ctx.message is not None
    customer = (ctx.message.key or b"").decode()
    if profile is None:
        ctx.state.profiles.pop(customer, None)
    else:
        ctx.state.profiles[customer] = profile


# --8<-- [end:table]


# --8<-- [start:changes]
@app.consume("customer-profiles", group="profile-changes", start="latest")
async def on_change(profile: dict[str, str], ctx: Context) -> None:
    """A plain `dict`: tombstones are skipped, and committed."""
    ctx.state.changes.append(profile["name"])


# --8<-- [end:changes]


# --8<-- [start:forget]
async def forget(customer: str) -> None:
    """Delete a customer: publish None, a tombstone, under its key."""
    await app.publish("customer-profiles", None, key=customer)


# --8<-- [end:forget]
