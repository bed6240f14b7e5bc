from pathlib import Path

import pytest

from ops.cli import main, settings_path


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
