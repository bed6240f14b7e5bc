import io
from datetime import timedelta

import pytest

from ops.errors import UsageError
from ops.output import Output, span, table
from ops.subscription import check_callback, handled_event_types, normal_url
from shared.rules import load_rules


def test_a_table_aligns_its_columns_and_cuts_only_the_last_to_the_width():
    lines = table(["ID", "MESSAGE"], [["a", "short"], ["bbbb", "x" * 100]], width=40)
    assert lines[0] == "ID    MESSAGE"
    assert lines[1] == "a     short"
    assert len(lines[2]) == 40
    assert lines[2].endswith("…")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=6, hours=23, minutes=5), "6d 23h"),
        (timedelta(hours=4, minutes=5), "4h 05m"),
        (timedelta(minutes=12, seconds=30), "12m 30s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_durations_show_their_two_largest_units(delta, text):
    assert span(delta) == text


def test_the_progress_bar_draws_on_a_terminal_and_lines_print_above_it():
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err, interactive=True)
    bar = output.progress(4, "replay")
    bar.advance()
    output.line("replayed one")
    bar.close()
    assert "replay [#######.....................] 1/4" in err.getvalue()
    assert out.getvalue() == "replayed one\n"


def test_no_progress_bar_when_not_at_a_terminal():
    err = io.StringIO()
    output = Output(io.StringIO(), err, interactive=False)
    output.progress(4, "replay").advance()
    assert err.getvalue() == ""


def test_the_event_types_are_those_a_rule_can_turn_into_commands_with_the_settings():
    rules = load_rules(None)
    handled, skipped = handled_event_types(rules, {})
    assert handled == ["iModels.iModelDeleted.v1", "realityModeling.jobCompleted.v2"]
    assert skipped == [
        "iModels.iModelCreated.v1 (its rule needs ITWIN_EXPORT_CONNECTION_NAME)",
        "iModels.namedVersionCreated.v1 (its rule needs ITWIN_CLASH_TEST_IDS)",
        "iModels.changesReady.v1 (its rule needs ITWIN_CLASH_V2_CHANGES_TEST_IDS)",
    ]
    handled, skipped = handled_event_types(rules, {"ITWIN_EXPORT_CONNECTION_NAME": "n", "ITWIN_CLASH_TEST_IDS": "t"})
    assert handled == [
        "iModels.iModelDeleted.v1",
        "iModels.iModelCreated.v1",
        "iModels.namedVersionCreated.v1",
        "realityModeling.jobCompleted.v2",
    ]
    assert skipped == ["iModels.changesReady.v1 (its rule needs ITWIN_CLASH_V2_CHANGES_TEST_IDS)"]


def test_callback_urls_compare_without_case_in_the_host_or_a_trailing_slash():
    assert normal_url("HTTPS://App.Example.com/api/webhooks/itwin/") == "https://app.example.com/api/webhooks/itwin"


@pytest.mark.parametrize("url", ["app.example.com/api", "http://app.example.com/api/webhooks/itwin", "ftp://x/y"])
def test_a_callback_the_platform_cannot_call_is_refused(url):
    with pytest.raises(UsageError):
        check_callback(url)


def test_a_loopback_http_callback_is_allowed_for_the_local_host():
    assert check_callback("http://127.0.0.1:7071/api/webhooks/itwin") == "http://127.0.0.1:7071/api/webhooks/itwin"
