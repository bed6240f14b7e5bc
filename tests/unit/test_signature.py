import pytest

from shared.signature import WebhookSecrets, sign, verify

SECRET = "a-webhook-secret-of-at-least-32-chars"
BODY = b'{"eventType": "iModels.iModelDeleted.v1"}'


def test_a_delivery_signed_with_the_secret_verifies():
    assert sign(BODY, SECRET).startswith("sha256=")
    assert verify(BODY, sign(BODY, SECRET), SECRET)
    assert verify(BODY, sign(BODY, SECRET).upper().replace("SHA256=", "sha256="), SECRET)


@pytest.mark.parametrize(
    ("body", "header", "secret"),
    [
        (BODY + b" ", sign(BODY, SECRET), SECRET),
        (BODY, sign(BODY, "another-secret-another-secret-xx"), SECRET),
        (BODY, None, SECRET),
        (BODY, "", SECRET),
        (BODY, sign(BODY, SECRET).removeprefix("sha256="), SECRET),
        (BODY, "sha1=" + sign(BODY, SECRET)[7:], SECRET),
        (BODY, "sha256=zz", SECRET),
        (BODY, sign(BODY, ""), None),
        (BODY, sign(BODY, ""), ""),
    ],
)
def test_anything_else_is_refused(body, header, secret):
    assert not verify(body, header, secret)


PREVIOUS = "the-secret-being-replaced-0123456789"


def test_during_a_change_of_secret_a_delivery_signed_with_either_verifies():
    secrets = WebhookSecrets(SECRET, PREVIOUS)
    assert verify(BODY, sign(BODY, SECRET), secrets)
    assert verify(BODY, sign(BODY, PREVIOUS), secrets)
    assert not verify(BODY, sign(BODY, "a-third-secret-a-third-secret-xx"), secrets)


def test_the_previous_secret_alone_verifies_nothing():
    secrets = WebhookSecrets(None, PREVIOUS)
    assert not secrets
    assert not verify(BODY, sign(BODY, PREVIOUS), secrets)


@pytest.mark.parametrize(
    "previous",
    ["", "   ", "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/itwin-webhook-secret-previous/)"],
)
def test_an_empty_or_unresolved_key_vault_reference_is_not_a_secret(previous):
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/itwin-webhook-secret/)"
    secrets = WebhookSecrets.from_env({"ITWIN_WEBHOOK_SECRET": SECRET, "ITWIN_WEBHOOK_SECRET_PREVIOUS": previous})
    assert secrets.candidates() == (SECRET,)
    assert not verify(BODY, sign(BODY, previous), secrets)
    assert not WebhookSecrets.from_env({"ITWIN_WEBHOOK_SECRET": reference})
