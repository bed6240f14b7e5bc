"""Finding a Python interpreter newer than the one running the tests (the Functions worker library for Python 3.13+
needs one), without downloading anything.

Where it looks, in order: the interpreter named by an environment variable; `python3.N` on the PATH; pyenv's
installed versions (`$PYENV_ROOT/versions`, else `~/.pyenv/versions`). Each candidate is run once to ask its version,
since a pyenv shim on the PATH may exist and still refuse to run a version that is not selected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

# Minor versions tried on the PATH, newest first.
_MINORS = range(20, 12, -1)
_ASK_VERSION = "import ensurepip, sys, venv; print(*sys.version_info[:2])"


def version_of(interpreter: Path) -> tuple[int, int] | None:
    """The (major, minor) version of ``interpreter``, or None when it does not run or cannot make a virtual
    environment (no ensurepip or venv module)."""
    try:
        completed = subprocess.run(  # noqa: S603 - an interpreter found on this machine, a fixed script
            [str(interpreter), "-c", _ASK_VERSION], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    if completed.returncode != 0:
        return None
    major, minor = completed.stdout.split()
    return int(major), int(minor)


def _candidates(environ: Mapping[str, str]) -> Iterator[Path]:
    for minor in _MINORS:
        found = shutil.which(f"python3.{minor}", path=environ.get("PATH"))
        if found:
            yield Path(found)
    pyenv_root = Path(environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions = sorted((pyenv_root / "versions").glob("3.*/bin/python3"), key=_pyenv_version, reverse=True)
    yield from versions


def _pyenv_version(interpreter: Path) -> tuple[int, ...]:
    name = interpreter.parents[1].name
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def find_python(minimum: tuple[int, int], environ: Mapping[str, str] = os.environ, override: str = "") -> Path | None:
    """An interpreter of version ``minimum`` or newer that can make a virtual environment, or None when the machine
    has none. ``override`` names an environment variable: when it is set, its interpreter is the only candidate,
    and one that does not qualify raises ValueError rather than being passed over."""
    if override and environ.get(override):
        chosen = Path(environ[override])
        version = version_of(chosen)
        if version is None or version < minimum:
            raise ValueError(f"{override}={chosen} is not a working Python {minimum[0]}.{minimum[1]} or newer")
        return chosen
    for candidate in _candidates(environ):
        version = version_of(candidate)
        if version is not None and version >= minimum:
            return candidate
    return None
