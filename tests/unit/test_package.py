"""The deployment package: .funcignore read with gitignore's rules, and what it lets through is what Azure runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.funcignore import ignored, parse
from tools.package import ROOT, package_files


@pytest.mark.parametrize(
    ("patterns", "path", "is_dir", "expected"),
    [
        ("ops", "ops", True, True),
        ("ops", "shared/ops", True, True),  # no slash: any depth
        ("/ops", "shared/ops", True, False),  # a leading slash anchors at the root
        ("docs/*.md", "docs/a.md", False, True),
        ("docs/*.md", "docs/sub/a.md", False, False),  # * stays within a segment
        ("docs/**/*.md", "docs/sub/deep/a.md", False, True),
        ("build/", "build", False, False),  # a trailing slash: directories only
        ("build/", "build", True, True),
        ("*.md\n!README.md", "README.md", False, False),  # the last match decides
        ("requirements-*.txt", "requirements.txt", False, False),
        ("file?.txt", "file1.txt", False, True),
        ("file[0-9].txt", "filea.txt", False, False),
        ("# a comment\n\n", "# a comment", False, False),
        (r"\#hash", "#hash", False, True),
    ],
)
def test_a_pattern_excludes_what_gitignore_would(patterns, path, is_dir, expected):
    assert ignored(parse(patterns), path, is_dir) is expected


def test_a_file_in_an_excluded_directory_is_left_out_even_when_a_later_pattern_includes_it(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "keep.py").write_text("")
    (tmp_path / "app.py").write_text("x")
    (tmp_path / ".funcignore").write_text("tests\n!tests/keep.py\n.funcignore\n")
    assert package_files(tmp_path) == [("app.py", 1)]


def test_the_package_holds_what_azure_runs_and_none_of_the_tools_tests_or_sandbox():
    paths = [path for path, _ in package_files()]
    tops = {path.split("/")[0] for path in paths}
    # exactly these: not ops/, tools/, tests/, sandbox/, bench/, docs/, infra/, observability/, .venv ...
    assert tops == {"function_app.py", "host.json", "requirements.txt", "functions", "shared"}
    assert "shared/default_rules.json" in paths


def test_every_module_of_ours_the_app_imports_is_in_the_package():
    # every module of functions/ and shared/ imported, as function_app.py and the functions' lazy imports would
    program = (
        "import importlib, json, pkgutil, sys\n"
        "import function_app, functions, shared\n"
        "for package in (functions, shared):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)})))\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    ours = [
        Path(file).resolve().relative_to(ROOT).as_posix()
        for file in json.loads(done.stdout)
        if Path(file).resolve().is_relative_to(ROOT) and not Path(file).resolve().is_relative_to(ROOT / ".venv")
    ]
    packaged = {path for path, _ in package_files()}
    assert "function_app.py" in ours
    assert [path for path in ours if path not in packaged] == []
