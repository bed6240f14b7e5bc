"""The azd ``postprovision`` hook (``azure.yaml``): registers the deployed app's webhook with the iTwin Platform.

azd runs it after ``azd provision`` and within ``azd up``, with the environment's values in the process environment:
the outputs of ``infra/main.bicep`` (``ITWIN_WEBHOOK_URL``, ``AZURE_KEY_VAULT_NAME``) and what ``azd env set`` gave
(``ITWIN_CLIENT_ID``, and any ``ITWIN_*`` setting the rules read). It runs

    python -m ops --key-vault <AZURE_KEY_VAULT_NAME> webhook create --activate --url <ITWIN_WEBHOOK_URL>

which creates the webhook, or finds it by its URL and brings its event types up to date, and activates it. The tool
reads the client secret and the webhook secret from the Key Vault as the signed-in user (``azd auth login``), who
needs Key Vault Secrets User on it (docs/deployment.md). A missing value stops it with exit code 2, naming the value.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

# Each value the command needs, and where it comes from.
REQUIRED = {
    "ITWIN_CLIENT_ID": "the service application's client id: azd env set ITWIN_CLIENT_ID <client id>",
    "ITWIN_WEBHOOK_URL": "an output of infra/main.bicep: azd provision sets it",
    "AZURE_KEY_VAULT_NAME": "an output of infra/main.bicep: azd provision sets it",
}


class MissingValues(Exception):
    """Values the hook needs are not in the environment; the message names each and where it comes from."""


def command(environ: Mapping[str, str], python: str = sys.executable) -> list[str]:
    """The ``python -m ops webhook create`` command line for these azd environment values; raises `MissingValues`."""
    missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
    if missing:
        raise MissingValues("; ".join(f"{name} is not set ({REQUIRED[name]})" for name in missing))
    return [
        python,
        "-m",
        "ops",
        "--key-vault",
        environ["AZURE_KEY_VAULT_NAME"].strip(),
        "webhook",
        "create",
        "--activate",
        "--url",
        environ["ITWIN_WEBHOOK_URL"].strip(),
    ]


def main(environ: Mapping[str, str], run: Callable[..., subprocess.CompletedProcess[Any]] = subprocess.run) -> int:
    """Register the webhook: the tool's exit code, or 2 when a value or the tool's packages are missing."""
    try:
        args = command(environ)
    except MissingValues as missing:
        print(f"postprovision: cannot register the webhook: {missing}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("azure.keyvault.secrets") is None:
        print(
            "postprovision: cannot register the webhook: the operations tool's packages are not installed for "
            f"{sys.executable}: python -m pip install -r requirements.txt -r requirements-ops.txt",
            file=sys.stderr,
        )
        return 2
    print(f"postprovision: {shlex.join(['python', *args[1:]])}", flush=True)
    return run(args, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(os.environ))
