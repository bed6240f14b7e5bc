import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from ops.cli import main, never_expires, settings_path
from ops.output import Output
from ops.platform_api import Webhook


@pytest.mark.parametrize("rate", ["nan", "inf", "0", "-2", "1e-300", "often"])
def test_a_replay_rate_that_is_not_a_usable_positive_number_is_refused_by_the_parser(rate, capsys):
    # GIVEN a rate that would mean "no limit", a crash or a wait of centuries; WHEN the command line is parsed
    with pytest.raises(SystemExit) as stopped:
        main(["poison", "replay", "--all", "--rate", rate], environ={})
    # THEN it stops with the usage status, naming the option and what to do instead
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --rate:" in err
    assert "leave out --rate for no limit" in err


@pytest.mark.parametrize("lease", ["0", "-5", "604801", "2.5"])
def test_a_lease_outside_what_a_queue_can_hold_is_refused_by_the_parser(lease, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["poison", "replay", "--all", "--lease", lease], environ={})
    assert stopped.value.code == 2
    assert "argument --lease: must be a whole number of seconds from 1 to 604800" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["poison", "replay", "--all", "--wait"], ["webhook", "rotate-secret", "--wait"]])
@pytest.mark.parametrize("wait", ["nan", "inf", "-1"])
def test_a_wait_that_would_never_end_or_is_negative_is_refused_by_the_parser(argv, wait, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*argv, wait], environ={})
    assert stopped.value.code == 2
    assert "argument --wait: must be a number of seconds, 0 or more" in capsys.readouterr().err


def test_next_to_make_dev_the_tool_reads_the_settings_make_dev_wrote(tmp_path):
    # GIVEN a checkout where make dev wrote .sandbox/local.settings.json, and no local.settings.json
    (tmp_path / ".sandbox").mkdir()
    (tmp_path / ".sandbox" / "local.settings.json").write_text("{}")
    # THEN the tool reads make dev's settings without --settings
    assert settings_path(None, {}, tmp_path) == Path(".sandbox/local.settings.json")
    # but a file or storage given wins: --settings, a local.settings.json, storage in the environment (or azd's)
    assert settings_path("mine.json", {}, tmp_path) == Path("mine.json")
    assert settings_path(None, {"AzureWebJobsStorage": "x"}, tmp_path) == Path("local.settings.json")
    assert settings_path(None, {"AZURE_STORAGE_ACCOUNT_NAME": "x"}, tmp_path) == Path("local.settings.json")
    (tmp_path / "local.settings.json").write_text("{}")
    assert settings_path(None, {}, tmp_path) == Path("local.settings.json")


def test_without_make_dev_the_settings_are_local_settings_json(tmp_path):
    assert settings_path(None, {}, tmp_path) == Path("local.settings.json")


def test_a_message_sent_without_an_expiry_is_shown_as_never_expiring():
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert never_expires(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), now)
    assert not never_expires(now + timedelta(days=7), now)
    assert not never_expires(None, now)


def test_webhooks_in_json_use_the_same_camel_case_as_every_other_json():
    webhook = Webhook("w", "iTwin", "t", True, "https://app/api/webhooks/itwin", ("iModels.iModelDeleted.v1",))
    assert set(webhook.as_dict()) == {
        "id",
        "scope",
        "scopeId",
        "active",
        "callbackUrl",
        "eventTypes",
        "created",
        "modified",
    }


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["poison", "replay", "--help"], ["(default 30)", "(default 40)", "default: no limit"]),
        (["webhook", "rotate-secret", "--help"], ["(default 600)"]),
    ],
)
def test_help_shows_the_defaults(argv, shown, capsys):
    with pytest.raises(SystemExit):
        main(argv, environ={})
    text = " ".join(capsys.readouterr().out.split())
    assert all(s in text for s in shown), text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_purge_whose_count_is_mistyped_deletes_nothing_and_exits_2(monkeypatch):
    letter = SimpleNamespace(id="6e77aa00-0000", when=datetime.now(UTC), command_kind="delete run", code="X")
    monkeypatch.setattr("ops.cli._choose", lambda context, verb: ([letter], []))
    monkeypatch.setattr("sys.stdin", Terminal("2\n"))
    out, err = io.StringIO(), io.StringIO()
    code = main(["poison", "purge", "--all"], output=Output(out, err, interactive=False), environ={})
    assert code == 2
    assert "error: nothing deleted: the count typed was not 1" in err.getvalue()
