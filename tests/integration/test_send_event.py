"""`python -m sandbox.send_event`: one signed delivery of a chosen event type, with the secret and the callback the
dev settings name, that the app's own parser, signature check and rules accept."""

from __future__ import annotations

import json

from ops.local_settings import LocalSettingsFile
from sandbox.send_event import main
from shared.rules import commands_for, load_rules, parse_event
from shared.signature import verify
from tests.callback_receiver import CallbackReceiver

SECRET = "s" * 40
IMODEL = "2f0c9a3e-4b1d-4c6e-8a57-1d3e5f7a9b20"


def dev_settings(tmp_path, url):
    path = tmp_path / "local.settings.json"
    LocalSettingsFile(path).update({"ITWIN_WEBHOOK_SECRET": SECRET, "ITWIN_WEBHOOK_URL": url})
    return path


def test_an_imodel_deletion_is_signed_with_the_dev_secret_and_makes_the_rules_delete_its_connections(tmp_path):
    with CallbackReceiver() as receiver:
        settings = dev_settings(tmp_path, receiver.url)
        status = main(["iModels.iModelDeleted.v1", "--imodel", IMODEL, "--settings", str(settings)], environ={})
    assert status == 0
    [delivery] = receiver.received
    assert verify(delivery.body, delivery.signature, SECRET)
    event = parse_event(delivery.body)
    assert event.event_type == "iModels.iModelDeleted.v1"
    [command] = commands_for(event, load_rules(None), {})
    assert (command.action, command.resource, command.imodel_id) == ("delete", "connection", IMODEL)


def test_a_named_version_carries_the_changeset_and_content_adds_any_field(tmp_path):
    with CallbackReceiver() as receiver:
        settings = dev_settings(tmp_path, receiver.url)
        argv = ["iModels.namedVersionCreated.v1", "--imodel", IMODEL, "--changeset", "abc123"]
        status = main([*argv, "--content", '{"extra": 1}', "--settings", str(settings)], environ={})
    assert status == 0
    content = json.loads(receiver.received[0].body)["content"]
    assert (content["imodelId"], content["changesetId"], content["extra"]) == (IMODEL, "abc123", 1)
    assert {"versionId", "versionName", "changesetIndex"} <= set(content)


def test_a_refused_delivery_exits_1_and_no_secret_says_to_start_make_dev(tmp_path, capsys):
    with CallbackReceiver() as receiver:
        receiver.answers = [401]
        settings = dev_settings(tmp_path, receiver.url)
        assert main(["Any.Type.v1", "--settings", str(settings)], environ={}) == 1
    assert main(["Any.Type.v1", "--settings", str(tmp_path / "none.json")], environ={}) == 2
    assert "make dev" in capsys.readouterr().err
