"""The `taskflow` commands the home page and Getting started show, and where each runs.

The home page's commands run from the root of a checkout; Getting started's run in the reader's
own `shop` directory, which holds `quickstart.py` (the file `examples/quickstart.py` is).
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tests._process import ROOT

FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
# The script the reader's `pip install` puts on PATH, from this checkout's environment.
TASKFLOW = str(Path(sys.executable).with_name("taskflow"))
KAFKA_FLAG = "--broker kafka://localhost:9092"


@dataclass(frozen=True, slots=True)
class Command:
    page: str
    line: str  # as the page shows it, without its comment

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.line)
        assert words[0] == "taskflow"
        return [TASKFLOW, *words[1:]]

    @property
    def on_kafka(self) -> bool:
        return KAFKA_FLAG in self.line


def shown(page: str) -> list[Command]:
    """Every `taskflow …` line in the page's bash blocks."""
    text = (ROOT / "docs" / page).read_text()
    return [
        Command(page, line.split("  #")[0].strip())
        for block in FENCE.findall(text)
        for line in block.splitlines()
        if line.startswith("taskflow ")
    ]


def workdir(command: Command, tmp_path: Path) -> Path:
    """Where a reader runs `command`: the checkout, or a `shop` directory of their own."""
    if command.page == "index.md":
        return ROOT
    shop = tmp_path / "shop"
    shop.mkdir(exist_ok=True)
    shutil.copy(ROOT / "examples" / "quickstart.py", shop / "quickstart.py")
    return shop
