"""Shared by the benchmark scripts: print as usual, and optionally write what was printed
into a marked block of a Markdown file (``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``),
so that the numbers in the README come from a run."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, copy: io.StringIO) -> None:
        self.copy, self.real = copy, sys.stdout

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.real.write(text)


def run_and_report(
    name: str,
    run: Callable[[], object],
    markdown: Path | None,
    pick: Callable[[str], str] | None = None,
) -> None:
    """Run ``run()``; if ``markdown`` is given, replace its ``name`` block with the output
    (``pick(output)``: the part of it to write; default :func:`results_only`)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(buffer)):
        run()
    if markdown is not None:
        replace_block(markdown, name, (pick or results_only)(buffer.getvalue()))


def replace_block(markdown: Path, name: str, content: str) -> None:
    """Replace the ``name`` results block of the Markdown file with ``content``."""
    text = markdown.read_text()
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if begin not in text:
        raise SystemExit(f"{markdown} has no {begin} block")
    block = begin + "\n" + content + "\n" + end
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    markdown.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))


def results_only(output: str) -> str:
    """The output from its first Markdown heading on (progress lines before it dropped)."""
    start = output.find("####")
    return output[start if start >= 0 else 0 :].strip()


def first_section(output: str) -> str:
    """The output's first Markdown section: from its first heading to the next one."""
    return results_only(output).split("\n#### ", 1)[0].strip()
