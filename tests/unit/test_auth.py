import json

import pytest

from shared.auth import DISCOVERY_PATH, discovery_problem, msal_authority

DOCUMENT = {
    "issuer": "https://ims.bentley.com",
    "authorization_endpoint": "https://ims.bentley.com/connect/authorize",
    "token_endpoint": "https://ims.bentley.com/connect/token",
}


def test_a_path_less_authority_gets_a_placeholder_segment_and_its_discovery_is_read_from_the_root():
    authority, requested, real = msal_authority("https://ims.bentley.com/")
    assert authority.startswith("https://ims.bentley.com/")
    assert authority != "https://ims.bentley.com/"
    assert requested == authority + DISCOVERY_PATH
    assert real == "https://ims.bentley.com" + DISCOVERY_PATH


def test_an_authority_with_a_path_is_given_to_msal_as_it_is():
    url = "https://login.example.com/tenant" + DISCOVERY_PATH
    assert msal_authority("https://login.example.com/tenant") == ("https://login.example.com/tenant", url, url)


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (429, b"", True),
        (404, b"<html>Not Found</html>", True),
        (403, b"", True),
        (503, b"", True),
        (200, b"<html>a proxy's sign-in page</html>", True),
        (200, b"[1, 2]", True),
        (200, b"", True),
        (200, json.dumps({"issuer": "x"}).encode(), False),
        (200, json.dumps({k: v for k, v in DOCUMENT.items() if k != "token_endpoint"}).encode(), False),
    ],
)
def test_only_a_discovery_document_that_arrived_and_is_unusable_is_permanent(status, body, transient):
    problem = discovery_problem(status, body)
    assert problem is not None
    assert problem[0] is transient


def test_a_complete_discovery_document_has_no_problem():
    assert discovery_problem(200, json.dumps(DOCUMENT).encode()) is None
