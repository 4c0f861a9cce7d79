"""Every metric taskflow records is defined in taskflow.telemetry.metrics and listed in the docs."""

from __future__ import annotations

from taskflow.telemetry import metrics
from taskflow.telemetry.metrics import INSTRUMENTS, Instrument
from tests._process import ROOT


def test_every_instrument_defined_is_in_the_list_of_instruments() -> None:
    defined = {v for v in vars(metrics).values() if isinstance(v, Instrument)}
    assert defined == set(INSTRUMENTS)
    assert len({i.name for i in INSTRUMENTS}) == len(INSTRUMENTS)


def test_docs_list_every_metric_name() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    missing = [i.name for i in INSTRUMENTS if f"`{i.name}`" not in text]
    assert missing == []
