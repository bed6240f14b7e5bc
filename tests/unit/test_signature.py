import pytest

from shared.signature import sign, verify

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
