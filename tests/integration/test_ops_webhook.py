"""``python -m ops webhook ...`` against the simulator's Webhooks API, and the real app under the local host."""

from __future__ import annotations

import json
import threading

import pytest
import requests
from app_settings import settings_for
from ops_helpers import read_settings, run_ops, write_settings
from samples import IMODEL

import function_app
from ops.rotation import Probe
from sandbox.host import LocalHost
from sandbox.settings_reload import SettingsReloader
from shared import runtime

pytestmark = pytest.mark.integration

SECRET = "the-webhook-secret-at-start-0123456789"
CALLBACK = "https://app.example.com/api/webhooks/itwin"
SECRETS = ("ITWIN_WEBHOOK_SECRET", "ITWIN_WEBHOOK_SECRET_PREVIOUS")


@pytest.fixture
def simulator(make_simulator):
    return make_simulator(resend_delays=(0.2, 0.2, 0.2))


@pytest.fixture
def settings(tmp_path, simulator):
    values = {**settings_for(simulator), "ITWIN_WEBHOOK_SECRET": SECRET, "ITWIN_WEBHOOK_URL": CALLBACK}
    return write_settings(tmp_path / "local.settings.json", values)


def test_create_subscribes_to_what_the_rules_handle_and_running_it_again_reuses_it(settings, simulator):
    first = run_ops(settings, "webhook", "create")
    values = read_settings(settings)
    write_settings(settings, {**values, "ITWIN_EXPORT_CONNECTION_NAME": "nightly"})
    again = run_ops(settings, "webhook", "create", "--activate")

    [webhook] = simulator.webhooks.values()
    assert (first.code, again.code) == (0, 0)
    assert "created webhook" in first.out
    assert "not subscribing to iModels.namedVersionCreated.v1 (its rule needs ITWIN_CLASH_TEST_IDS)" in first.err
    assert "reusing webhook" in again.out
    assert "updated its event types" in again.out
    assert webhook["callbackUrl"] == CALLBACK
    assert webhook["secret"] == SECRET
    assert webhook["eventTypes"] == [
        "iModels.iModelDeleted.v1",
        "iModels.iModelCreated.v1",
        "realityModeling.jobCompleted.v2",
    ]
    assert webhook["active"] is True


def test_activate_list_and_delete_are_idempotent(settings, simulator):
    run_ops(settings, "webhook", "create")
    activated = run_ops(settings, "webhook", "activate")
    still = run_ops(settings, "webhook", "activate")
    listed = run_ops(settings, "webhook", "list")
    deleted = run_ops(settings, "webhook", "delete", "--yes")
    nothing = run_ops(settings, "webhook", "delete", "--yes")
    unknown = run_ops(settings, "webhook", "delete", "--id", "3f0c8a43-0000-4000-8000-000000000000", "--yes")

    assert "activated webhook" in activated.out
    assert "is already active" in still.out
    assert f"active  Account  {CALLBACK}  iModels.iModelDeleted.v1" in listed.out
    assert listed.out.splitlines()[1].startswith("* ")
    assert "deleted webhook" in deleted.out
    assert (nothing.code, nothing.out.strip()) == (0, f"no webhook sends to {CALLBACK}: nothing to delete")
    assert (unknown.code, "does not exist (already deleted)" in unknown.out) == (0, True)
    assert simulator.webhooks == {}


def test_delete_asks_first_and_a_dry_run_deletes_nothing(settings, simulator):
    run_ops(settings, "webhook", "create")
    [webhook_id] = simulator.webhooks

    unconfirmed = run_ops(settings, "webhook", "delete")
    dry = run_ops(settings, "webhook", "delete", "--dry-run")
    still_there = list(simulator.webhooks)
    deleted = run_ops(settings, "webhook", "delete", "--yes")

    assert unconfirmed.code == 2
    assert "confirm with --yes when not at a terminal" in unconfirmed.err
    assert f"{webhook_id} (inactive, scope Account, 2 event type(s)) sends to {CALLBACK}" in dry.out
    assert "dry run: would delete 1 webhook(s)" in dry.out
    assert still_there == [webhook_id]
    assert (deleted.code, f"deleted webhook {webhook_id}" in deleted.out) == (0, True)
    assert simulator.webhooks == {}


def test_deleting_by_id_a_webhook_that_sends_elsewhere_needs_force(settings, simulator):
    other = "https://other-app.example.com/api/webhooks/itwin"
    run_ops(settings, "webhook", "create", "--url", other)
    [webhook_id] = simulator.webhooks

    refused = run_ops(settings, "webhook", "delete", "--id", webhook_id, "--yes")
    kept = list(simulator.webhooks)
    forced = run_ops(settings, "webhook", "delete", "--id", webhook_id, "--yes", "--force")

    assert refused.code == 2
    assert f"webhook {webhook_id} sends to {other}, not this app's webhook URL, {CALLBACK}" in refused.err
    assert "add --force to delete it all the same" in refused.err
    assert kept == [webhook_id]
    assert (forced.code, f"deleted webhook {webhook_id}" in forced.out) == (0, True)
    assert simulator.webhooks == {}


def test_create_writes_a_secret_when_there_is_none(settings, simulator):
    values = read_settings(settings)
    del values["ITWIN_WEBHOOK_SECRET"]
    write_settings(settings, values)

    result = run_ops(settings, "webhook", "create", "--scope", "itwin", "--itwin-id", simulator.itwin_id)

    written = read_settings(settings)["ITWIN_WEBHOOK_SECRET"]
    [webhook] = simulator.webhooks.values()
    assert result.code == 0
    assert "ITWIN_WEBHOOK_SECRET was not set: wrote a new one" in result.out
    assert len(written) >= 32
    assert (webhook["secret"], webhook["scope"], webhook["scopeId"]) == (written, "iTwin", simulator.itwin_id)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["webhook", "create", "--url", "http://app.example.com/hook"], "only calls HTTPS callback URLs"),
        (["webhook", "create", "--scope", "itwin"], "--scope itwin needs --itwin-id"),
        (["webhook", "activate"], f"no webhook sends to {CALLBACK}"),
        (["webhook", "rotate-secret"], f"no webhook sends to {CALLBACK}"),
    ],
)
def test_bad_input_is_a_clear_error_and_exit_status(settings, args, message):
    result = run_ops(settings, *args)
    assert result.code in (1, 2)
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_scope_that_differs_from_the_existing_webhook_is_refused(settings, simulator):
    run_ops(settings, "webhook", "create")
    result = run_ops(settings, "webhook", "create", "--scope", "itwin", "--itwin-id", simulator.itwin_id)
    assert result.code == 1
    assert "the scope cannot be changed: delete it first" in result.err


def test_without_webhooks_maintainer_the_error_says_which_permission(settings, simulator):
    simulator.webhooks_allowed = False
    result = run_ops(settings, "webhook", "list")
    assert result.code == 1
    assert "webhooks need the webhooks_maintainer permission" in result.err
    assert "Traceback" not in result.err


def test_a_token_the_platform_refuses_is_a_clear_error(settings):
    values = read_settings(settings)
    write_settings(settings, {**values, "ITWIN_CLIENT_SECRET": "not-the-secret"})
    result = run_ops(settings, "webhook", "list")
    assert result.code == 1
    assert "invalid_client" in result.err
    assert "Check ITWIN_CLIENT_ID, ITWIN_CLIENT_SECRET" in result.err


@pytest.fixture
def app(tmp_path, simulator, azurite, queues, monkeypatch):
    """The real app under the local host, reloading its webhook secrets from a local.settings.json as make dev
    does; the settings file points the tool at it."""
    for name, value in settings_for(simulator).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("ITWIN_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("ITWIN_WEBHOOK_SECRET_PREVIOUS", raising=False)
    runtime.reset()
    with open("host.json", encoding="utf-8") as f:
        host_json = json.load(f)
    host_json["extensions"]["queues"]["maxPollingInterval"] = "00:00:00.200"
    with LocalHost(function_app.app, host_json, port=0) as host:
        url = f"{host.url}/api/webhooks/itwin"
        values = {**settings_for(simulator), "ITWIN_WEBHOOK_SECRET": SECRET, "ITWIN_WEBHOOK_URL": url}
        settings = write_settings(tmp_path / "local.settings.json", values)
        with SettingsReloader(settings, SECRETS, interval=0.05):
            yield settings, url
    runtime.reset()


def test_an_imodel_deleted_in_the_simulator_reaches_the_app_through_the_webhook(app, simulator):
    settings, _ = app
    simulator.add_connection(IMODEL, "nightly")
    assert run_ops(settings, "webhook", "create", "--activate").code == 0

    simulator.delete_imodel(IMODEL)

    assert simulator.wait_for_deliveries(5)
    assert [d.status for d in simulator.deliveries] == [202]
    deadline = threading.Event()
    for _ in range(100):
        if not simulator.connections:
            break
        deadline.wait(0.05)
    assert simulator.connections == {}


def test_rotate_secret_while_deliveries_keep_arriving_refuses_none(app, simulator):
    settings, url = app
    simulator.add_imodel(IMODEL)
    run_ops(settings, "webhook", "create", "--event-type", "iModels.namedVersionCreated.v1", "--activate")
    stop = threading.Event()
    published = []

    def keep_publishing() -> None:
        while not stop.is_set():
            published.append(simulator.create_named_version(IMODEL))
            stop.wait(0.02)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        stop.wait(0.3)
        rotated = run_ops(settings, "webhook", "rotate-secret", "--wait", "10")
        stop.wait(0.3)
    finally:
        stop.set()
        publisher.join()
    assert simulator.wait_for_deliveries(10)

    values = read_settings(settings)
    [webhook] = simulator.webhooks.values()
    statuses = [d.status for d in simulator.deliveries]
    assert rotated.code == 0, rotated.err
    assert "now signs its deliveries with the new secret" in rotated.out
    assert "keep ITWIN_WEBHOOK_SECRET_PREVIOUS until" in rotated.out
    assert len(published) > 20
    assert statuses == [202] * len(published)  # every event delivered once, none refused or resent
    assert webhook["secret"] == values["ITWIN_WEBHOOK_SECRET"] != SECRET
    assert values["ITWIN_WEBHOOK_SECRET_PREVIOUS"] == SECRET

    early = run_ops(settings, "webhook", "rotate-secret", "--finish")
    forced = run_ops(settings, "webhook", "rotate-secret", "--finish", "--force")
    assert early.code == 2
    assert "keep ITWIN_WEBHOOK_SECRET_PREVIOUS until" in early.err
    assert forced.code == 0
    assert "ITWIN_WEBHOOK_SECRET_PREVIOUS" not in read_settings(settings)
    probe = Probe(url, requests.Session())
    for _ in range(40):  # the host reloads the file
        if probe.accepts(SECRET) is False:
            break
        threading.Event().wait(0.05)
    assert probe.accepts(SECRET) is False
    assert probe.accepts(webhook["secret"]) is True


def test_rotate_secret_does_not_switch_the_webhook_until_the_app_accepts_the_new_secret(tmp_path, app, simulator):
    settings, _ = app
    run_ops(settings, "webhook", "create", "--activate")
    elsewhere = write_settings(tmp_path / "elsewhere.json", read_settings(settings))  # the app never sees it

    stuck = run_ops(elsewhere, "webhook", "rotate-secret", "--wait", "1")

    [webhook] = simulator.webhooks.values()
    assert stuck.code == 3
    assert "still signs with the old secret, so no delivery is refused" in stuck.err
    assert webhook["secret"] == SECRET
    assert read_settings(elsewhere)["ITWIN_WEBHOOK_SECRET_PREVIOUS"] == SECRET

    write_settings(settings, read_settings(elsewhere))  # as if the app had restarted with the new settings
    resumed = run_ops(settings, "webhook", "rotate-secret", "--wait", "5")

    assert resumed.code == 0, resumed.err
    assert "a change of secret is under way" in resumed.out
    assert simulator.webhooks[webhook["id"]]["secret"] == read_settings(elsewhere)["ITWIN_WEBHOOK_SECRET"]
