"""Where the app's secrets live: ``local.settings.json`` locally, Key Vault in Azure (the vault the Bicep deploys,
whose secrets the app reads through Key Vault references)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from ops.errors import OpsError, UsageError
from ops.local_settings import LocalSettingsFile

CURRENT = "ITWIN_WEBHOOK_SECRET"
PREVIOUS = "ITWIN_WEBHOOK_SECRET_PREVIOUS"
SWITCHED_AT = "ITWIN_WEBHOOK_SECRET_SWITCHED_AT"
SWITCH_TAG = "webhookSwitchedAt"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


# The secret behind each setting in infra/modules/key-vault.bicep.
KEY_VAULT_SECRETS = {
    "ITWIN_CLIENT_SECRET": "itwin-client-secret",
    "ITWIN_WEBHOOK_SECRET": "itwin-webhook-secret",
    "ITWIN_WEBHOOK_SECRET_PREVIOUS": "itwin-webhook-secret-previous",
}


class SecretStore(Protocol):
    """Reads secret settings by their setting name, and records a change of webhook secret."""

    where: str

    def get(self, name: str) -> str | None: ...

    def put_secret(self, secret: str) -> None:
        """Write the webhook secret (when there was none)."""

    def begin_change(self, old: str, new: str) -> None:
        """Keep ``old`` as the previous webhook secret, then make ``new`` the webhook secret (in that order, so the
        store holds the old secret at every moment)."""

    def record_switch(self, at: datetime) -> None:
        """Note when the webhook was switched to the new secret."""

    def switched_at(self) -> datetime | None:
        """When the webhook was switched to the new secret, if that was recorded for the current change."""

    def end_change(self) -> None:
        """The previous webhook secret is no longer accepted."""


class LocalSecretStore:
    """The ``Values`` of one ``local.settings.json``. The switch time is kept beside the secrets, in
    ``ITWIN_WEBHOOK_SECRET_SWITCHED_AT`` (not a setting the app reads)."""

    def __init__(self, file: LocalSettingsFile) -> None:
        self.file = file
        self.where = str(file.path)

    def get(self, name: str) -> str | None:
        return self.file.values().get(name, "").strip() or None

    def put_secret(self, secret: str) -> None:
        self.file.update({CURRENT: secret})

    def begin_change(self, old: str, new: str) -> None:
        self.file.update({PREVIOUS: old, SWITCHED_AT: None})
        self.file.update({CURRENT: new})

    def record_switch(self, at: datetime) -> None:
        self.file.update({SWITCHED_AT: _iso(at)})

    def switched_at(self) -> datetime | None:
        return _parse(self.file.values().get(SWITCHED_AT))

    def end_change(self) -> None:
        self.file.update({PREVIOUS: None, SWITCHED_AT: None})


def _vault_url(name_or_url: str) -> str:
    if name_or_url.startswith("https://"):
        return name_or_url.rstrip("/")
    return f"https://{name_or_url}.vault.azure.net"


class KeyVaultSecretStore:
    """A Key Vault, reached as whoever ``DefaultAzureCredential`` finds (``az login``): reading needs Key Vault
    Secrets User, writing Key Vault Secrets Officer on the vault."""

    def __init__(self, vault: str, client: Any = None) -> None:
        self.url = _vault_url(vault)
        self.where = f"Key Vault {self.url}"
        if client is None:
            try:
                from azure.keyvault.secrets import SecretClient
            except ImportError:
                raise UsageError(
                    "azure-keyvault-secrets is not installed: python -m pip install -r requirements-ops.txt"
                ) from None
            from azure.identity import DefaultAzureCredential

            client = SecretClient(self.url, DefaultAzureCredential())
        self._client = client

    def _call(self, verb: str, role: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            raise _vault_error(error, self, verb, role) from None

    def _secret(self, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._client.get_secret(KEY_VAULT_SECRETS[name])
        except ResourceNotFoundError:
            return None
        except Exception as error:
            raise _vault_error(error, self, "read", "Key Vault Secrets User") from None

    def get(self, name: str) -> str | None:
        secret = self._secret(name)
        return (secret.value or None) if secret is not None else None

    def _set(self, name: str, value: str) -> None:
        self._call(
            "write",
            "Key Vault Secrets Officer",
            self._client.set_secret,
            KEY_VAULT_SECRETS[name],
            value,
            content_type="text/plain",
        )

    def put_secret(self, secret: str) -> None:
        self._set(CURRENT, secret)

    def begin_change(self, old: str, new: str) -> None:
        self._set(PREVIOUS, old)  # a new version, without the switch tag of an earlier change
        self._set(CURRENT, new)

    def record_switch(self, at: datetime) -> None:
        self._call(
            "tag",
            "Key Vault Secrets Officer",
            self._client.update_secret_properties,
            KEY_VAULT_SECRETS[PREVIOUS],
            tags={SWITCH_TAG: _iso(at)},
        )

    def switched_at(self) -> datetime | None:
        secret = self._secret(PREVIOUS)
        tags = (secret.properties.tags or {}) if secret is not None else {}
        return _parse(tags.get(SWITCH_TAG))

    def end_change(self) -> None:
        # A Key Vault reference to a missing secret leaves its text in the setting (which the app ignores), and a
        # deleted name stays taken while soft-deleted; equal to the current secret, "previous" changes nothing.
        current = self.get(CURRENT)
        if current is None:
            raise OpsError(f"{self.where} has no {KEY_VAULT_SECRETS[CURRENT]} secret")
        self._set(PREVIOUS, current)


def _vault_error(error: Exception, store: KeyVaultSecretStore, verb: str, role: str) -> OpsError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(error, ClientAuthenticationError):
        return OpsError(f"cannot sign in to {store.where}: run `az login` (or set the AZURE_* variables) first")
    if isinstance(error, HttpResponseError) and error.status_code == 403:
        return OpsError(
            f"{store.where} refused to {verb} the secret (403 {getattr(error, 'error_code', '') or 'Forbidden'}): "
            f"you need the {role} role on the vault (docs/deployment.md, 'Rotate the secrets')"
        )
    if isinstance(error, ServiceRequestError):
        return OpsError(f"cannot reach {store.where}: {error}")
    if isinstance(error, HttpResponseError):
        return OpsError(f"{store.where} answered {error.status_code} when asked to {verb} a secret: {error.message}")
    return OpsError(f"could not {verb} a secret in {store.where}: {type(error).__name__}: {error}")


def secret_store(key_vault: str | None, settings_file: LocalSettingsFile, environ: Mapping[str, str]) -> SecretStore:
    """Key Vault when one is named (``--key-vault`` or ``AZURE_KEY_VAULT_NAME``), else ``local.settings.json``."""
    vault = key_vault or environ.get("AZURE_KEY_VAULT_NAME", "").strip()
    if vault:
        return KeyVaultSecretStore(vault)
    return LocalSecretStore(settings_file)
