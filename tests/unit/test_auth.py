from shared.auth import DISCOVERY_PATH, msal_authority


def test_a_path_less_authority_gets_a_placeholder_segment_and_a_discovery_rewrite():
    authority, rewrites = msal_authority("https://ims.bentley.com/")
    assert authority.startswith("https://ims.bentley.com/")
    assert authority != "https://ims.bentley.com/"
    assert rewrites == {authority + DISCOVERY_PATH: "https://ims.bentley.com" + DISCOVERY_PATH}


def test_an_authority_with_a_path_is_given_to_msal_as_it_is():
    assert msal_authority("https://login.example.com/tenant") == ("https://login.example.com/tenant", {})
