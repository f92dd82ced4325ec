"""Shared by the benchmark scripts: print as usual, and optionally write what was printed
into a marked block of a Markdown file (``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``),
so that the numbers in the README and docs/ come from a run."""

from __future__ import annotations

import contextlib
import io
import os
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


ROOT = Path(__file__).resolve().parents[1]


def rebase_links(content: str, markdown: Path) -> str:
    """Links written relative to the project's root (``benchmarks/results/x.png``,
    ``docs/y.png``, ``BENCHMARKS.md``) made relative to ``markdown``'s folder, so that a
    block reads the same in the README and in ``docs/``."""
    here = markdown.resolve().parent

    def rebase(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"[a-z]+:|#|/|\.\.?/", target) or not (ROOT / target).exists():
            return match.group(0)
        return f"{match.group(1)}{Path(os.path.relpath(ROOT / target, here)).as_posix()})"

    return re.sub(r"(\]\()([^)\s]+)\)", rebase, content)


def replace_block(markdown: Path, name: str, content: str) -> None:
    """Replace the ``name`` results block of the Markdown file with ``content`` (its links,
    written from the project's root, rebased to the file)."""
    text = markdown.read_text()
    content = rebase_links(content, markdown)
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
