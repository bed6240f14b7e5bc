"""``python -m ops`` when storage or the iTwin Platform cannot be reached: every command says so within 10 s, with
what to check, rather than retrying silently for minutes. Unreachable means a real closed port: nothing listens."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
from app_settings import settings_for
from ops_helpers import ops_process, run_ops, write_settings

from sandbox.azurite import connection_string

pytestmark = pytest.mark.integration

BOUND = 10.0  # seconds: what the issue promises the operator
CALLBACK = "https://app.example.com/api/webhooks/itwin"
SECRET = "the-webhook-secret-at-start-0123456789"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed, so it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def black_hole():
    """A loopback port whose connections hang unanswered, as behind a firewall that drops them: a socket that
    listens with a full backlog and never accepts, so the kernel drops every further connection attempt."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def storage_gone(tmp_path):
    port = closed_port()
    values = {"AzureWebJobsStorage": connection_string(port, table_port=port)}
    return write_settings(tmp_path / "local.settings.json", values)


@pytest.fixture
def platform_gone(tmp_path):
    url = f"https://127.0.0.1:{closed_port()}"
    values = {
        "ITWIN_CLIENT_ID": "id",
        "ITWIN_CLIENT_SECRET": "secret",
        "ITWIN_AUTHORITY": url,
        "ITWIN_API_URL": url,
        "ITWIN_WEBHOOK_URL": CALLBACK,
        "ITWIN_WEBHOOK_SECRET": SECRET,
    }
    return write_settings(tmp_path / "local.settings.json", values)


@pytest.fixture
def api_gone(tmp_path, simulator):
    """The token service answers (the simulator's), the API does not."""
    values = {
        **settings_for(simulator),
        "ITWIN_API_URL": f"https://127.0.0.1:{closed_port()}",
        "ITWIN_WEBHOOK_URL": CALLBACK,
        "ITWIN_WEBHOOK_SECRET": SECRET,
    }
    return write_settings(tmp_path / "local.settings.json", values)


STORAGE_COMMANDS = [
    ["poison", "list"],
    ["poison", "show", "abcdef"],
    ["poison", "replay", "--all"],
    ["poison", "purge", "--all", "--yes"],
    ["commands", "list"],
    ["commands", "show", "20261123-c0123456789abcdef"],
]
API_COMMANDS = [
    ["webhook", "list"],
    ["webhook", "create"],
    ["webhook", "activate"],
    ["webhook", "delete"],
    ["webhook", "rotate-secret"],
]


def failure_within_bound(settings, argv: list[str]) -> str:
    """Run ``python -m ops argv`` with ``settings``; check that it failed (exit 1) within `BOUND`; its stderr."""
    started = time.monotonic()
    result = run_ops(settings, *argv)
    took = time.monotonic() - started

    assert took < BOUND, f"{' '.join(argv)} took {took:.1f} s"
    assert result.code == 1
    return result.err


@pytest.mark.parametrize("argv", STORAGE_COMMANDS, ids=" ".join)
def test_unreachable_storage_is_reported_within_ten_seconds_with_what_to_check(storage_gone, argv):
    line = failure_within_bound(storage_gone, argv).strip().splitlines()[-1]
    assert "cannot reach storage" in line
    assert "check AzureWebJobsStorage" in line


@pytest.mark.parametrize("argv", API_COMMANDS, ids=" ".join)
def test_an_unreachable_token_service_is_reported_within_ten_seconds_with_what_to_check(platform_gone, argv):
    line = failure_within_bound(platform_gone, argv).strip().splitlines()[-1]
    assert "check ITWIN_AUTHORITY; a loopback address is the local simulator: start it with `make dev`" in line


@pytest.mark.parametrize("argv", API_COMMANDS, ids=" ".join)
def test_an_unreachable_api_is_reported_within_ten_seconds_with_what_to_check(api_gone, argv):
    line = failure_within_bound(api_gone, argv).strip().splitlines()[-1]
    assert "cannot reach the iTwin Platform API at https://127.0.0.1:" in line
    assert "check ITWIN_API_URL" in line


def test_poison_list_run_as_a_process_against_a_closed_port_ends_within_ten_seconds(storage_gone):
    started = time.monotonic()
    process = ops_process(storage_gone, "poison", "list")
    _, err = process.communicate(timeout=120)
    took = time.monotonic() - started

    assert took < BOUND, f"poison list took {took:.1f} s"
    assert process.returncode == 1
    assert "cannot reach storage to read the poison queue" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["poison", "list"], "cannot reach storage to read the poison queue (it timed out): check AzureWebJobsStorage"),
        (["commands", "list"], "cannot reach storage to read the command ledger (it timed out)"),
        (["webhook", "list"], "could not be used (ConnectTimeout)"),
    ],
    ids=["poison list", "commands list", "webhook list"],
)
def test_storage_or_a_platform_that_drops_connections_is_reported_within_ten_seconds(tmp_path, black_hole, argv, says):
    url = f"https://127.0.0.1:{black_hole}"
    values = {
        "AzureWebJobsStorage": connection_string(black_hole, table_port=black_hole),
        **{"ITWIN_CLIENT_ID": "id", "ITWIN_CLIENT_SECRET": "secret", "ITWIN_AUTHORITY": url, "ITWIN_API_URL": url},
    }
    settings = write_settings(tmp_path / "local.settings.json", values)

    assert says in failure_within_bound(settings, argv)


def test_webhook_list_after_the_simulator_stopped_says_its_ca_file_is_gone_and_how_to_start_it(tmp_path, simulator):
    # GIVEN settings as make dev writes them, naming its simulator's CA file (here a copy: this process's
    # simulators share theirs); WHEN make dev stops, the simulator stops and its CA file goes with the process
    ca_file = tmp_path / "itwin-simulator-ca.pem"
    shutil.copy(simulator.ca_path, ca_file)
    values = {**settings_for(simulator), "REQUESTS_CA_BUNDLE": str(ca_file)}
    settings = write_settings(tmp_path / "local.settings.json", values)
    simulator.stop()
    ca_file.unlink()

    result = run_ops(settings, "webhook", "list")

    # THEN the tool says what is gone and how to start it, not an unexpected OSError
    assert result.code == 1
    line = result.err.strip().splitlines()[-1]
    assert f"the CA file REQUESTS_CA_BUNDLE in {settings} names, {ca_file}, is gone" in line
    assert "Start it again with `make dev`" in line
    assert "unexpected" not in result.err
