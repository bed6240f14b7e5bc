"""The secret stores. No Key Vault can run here, so its store is driven through a stand-in for `SecretClient`
that keeps secrets in a dict; the failures are the Azure SDK's own exception types."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from ops.errors import OpsError
from ops.local_settings import LocalSettingsFile
from ops.secret_store import KeyVaultSecretStore, LocalSecretStore

OLD, NEW = "the-old-webhook-secret-0123456789abc", "the-new-webhook-secret-0123456789abc"
SWITCH = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Vault:
    """Secrets by name, each write a new version (its tags start empty), as Key Vault keeps them."""

    def __init__(self, error: Exception | None = None) -> None:
        self.secrets: dict[str, SimpleNamespace] = {}
        self.writes: list[str] = []
        self.error = error

    def get_secret(self, name):
        if self.error:
            raise self.error
        if name not in self.secrets:
            raise ResourceNotFoundError("SecretNotFound")
        return self.secrets[name]

    def set_secret(self, name, value, content_type=None):
        if self.error:
            raise self.error
        self.writes.append(name)
        self.secrets[name] = SimpleNamespace(value=value, properties=SimpleNamespace(tags={}))

    def update_secret_properties(self, name, tags=None):
        self.secrets[name].properties.tags = dict(tags or {})


def test_a_change_in_key_vault_keeps_the_old_secret_before_writing_the_new_one_and_ends_equal():
    vault = Vault()
    store = KeyVaultSecretStore("kv-example", client=vault)
    store.put_secret(OLD)

    store.begin_change(OLD, NEW)
    store.record_switch(SWITCH)

    assert vault.writes == ["itwin-webhook-secret", "itwin-webhook-secret-previous", "itwin-webhook-secret"]
    assert (store.get("ITWIN_WEBHOOK_SECRET"), store.get("ITWIN_WEBHOOK_SECRET_PREVIOUS")) == (NEW, OLD)
    assert store.switched_at() == SWITCH
    store.end_change()
    assert store.get("ITWIN_WEBHOOK_SECRET_PREVIOUS") == NEW  # a reference must keep resolving
    assert store.switched_at() is None
    assert store.where == "Key Vault https://kv-example.vault.azure.net"


def forbidden() -> HttpResponseError:
    error = HttpResponseError(message="Caller is not authorized")
    error.status_code = 403
    return error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (forbidden(), "you need the Key Vault Secrets User role on the vault"),
        (ClientAuthenticationError("no credential"), "run `az login`"),
    ],
)
def test_key_vault_failures_say_what_to_do(error, message):
    store = KeyVaultSecretStore("https://kv-example.vault.azure.net/", client=Vault(error))
    with pytest.raises(OpsError, match=message.replace("`", ".")):
        store.get("ITWIN_WEBHOOK_SECRET")


def test_a_local_change_keeps_everything_else_in_the_file(tmp_path):
    file = LocalSettingsFile(tmp_path / "local.settings.json")
    file.update({"ITWIN_CLIENT_ID": "app", "ITWIN_WEBHOOK_SECRET": OLD})
    store = LocalSecretStore(file)

    store.begin_change(OLD, NEW)
    store.record_switch(SWITCH)
    assert file.values() == {
        "ITWIN_CLIENT_ID": "app",
        "ITWIN_WEBHOOK_SECRET": NEW,
        "ITWIN_WEBHOOK_SECRET_PREVIOUS": OLD,
        "ITWIN_WEBHOOK_SECRET_SWITCHED_AT": "2026-11-23T09:00:00Z",
    }
    store.end_change()
    assert file.values() == {"ITWIN_CLIENT_ID": "app", "ITWIN_WEBHOOK_SECRET": NEW}


def test_an_encrypted_or_broken_settings_file_is_named_and_left_alone(tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text('{"IsEncrypted": true, "Values": {}}')
    with pytest.raises(OpsError, match="is encrypted"):
        LocalSettingsFile(path).update({"X": "1"})
    path.write_text("{broken")
    with pytest.raises(OpsError, match="cannot be read as JSON"):
        LocalSettingsFile(path).values()
    assert path.read_text() == "{broken"
