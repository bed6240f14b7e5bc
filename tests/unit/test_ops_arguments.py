import pytest

from ops.cli import main


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
