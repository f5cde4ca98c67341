"""The fenced code blocks of a Markdown file, with their ``<!-- docs-test: ... -->`` directive.

Used by ``tests/integration/test_docs.py`` (every block, run in-process) and
``tests/integration/test_pasted_examples.py`` (chosen examples, run as ``python file.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w*)\s*$")
DIRECTIVE = re.compile(
    r"<!--\s*docs-test:\s*(?P<kind>skip|comfyui|pytest)\b\s*(?P<reason>.*?)\s*-->"
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    source: str
    directive: str | None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    return fenced_blocks(path, "python")


def fenced_blocks(path: Path, language: str) -> list[Block]:
    """The blocks fenced as ```<language> in a Markdown file, with their directive."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if fence["lang"] == language:
            indent = len(fence["indent"])
            body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
            previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
            directive = DIRECTIVE.search(previous)
            blocks.append(
                Block(
                    path,
                    i + 1,
                    body,
                    directive["kind"] if directive else None,
                    directive["reason"].strip("() ") if directive else "",
                )
            )
        i = end + 1
    return blocks
