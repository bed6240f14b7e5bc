"""Tearing down and deploying again in the same azd environment.

`azd down` deletes the resource group, and the key vault with it; soft delete with purge protection keeps the deleted
vault's name taken for 90 days, and Key Vault refuses a new vault under that name. So the vault's name also takes a
salt from the azd environment (KEY_VAULT_NAME_SALT), which azure.yaml's postdown hook renews after every teardown. The
hook's posix command runs here under sh with `azd` stood in by a script that records its arguments: azd itself
cannot be installed on these machines, and neither can PowerShell for the windows command.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from bicep_model import REPO, body, identifiers_used

SALT_VARIABLE = "KEY_VAULT_NAME_SALT"


@pytest.fixture(scope="module")
def postdown() -> dict[str, Any]:
    """azure.yaml's postdown hook."""
    return yaml.safe_load((REPO / "azure.yaml").read_text(encoding="utf-8"))["hooks"]["postdown"]


def test_the_vault_is_named_from_the_salt_when_there_is_one_and_as_before_without(main_template):
    name = main_template["variables"]["keyVaultName"]["value"]["operator"]["operands"]

    assert body(main_template["modules"]["keyVault"])["params"]["name"] == "keyVaultName"
    assert name["condition"] == {"function": {"type": "empty", "parameters": {"item_to_test": "keyVaultNameSalt"}}}
    assert name["true_value"] == "kv-${resourceToken}"
    assert name["false_value"] == "kv-${uniqueString(resourceToken, keyVaultNameSalt)}"
    assert main_template["parameters"]["keyVaultNameSalt"]["default"] == ""


def test_only_the_vault_name_takes_the_salt_so_the_webhook_url_survives_a_teardown(main_template):
    # The iTwin Platform keeps delivering to the registered URL, https://func-<resourceToken>.../api/webhooks/itwin.
    users = {
        f"{kind}:{symbol}"
        for kind in ("variables", "modules", "resources", "outputs")
        for symbol, declaration in main_template.get(kind, {}).items()
        if "keyVaultNameSalt" in identifiers_used(declaration)
    }

    assert users == {"variables:keyVaultName"}
    assert main_template["variables"]["functionAppName"]["value"] == "func-${resourceToken}"


def test_azd_fills_the_salt_from_its_environment(parameters_file):
    assert parameters_file["keyVaultNameSalt"]["value"] == "${" + SALT_VARIABLE + "}"


def test_azd_sets_a_new_salt_after_every_teardown_on_posix_and_on_windows(postdown):
    assert postdown["posix"]["shell"] == "sh"
    assert postdown["windows"]["shell"] == "pwsh"
    for platform in ("posix", "windows"):
        assert postdown[platform]["run"].startswith(f"azd env set {SALT_VARIABLE} "), platform
        assert not postdown[platform].get("continueOnError"), f"{platform}: a failed hook must show"


def test_the_posix_hook_hands_azd_the_teardowns_utc_time_as_the_salt(postdown, tmp_path: Path):
    # GIVEN a stand-in `azd` on the PATH that writes down its arguments, one per line
    record = tmp_path / "azd-arguments"
    stand_in = tmp_path / "bin" / "azd"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    environment = {**os.environ, "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}"}

    # WHEN sh runs the hook, as azd does after `azd down`
    before = datetime.now(UTC).replace(microsecond=0)
    subprocess.run(["sh", "-c", postdown["posix"]["run"]], env=environment, check=True, timeout=30)  # noqa: S603,S607
    after = datetime.now(UTC)

    # THEN azd is asked to set one new value: the time, to the second
    *command, salt = record.read_text(encoding="utf-8").splitlines()
    assert command == ["env", "set", SALT_VARIABLE]
    assert re.fullmatch(r"\d{14}", salt), salt
    assert before <= datetime.strptime(salt, "%Y%m%d%H%M%S").replace(tzinfo=UTC) <= after
