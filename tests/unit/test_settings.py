import pytest

from shared.settings import (
    DEFAULT_API_URL,
    DEFAULT_AUTHORITY,
    SETTINGS,
    Settings,
    SettingsError,
    missing_required,
)

REQUIRED = {"ITWIN_CLIENT_ID": "app-id", "ITWIN_CLIENT_SECRET": "s3cr3t-value"}


def test_defaults_match_production():
    settings = Settings.from_env(REQUIRED)
    assert settings.authority == DEFAULT_AUTHORITY == "https://ims.bentley.com"
    assert settings.api_url == DEFAULT_API_URL == "https://api.bentley.com"
    assert settings.scope == "itwin-platform"
    assert settings.max_attempts == 8
    assert settings.max_command_age == 24 * 3600
    assert settings.clash_test_ids == ()


def test_missing_required_settings_are_named_together():
    with pytest.raises(SettingsError, match="ITWIN_CLIENT_ID, ITWIN_CLIENT_SECRET"):
        Settings.from_env({})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ITWIN_AUTHORITY", "http://ims.bentley.com"),
        ("ITWIN_API_URL", "api.bentley.com"),
        ("ITWIN_API_URL", "https://api.bentley.com/?x=1"),
        ("ITWIN_MAX_ATTEMPTS", "0"),
        ("ITWIN_MAX_ATTEMPTS", "eight"),
        ("ITWIN_RATE_LIMITS", "export"),
        ("ITWIN_RATE_LIMITS", "export=fast"),
        ("ITWIN_RATE_LIMITS", "export=0"),
        ("ITWIN_RATE_LIMITS", "clashdetection=1e-310"),
        ("ITWIN_RATE_LIMITS", "export=0.0001"),
        ("ITWIN_RATE_LIMITS", "export=nan"),
        ("ITWIN_RATE_LIMITS", "export=inf"),
        ("ITWIN_MAX_RETRY_AFTER", "2d"),
        ("ITWIN_MAX_RETRY_AFTER", "5s"),
        ("ITWIN_MAX_COMMAND_AGE", "forever"),
        ("ITWIN_MAX_COMMAND_AGE", "10s"),
        ("ITWIN_MAX_COMMAND_AGE", "31d"),
        ("ITWIN_MAX_COMMAND_AGE", "h"),
    ],
)
def test_a_malformed_setting_is_an_error_naming_it(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**REQUIRED, name: value})


def test_the_secret_never_appears_in_errors_or_repr():
    settings = Settings.from_env({**REQUIRED, "ITWIN_WEBHOOK_SECRET": "hook-secret-value"})
    assert "s3cr3t-value" not in repr(settings)
    assert "hook-secret-value" not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ITWIN_CLIENT_SECRET": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(caught.value)


def test_urls_lose_their_trailing_slash_and_test_ids_are_split():
    settings = Settings.from_env(
        {**REQUIRED, "ITWIN_API_URL": "https://api.example.com/", "ITWIN_CLASH_TEST_IDS": " t1, ,t2 "}
    )
    assert settings.api_url == "https://api.example.com"
    assert settings.clash_test_ids == ("t1", "t2")


def test_storage_counts_as_configured_in_either_form():
    base = dict(REQUIRED)
    assert missing_required(base) == ["AzureWebJobsStorage"]
    assert missing_required({**base, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == []
    assert missing_required({**base, "AzureWebJobsStorage__accountName": "acct"}) == []


def test_every_setting_is_named_once():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))


def test_rate_limits_add_to_the_documented_clash_detection_limits_of_both_versions():
    assert Settings.from_env(REQUIRED).rate_limits == {"clashdetection": 6.0, "clash-detection": 6.0}
    limits = Settings.from_env({**REQUIRED, "ITWIN_RATE_LIMITS": "export=8, clashdetection=3"}).rate_limits
    assert limits == {"clashdetection": 3.0, "clash-detection": 6.0, "export": 8.0}


@pytest.mark.parametrize("text", ["clash-detection=4", "Reality-Modeling=4"])
def test_a_hyphenated_api_name_can_be_given_a_rate(text):
    api = text.split("=")[0].lower()
    assert Settings.from_env({**REQUIRED, "ITWIN_RATE_LIMITS": text}).rate_limits[api] == 4.0


@pytest.mark.parametrize("text", ["clash_detection=4", "-export=4", "clash--detection=4", "a b=4"])
def test_a_rate_for_a_name_that_is_no_path_segment_is_refused(text):
    with pytest.raises(SettingsError, match="ITWIN_RATE_LIMITS"):
        Settings.from_env({**REQUIRED, "ITWIN_RATE_LIMITS": text})


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("90m", 5400), ("2d", 172800), ("3600", 3600), ("1.5h", 5400)]
)
def test_the_maximum_command_age_is_a_duration_with_a_unit(text, seconds):
    assert Settings.from_env({**REQUIRED, "ITWIN_MAX_COMMAND_AGE": text}).max_command_age == seconds


def test_a_retention_shorter_than_a_command_may_wait_is_refused_naming_both_settings():
    environ = {**REQUIRED, "ITWIN_LEDGER_RETENTION": "1d", "ITWIN_MAX_COMMAND_AGE": "30d"}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(environ)
    assert "ITWIN_LEDGER_RETENTION (1d)" in str(refused.value)
    assert "ITWIN_MAX_COMMAND_AGE (30d)" in str(refused.value)
    accepted = Settings.from_env({**environ, "ITWIN_LEDGER_RETENTION": "30d", "ITWIN_MAX_COMMAND_AGE": "29d"})
    assert accepted.ledger_retention_days == 30


@pytest.mark.parametrize("name", ["ITWIN_API_URL", "ITWIN_AUTHORITY"])
def test_a_url_with_a_user_name_or_password_is_refused_without_echoing_it(name):
    with pytest.raises(SettingsError, match=f"{name} must not carry a user name or password") as caught:
        Settings.from_env({**REQUIRED, name: "https://operator:hunter2@gateway.example.com/itwin"})
    assert "hunter2" not in str(caught.value)


def test_retry_after_is_honoured_up_to_fifteen_minutes_unless_set():
    assert Settings.from_env(REQUIRED).max_retry_after == 15 * 60
    assert Settings.from_env({**REQUIRED, "ITWIN_MAX_RETRY_AFTER": "1h"}).max_retry_after == 3600
