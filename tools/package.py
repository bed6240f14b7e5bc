"""What the deployment package holds: the files `func azure functionapp publish` and `azd deploy` send, found by
applying ``.funcignore`` (gitignore syntax, `tools.funcignore`) to the repository's folder, and their size.

    python -m tools.package             # every file with its size, then the count, the total and the zipped size
    python -m tools.package --summary   # the last line only

The dependencies in ``requirements.txt`` are not in it: both tools build them remotely (in Azure).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path

from tools.funcignore import ignored, parse

ROOT = Path(__file__).resolve().parents[1]


def package_files(root: Path = ROOT) -> list[tuple[str, int]]:
    """(path relative to ``root`` with ``/`` separators, size in bytes) of each file ``.funcignore`` lets through,
    sorted by path. Excluded directories are not entered; symbolic links to directories are not followed."""
    ignore_file = root / ".funcignore"
    patterns = parse(ignore_file.read_text(encoding="utf-8")) if ignore_file.exists() else []
    files = []
    for folder, dirnames, filenames in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not ignored(patterns, prefix + d, is_dir=True))
        for name in filenames:
            path = prefix + name
            if not ignored(patterns, path, is_dir=False):
                files.append((path, (Path(folder) / name).stat().st_size))
    return sorted(files)


def zipped_size(root: Path, paths: list[str]) -> int:
    """The size in bytes of a deflate zip of ``paths``, as the package is sent."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(root / path, path)
    return buffer.getbuffer().nbytes


def summary(root: Path, files: list[tuple[str, int]]) -> str:
    """ "N files, X KB (Y bytes); zipped Z KB"."""
    total = sum(size for _, size in files)
    zipped = zipped_size(root, [path for path, _ in files])
    return f"{len(files)} files, {total / 1024:.1f} KB ({total:,} bytes); zipped {zipped / 1024:.1f} KB"


def main(argv: list[str] | None = None) -> int:
    """Print the package's files and size; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m tools.package", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", action="store_true", help="print the count and the sizes only")
    args = parser.parse_args(argv)
    files = package_files(ROOT)
    if not args.summary:
        for path, size in files:
            print(f"{size:>9,}  {path}")
    print(summary(ROOT, files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
