"""The azd postprovision hook builds `python -m ops webhook create` from the azd environment's values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ops.cli import build_parser
from tools.register_webhook import REQUIRED, MissingValues, command, main

ROOT = Path(__file__).resolve().parents[2]
AZD_VALUES = {
    "ITWIN_CLIENT_ID": "a1b2c3",
    "ITWIN_WEBHOOK_URL": "https://func-itwin-prod.azurewebsites.net/api/webhooks/itwin",
    "AZURE_KEY_VAULT_NAME": "kv-itwin-prod",
    "AZURE_LOCATION": "westeurope",
}


def test_the_command_registers_and_activates_the_webhook_for_the_deployments_url_with_its_key_vault():
    assert command(AZD_VALUES, python="python") == [
        "python",
        "-m",
        "ops",
        "--key-vault",
        "kv-itwin-prod",
        "webhook",
        "create",
        "--activate",
        "--url",
        "https://func-itwin-prod.azurewebsites.net/api/webhooks/itwin",
    ]


def test_the_ops_argument_parser_accepts_the_command():
    args = build_parser().parse_args(command(AZD_VALUES)[3:])
    assert (args.group, args.verb, args.activate) == ("webhook", "create", True)
    assert args.key_vault == "kv-itwin-prod"
    assert args.url == AZD_VALUES["ITWIN_WEBHOOK_URL"]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_missing_value_is_named_with_where_it_comes_from(name):
    values = {**AZD_VALUES, name: " "}
    with pytest.raises(MissingValues, match=f"{name} is not set") as raised:
        command(values)
    assert REQUIRED[name] in str(raised.value)


def test_the_hook_stops_with_exit_code_2_and_runs_nothing_when_values_are_missing(capsys):
    ran = []
    assert main({}, run=lambda *args, **kwargs: ran.append(args)) == 2
    error = capsys.readouterr().err
    assert error.startswith("postprovision: cannot register the webhook: ITWIN_CLIENT_ID is not set")
    assert "ITWIN_WEBHOOK_URL is not set" in error
    assert "AZURE_KEY_VAULT_NAME is not set" in error
    assert ran == []


def test_the_hook_runs_the_command_and_passes_on_its_exit_code(capsys):
    ran = []

    def run(args, check):
        ran.append(args)
        return subprocess.CompletedProcess(args, 3)

    assert main(AZD_VALUES, run=run) == 3
    assert ran == [command(AZD_VALUES)]
    assert "python -m ops --key-vault kv-itwin-prod webhook create --activate --url https://" in capsys.readouterr().out


def test_the_hook_as_azd_runs_it_with_an_empty_environment_names_what_is_missing():
    done = subprocess.run(
        [sys.executable, "-m", "tools.register_webhook"], cwd=ROOT, env={}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "ITWIN_CLIENT_ID is not set" in done.stderr


def test_azure_yaml_runs_the_hook_after_provisioning_on_posix_and_windows_without_stopping_azd_up():
    hook = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))["hooks"]["postprovision"]
    for platform in ("posix", "windows"):
        assert "-m tools.register_webhook" in hook[platform]["run"], platform
        assert hook[platform]["continueOnError"] is True, platform
