"""The versions of the field's libraries shapprune supports, declared once, checked once.

``pyproject.toml`` states the same range for pip; this module answers a user who already
has torch or zennit outside it (installed with ``--no-deps``, or a GPU image's own torch)
with one line naming the installed and the supported versions, at a command's start,
instead of a traceback from deep inside. ``.ci/run`` tests both ends of the range.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from importlib import metadata

__all__ = [
    "SUPPORTED",
    "OPTIONAL",
    "check_optional",
    "check_versions",
    "installed_version",
    "quiet_transformers",
    "refuse_unsupported",
    "version_problems",
]

# distribution -> (lowest supported, first unsupported or None); keep in step with pyproject
SUPPORTED: dict[str, tuple[str, str | None]] = {
    "torch": ("2.8", None),
    "torchvision": ("0.23", None),
    "torch-pruning": ("1.6.1", "2"),
    "zennit": ("0.5.1", "2"),
}


# optional libraries (pyproject's extras): checked where a feature needs them, not at import
OPTIONAL: dict[str, tuple[str, str | None, str]] = {
    # transformers 4.x lays ViT attention out otherwise (query/key/value in one module, the
    # output projection in another): its heads would be taken for plain linear layers
    "transformers": ("5.25", None, "hf"),
}


def check_optional(dist: str, installed: dict[str, str | None] | None = None) -> None:
    """One ``ValueError`` line where optional library ``dist`` is missing or outside its
    range, naming the extra that installs a supported one (``installed``: name -> version,
    for tests; default: what is installed here)."""
    low, high, extra = OPTIONAL[dist]
    found = installed if installed is not None else {dist: installed_version(dist)}
    version = found.get(dist)
    if version is None or not _in_range(version, low, high):
        found = "is not installed" if version is None else f"{version} is installed"
        raise ValueError(
            f"{dist} {found}; this needs {dist} {_range_text(low, high)}: "
            f"pip install 'shapprune[{extra}]'"
        )


def _key(version: str) -> tuple[int, ...]:
    """``"2.8.0+cu128"`` -> ``(2, 8, 0)``: the release numbers, local and pre-release tags
    dropped (a 2.9 nightly counts as 2.9)."""
    parts = []
    for piece in re.split(r"[.+]", version):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None where it is missing."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _in_range(version: str, low: str, high: str | None) -> bool:
    v = _key(version)
    return v >= _key(low) and (high is None or v < _key(high))


def _range_text(low: str, high: str | None) -> str:
    return f">= {low}" + (f", < {high}" if high else "")


def version_problems(installed: dict[str, str | None] | None = None) -> list[str]:
    """One sentence per supported library whose installed version is outside the range
    (``installed``: name -> version, for tests; default: what is installed here)."""
    found = installed if installed is not None else {d: installed_version(d) for d in SUPPORTED}
    problems = []
    for dist, (low, high) in SUPPORTED.items():
        version = found.get(dist)
        if version is not None and not _in_range(version, low, high):
            problems.append(
                f"{dist} {version} is installed; shapprune supports {dist} "
                f"{_range_text(low, high)} (pip install '{dist}>={low}"
                + (f",<{high}'" if high else "'")
                + ")"
            )
    return problems


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """Raise one ``RuntimeError`` line naming every library outside the supported range."""
    problems = version_problems(installed)
    if problems:
        raise RuntimeError("; ".join(problems))


def _is_the_command() -> bool:
    """Whether this process is the ``shapprune`` command (its script or ``-m shapprune``)."""
    import sys
    from pathlib import Path

    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if first.name == "shapprune" or first.parts[-2:] == ("shapprune", "__main__.py"):
        return True
    given = list(getattr(sys, "orig_argv", []))  # python -m shapprune: argv[0] is "-m"
    pairs = zip(given, given[1:], strict=False)
    return any(a == "-m" and b in ("shapprune", "shapprune.cli") for a, b in pairs)


def refuse_unsupported() -> None:
    """Run when ``shapprune`` is imported, before it imports torch: outside the supported
    range the command prints one ``error:`` line and exits 2; a script's import raises one
    ``ImportError`` line."""
    problems = version_problems()
    if not problems:
        return
    message = "; ".join(problems)
    if _is_the_command():
        import sys

        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars (one per load or save, on every reload of a
    pruned copy); they are shown again after if they were before."""
    import transformers

    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            bars.enable_progress_bar()
