"""A contender process in the project's own venv: a raw aiokafka loop or a taskflow app.

Runs one contender of `kafka_contenders` over the topic and prints its RESULT line (`_child`),
with the stamp at which the contender started (after the interpreter started and imported it).

With ``--profile MEDIANS`` it instead profiles the contender, one round under py-spy and one under
cProfile (`kafka_throughput.profile`), and writes the contender's profile file in bench/; MEDIANS
is the JSON ``{contender: msg/s}`` of the suite's unprofiled rounds, for the file's header.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so PYTHONPATH can pick another taskflow

from _child import arguments, report  # noqa: E402
from kafka_contenders import CONTENDERS, Setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", metavar="MEDIANS", help="profile instead (see the module)")
    args = arguments("", parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ends = {int(p): end for p, end in json.loads(args.ends).items()}
    setup = Setup(args.bootstrap, args.topic, ends, args.redis, limit=args.expected)
    if args.profile is not None:
        from kafka_throughput import profile

        path = asyncio.run(profile(setup, args.contender, json.loads(args.profile)))
        report(profile=str(path))
        return
    result = asyncio.run(CONTENDERS[args.contender].load()(setup, args.group))
    report(
        first=result.first,
        last=result.last,
        handled=result.handled,
        started=result.started,
        committed=result.committed,
    )


if __name__ == "__main__":
    main()
