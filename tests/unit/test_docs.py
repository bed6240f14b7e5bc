"""The README and docs/ keep their promises: every relative link and anchor resolves, every setting has a row in
docs/settings.md, and the commands the README shows exist (Makefile targets, `python -m` modules, `ops` subcommands
that parse with `--help`)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from ops.cli import build_parser
from shared.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(without_code(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_in_the_page_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.relative_to(ROOT)}")
    assert not broken, broken


def test_the_anchor_of_a_heading_is_githubs():
    assert slug("Running locally: `make dev`") == "running-locally-make-dev"
    assert slug("Private network (vnetEnabled=true)") == "private-network-vnetenabledtrue"
    assert slug("Watch the app: the workbook") == "watch-the-app-the-workbook"


def test_every_setting_has_a_row_in_the_settings_page():
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert [s.name for s in SETTINGS if f"| `{s.name}` |" not in text] == []


def readme_commands() -> list[list[str]]:
    """Each shell command in the README's code blocks, as words, comments and continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\n\s+(?=\S)", " ", block)  # a line that starts indented continues the one before
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", text, flags=re.M)}


def test_the_readme_shows_commands():
    programs = {words[0] for words in readme_commands()}
    assert {"make", ".venv/bin/python", "curl"} <= programs


def test_every_make_target_the_readme_shows_exists():
    targets = makefile_targets()
    shown = [w[1] for w in readme_commands() if w[0] == "make"]
    assert shown
    assert [t for t in shown if t not in targets] == []


def test_every_python_module_the_readme_shows_exists():
    shown = [w[w.index("-m") + 1] for w in readme_commands() if w[0].endswith("python") and "-m" in w]
    assert shown
    assert [m for m in shown if importlib.util.find_spec(m) is None] == []


def test_every_ops_command_the_readme_shows_parses_with_help():
    shown = [w[w.index("ops") + 1 :] for w in readme_commands() if w[0].endswith("python") and w[1:3] == ["-m", "ops"]]
    assert shown
    for words in shown:
        verbs = [w for w in words if not w.startswith("-")][:2]
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as done:
            build_parser().parse_args([*verbs, "--help"])
        assert done.value.code == 0, words
        assert out.getvalue().startswith("usage: "), words
