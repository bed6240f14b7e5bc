"""The storage account behind ``AzureWebJobsStorage``, in either of its forms, for the queue and table clients.

A connection string (Azurite locally, or a storage key), or the identity-based form Azure uses with a managed
identity: ``AzureWebJobsStorage__queueServiceUri`` / ``__tableServiceUri`` (or ``__accountName`` for both), with
``__credential=managedidentity`` and ``__clientId`` for a user-assigned identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.settings import STORAGE_CONNECTION, SettingsError


def connection_string(environ: Mapping[str, str]) -> str | None:
    """The ``AzureWebJobsStorage`` connection string, or None when the identity-based form is used."""
    return environ.get(STORAGE_CONNECTION, "").strip() or None


def endpoint_and_credential(environ: Mapping[str, str], service: str) -> tuple[str, Any]:
    """The ``service`` (``queue`` or ``table``) endpoint URL and the Azure credential of the identity-based form.

    Raises `SettingsError` naming the settings to give when neither form is set.
    """
    prefix = STORAGE_CONNECTION + "__"
    options = {key[len(prefix) :].lower(): value.strip() for key, value in environ.items() if key.startswith(prefix)}
    url = options.get(f"{service}serviceuri")
    if not url and options.get("accountname"):
        url = f"https://{options['accountname']}.{service}.core.windows.net"
    if not url:
        raise SettingsError(
            f"{STORAGE_CONNECTION} is not set: give a connection string, or {prefix}{service}ServiceUri "
            f"(or {prefix}accountName) for a managed identity"
        )
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential  # on first use: cold start

    if options.get("credential", "").lower() == "managedidentity":
        return url, ManagedIdentityCredential(client_id=options.get("clientid") or None)
    return url, DefaultAzureCredential()
