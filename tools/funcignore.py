"""``.funcignore`` read as Azure Functions Core Tools and azd read it: gitignore syntax.

Each line is a pattern; blank lines and ``#`` comments are skipped; ``!`` re-includes; a trailing ``/`` matches
directories only; a pattern with a ``/`` before its end is anchored at the root, one without matches at any depth;
``*``, ``?`` and ``[...]`` stay within one path segment, ``**`` spans segments. The last pattern that matches a path
decides, and a file inside an excluded directory is excluded whatever comes later (git cannot re-include it either).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """One line of an ignore file, as a regex over root-relative paths with ``/`` separators."""

    regex: re.Pattern[str]
    negated: bool
    directories_only: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        return (is_dir or not self.directories_only) and self.regex.match(path) is not None


def _translate(glob: str) -> str:
    """The regex of a gitignore glob's body (no anchors)."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
            i = end + 1
        elif glob[i] == "\\" and i + 1 < len(glob):
            out += re.escape(glob[i + 1])
            i += 2
        else:
            out += re.escape(glob[i])
            i += 1
    return out


def parse(text: str) -> list[Pattern]:
    """The patterns of an ignore file's text, in order."""
    patterns = []
    for raw in text.splitlines():
        line = re.sub(r"(?<!\\)\s+$", "", raw)
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line.removeprefix("\\")
        directories_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        body = _translate(line.lstrip("/"))
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
        patterns.append(Pattern(regex, negated, directories_only))
    return patterns


def ignored(patterns: list[Pattern], path: str, is_dir: bool) -> bool:
    """Whether the patterns exclude ``path`` itself (its directories are the caller's to check first)."""
    verdict = False
    for pattern in patterns:
        if pattern.matches(path, is_dir):
            verdict = not pattern.negated
    return verdict
