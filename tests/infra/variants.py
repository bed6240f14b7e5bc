"""The deployment variants checkov checks, one per parameter file (infra/public-network.parameters.json and
infra/private-network.parameters.json).

checkov reads Bicep literally: it takes no parameter file and evaluates no expression, so on the templates as they
are, `vnetEnabled ? 'Disabled' : 'Enabled'` makes one check pass that should fail and another crash. A variant is
therefore a copy of infra/ in which each parameter of the file becomes the default of every `param` of that name
(main.bicep and the modules), and every `<bool param> ? a : b` it decides is replaced by the chosen term.

A `checkov:skip` whose reason starts with `[name=value]` holds for that value only: the other variants drop it,
and there checkov must pass the check by itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bicep_model import INFRA, REPO

VARIANTS = {
    "public": INFRA / "public-network.parameters.json",
    "private": INFRA / "private-network.parameters.json",
}
CHECKOV = REPO / ".venv-infra" / "bin" / "checkov"

# One term of a ternary the renderer resolves: a string literal, or an identifier, property path or call without
# spaces (`network.outputs.appSubnetId`, `null`).
_TERM = r"'[^'\n]*'|[\w.\[\]()]+"
_TAGGED_SKIP = re.compile(r"^[ \t]*//[ \t]*checkov:skip=[A-Z0-9_]+:[ \t]*\[(?P<name>\w+)=(?P<value>[^\]]+)\].*\n", re.M)


def parameter_values(parameter_file: Path) -> dict[str, Any]:
    """The values of an ARM parameter file (`{"parameters": {"name": {"value": ...}}}`)."""
    doc = json.loads(parameter_file.read_text(encoding="utf-8"))
    return {name: entry["value"] for name, entry in doc["parameters"].items()}


def bicep_literal(value: Any) -> str:
    """A Python value as a Bicep literal: true/false, a number, or a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"no Bicep literal for {value!r}")


def render(text: str, values: Mapping[str, Any]) -> str:
    """One Bicep file of the variant ``values``. Raises ValueError on a ternary over a parameter it cannot resolve."""
    for name, value in values.items():
        literal = bicep_literal(value)
        text = re.sub(
            rf"^(?P<head>param[ \t]+{name}[ \t]+\w+)(?:[ \t]*=[^\n]*)?$",
            lambda match, literal=literal: f"{match['head']} = {literal}",
            text,
            flags=re.M,
        )
        if isinstance(value, bool):
            ternary = re.compile(rf"\b{name}[ \t]*\?[ \t]*(?P<yes>{_TERM})[ \t]*:[ \t]*(?P<no>{_TERM})")
            text = ternary.sub(lambda match, value=value: match["yes" if value else "no"], text)
            left = re.search(rf"^.*\b{name}[ \t]*\?.*$", text, flags=re.M)
            if left:
                raise ValueError(
                    f"cannot resolve {left.group().strip()!r}: write `{name} ? a : b` with single-term choices"
                )

    def keep(match: re.Match[str]) -> str:
        other_variant = match["name"] in values and bicep_literal(values[match["name"]]) != match["value"]
        return "" if other_variant else match[0]

    return _TAGGED_SKIP.sub(keep, text)


def render_variant(parameter_file: Path, target: Path) -> Path:
    """Copy infra/ to ``target`` as the variant of ``parameter_file``; returns ``target``."""
    values = parameter_values(parameter_file)
    shutil.copytree(INFRA, target, dirs_exist_ok=True)
    for path in target.rglob("*.bicep"):
        path.write_text(render(path.read_text(encoding="utf-8"), values), encoding="utf-8")
    return target


@dataclass(frozen=True)
class Finding:
    """One checkov result: the check, the resource, the file (relative to the scanned folder) and, for a skip, why."""

    check_id: str
    resource: str
    file: str
    reason: str = ""


@dataclass(frozen=True)
class CheckovReport:
    passed: frozenset[Finding]
    failed: frozenset[Finding]
    skipped: frozenset[Finding]
    parsing_errors: tuple[str, ...]


def run_checkov(directory: Path) -> CheckovReport:
    """checkov's Bicep checks over ``directory`` (no network: --skip-download)."""
    if not CHECKOV.exists():
        raise FileNotFoundError(f"{CHECKOV} is missing: `make infra-check` installs checkov into .venv-infra")
    completed = subprocess.run(  # noqa: S603 - the pinned checkov, fixed arguments
        [str(CHECKOV), "--framework", "bicep", "--directory", str(directory), "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if completed.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed ({completed.returncode}): {completed.stderr[-2000:]}")
    report = json.loads(completed.stdout)
    results = report["results"] if isinstance(report, dict) else report[0]["results"]

    def findings(kind: str) -> frozenset[Finding]:
        return frozenset(
            Finding(
                entry["check_id"],
                entry["resource"],
                entry["file_path"].lstrip("/"),
                (entry.get("check_result") or {}).get("suppress_comment") or "",
            )
            for entry in results.get(kind, [])
        )

    return CheckovReport(
        passed=findings("passed_checks"),
        failed=findings("failed_checks"),
        skipped=findings("skipped_checks"),
        parsing_errors=tuple(results.get("parsing_errors", [])),
    )
