"""Payload decoding figures: taskflow's decoders beside `json.loads`, side by side in one run.

Each contender decodes the same typical small payload (a ~200-byte JSON object of four fields,
as the Kafka suite produces; its MessagePack twin for the MessagePack rows) many times per round;
the contenders alternate, round after round, and the medians are printed with each one's ratio to
`json.loads` of the same round. The decoders are the ones a consumer registration builds
(`taskflow.codec.decoder_for`), called on a `Message` as a consumer calls them.

    .venv/bin/python bench/codecs.py [--rounds 7] [--number 100000] [--before CODEC_PY]

With ``--before``, the ``dict`` decoder of another taskflow's ``taskflow/codec.py`` (an older
commit's, say: ``git show e5eeb7d:taskflow/codec.py > /tmp/codec_before.py``) is measured too, in
the same rounds.

Rows:

- ``json.loads``: the baseline, ``json.loads(value)``;
- ``stdlib scanner, raw_decode``: ``JSONDecoder().raw_decode(value.decode())``, the fast
  path taskflow's JSON decoder took before it read JSON with msgspec;
- ``msgspec alone``: ``msgspec.json.Decoder(dict).decode(value)``, the floor;
- ``taskflow dict ...``: the decoder of a ``dict`` payload: with no headers; with the
  ``content-type: application/json`` header taskflow writes; with it after a ``traceparent``;
- the other payload types (dataclass, msgspec Struct, pydantic model) and MessagePack, with the
  header their publisher writes;
- ``encode ...``: a dict published (`encode_record`) as JSON and as MessagePack, beside
  ``json.dumps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import msgspec  # noqa: E402
import pydantic  # noqa: E402

from taskflow.codec import JSON, MSGPACK, decoder_for, encode_record  # noqa: E402
from taskflow.message import Message  # noqa: E402

FIELDS = {"id": 123456, "customer": "c-0042", "amount": 977, "note": "x" * 150}


@dataclasses.dataclass
class OrderClass:
    id: int
    customer: str
    amount: int
    note: str


class OrderStruct(msgspec.Struct):
    id: int
    customer: str
    amount: int
    note: str


class OrderModel(pydantic.BaseModel):
    id: int
    customer: str
    amount: int
    note: str


def record(value: bytes, *headers: tuple[str, bytes]) -> Message:
    return Message("orders", 0, 0, b"c-0042", value, tuple(headers))


def before(path: str) -> Callable[[Any], Callable[[Message], Any]]:
    """`decoder_for` of the taskflow codec module at `path`."""
    spec = importlib.util.spec_from_file_location("codec_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decoder_for  # type: ignore[no-any-return]


def contenders(before_path: str | None) -> dict[str, Callable[[], Any]]:
    value = json.dumps(FIELDS, separators=(",", ":")).encode()
    packed = msgspec.msgpack.encode(FIELDS)
    as_json = ("content-type", b"application/json")
    as_msgpack = ("content-type", b"application/msgpack")
    trace = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    raw_decode = json.JSONDecoder().raw_decode
    alone = msgspec.json.Decoder(dict).decode
    as_dict = decoder_for(dict)
    bare, typed, traced = record(value), record(value, as_json), record(value, trace, as_json)
    msgpack_dict = decoder_for(dict, MSGPACK)
    packed_record = record(packed, as_msgpack)

    def stdlib_scanner() -> Any:
        return raw_decode(value.decode())[0]

    def typed_as(annotation: Any, codec: Any = JSON) -> Callable[[], Any]:
        decode, message = decoder_for(annotation, codec), typed if codec is JSON else packed_record
        return lambda: decode(message)

    calls: dict[str, Callable[[], Any]] = {
        "json.loads": lambda: json.loads(value),
        "stdlib scanner, raw_decode": stdlib_scanner,
        "msgspec alone": lambda: alone(value),
        "taskflow dict, no headers": lambda: as_dict(bare),
        "taskflow dict, content-type header": lambda: as_dict(typed),
        "taskflow dict, traceparent + content-type": lambda: as_dict(traced),
        "taskflow dataclass": typed_as(OrderClass),
        "taskflow msgspec Struct": typed_as(OrderStruct),
        "taskflow pydantic model": typed_as(OrderModel),
        "taskflow MessagePack dict": lambda: msgpack_dict(packed_record),
        "taskflow MessagePack Struct": typed_as(OrderStruct, MSGPACK),
        "encode json.dumps": lambda: json.dumps(FIELDS, separators=(",", ":")).encode(),
        "encode taskflow JSON": lambda: encode_record(FIELDS, (), JSON),
        "encode taskflow MessagePack": lambda: encode_record(FIELDS, (), MSGPACK),
    }
    if before_path is not None:
        old_dict = before(before_path)(dict)
        calls = {
            **dict(list(calls.items())[:3]),
            "taskflow dict before (--before)": lambda: old_dict(bare),
            **dict(list(calls.items())[3:]),
        }
    return calls


def measure(rounds: int, number: int, before_path: str | None) -> dict[str, tuple[float, float]]:
    """Per contender: the median nanoseconds per call, and the median ratio to json.loads."""
    calls = contenders(before_path)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timeit.timeit(call, number=number) / number * 1e9)
    base = times["json.loads"]
    return {
        name: (
            statistics.median(ns),
            statistics.median(t / b for t, b in zip(ns, base, strict=True)),
        )
        for name, ns in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--before", help="another taskflow's taskflow/codec.py to compare")
    args = parser.parse_args()
    print(
        f"Python {sys.version.split()[0]}, msgspec {msgspec.__version__}, "
        f"pydantic {pydantic.VERSION}; {args.rounds} rounds of {args.number:,} calls"
    )
    print(f"| {'contender':<42} | {'ns per call':>11} | {'x json.loads':>12} |")
    print(f"| {'-' * 42} | {'-' * 10}: | {'-' * 11}: |")
    for name, (ns, ratio) in measure(args.rounds, args.number, args.before).items():
        print(f"| {name:<42} | {ns:>11.0f} | {ratio:>12.2f} |")


if __name__ == "__main__":
    main()
