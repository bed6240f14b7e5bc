"""Changing the webhook secret without refusing a delivery.

1. The old secret is kept as ``ITWIN_WEBHOOK_SECRET_PREVIOUS``, then a new ``ITWIN_WEBHOOK_SECRET`` is written
   (Key Vault, or ``local.settings.json``). The webhook still signs with the old one, which the app accepts.
2. The tool waits until the app accepts deliveries signed with either: it sends the callback a signed delivery of
   an event type no rule handles (answered 202, nothing enqueued) with each secret. In Azure the app loads the new
   values when it restarts; ``make dev`` reloads ``local.settings.json`` when it changes.
3. Only then is the webhook switched to the new secret (``PATCH /webhooks/{id}``) and the switch time recorded.
4. Deliveries signed before the switch may still be resent for a while, so the previous secret stays accepted for
   `DRAIN` after the switch; ``rotate-secret --finish`` then drops it.

Stopped at any point, running it again picks up where it stopped: while a previous secret is kept, it resumes
that change instead of starting another.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import requests

from ops.errors import NeedsAttention, OpsError, UsageError
from ops.output import Output, when
from ops.platform_api import PlatformApi, Webhook
from ops.secret_store import CURRENT, PREVIOUS, KeyVaultSecretStore, SecretStore

PROBE_EVENT = "ops.webhookSecretCheck.v1"
# The platform's resend schedule is not published; a day covers any resend we know of.
DRAIN = timedelta(hours=24)


class Probe:
    """Asks the app whether it accepts a delivery signed with a given secret."""

    def __init__(self, url: str, session: requests.Session | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.session = session or requests.Session()
        self.timeout = timeout

    def accepts(self, secret: str) -> bool | None:
        """True: accepted (2xx); False: refused (401); None: no usable answer (the app may be restarting)."""
        from shared.rules import format_enqueued
        from shared.signature import sign

        body = json.dumps(
            {
                "content": {},
                "eventType": PROBE_EVENT,
                "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
                "messageId": f"ops-probe-{uuid.uuid4()}",
                "webhookId": "ops-probe",
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Signature": sign(body, secret)}
        try:
            status = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout).status_code
        except requests.RequestException:
            return None
        if 200 <= status < 300:
            return True
        return False if status == 401 else None


def _verdict(result: bool | None) -> str:
    return {True: "accepted", False: "refused (401)", None: "no answer"}[result]


class Rotation:
    """Rotates the secret of one webhook, the app's."""

    def __init__(
        self,
        api: PlatformApi,
        store: SecretStore,
        probe: Probe,
        output: Output,
        *,
        wait: float = 600.0,
        poll: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.store = store
        self.probe = probe
        self.output = output
        self.wait = wait
        self.poll = poll
        self._clock = clock
        self._sleep = sleep
        self._now = now

    def rotate(self, webhook: Webhook) -> None:
        current = self.store.get(CURRENT)
        previous = self.store.get(PREVIOUS)
        if not current:
            raise UsageError(f"{CURRENT} is not set in {self.store.where}: there is no secret to rotate")
        if previous and previous != current:
            self.output.line(f"a change of secret is under way ({PREVIOUS} is set in {self.store.where}): resuming it")
            new, old = current, previous
        else:
            new, old = secrets.token_urlsafe(48), current
            self.store.begin_change(old, new)
            self.output.line(f"wrote a new {CURRENT} to {self.store.where}, keeping the old one as {PREVIOUS}")
        self._wait_for_app(new, old)
        self.api.update_webhook(webhook.id, {"secret": new})
        switched = self._now()
        self.store.record_switch(switched)
        self.output.line(f"webhook {webhook.id} now signs its deliveries with the new secret")
        self.output.line(
            f"deliveries signed before {when(switched)} may still be resent: keep {PREVIOUS} until "
            f"{when(switched + DRAIN)}, then run `python -m ops webhook rotate-secret --finish`"
        )
        if isinstance(self.store, KeyVaultSecretStore):
            self.output.line(
                "keep the deployment's inputs in step (azd env set ITWIN_WEBHOOK_SECRET / "
                "ITWIN_WEBHOOK_SECRET_PREVIOUS), or the next deployment writes the old values back"
            )

    def _wait_for_app(self, new: str, old: str) -> None:
        deadline = self._clock() + self.wait
        tries = 0
        while True:
            tries += 1
            accepted_new, accepted_old = self.probe.accepts(new), self.probe.accepts(old)
            if accepted_new and accepted_old:
                self.output.line(f"the app at {self.probe.url} accepts deliveries signed with either secret")
                return
            state = f"new secret {_verdict(accepted_new)}, old secret {_verdict(accepted_old)}"
            if tries == 2:  # the first miss is often a reload in progress
                self.output.note(
                    f"waiting up to {self.wait:.0f} s for the app to load both secrets ({state}). In Azure, restart "
                    "it (az functionapp restart -g <group> -n <app>); make dev reloads local.settings.json by itself."
                )
            if self._clock() >= deadline:
                raise NeedsAttention(
                    f"the app at {self.probe.url} does not accept both secrets yet ({state}). The webhook still signs "
                    "with the old secret, so no delivery is refused. Once the app has restarted with the new "
                    f"settings, run `python -m ops webhook rotate-secret` again: it resumes this change"
                )
            self._sleep(self.poll)

    def finish(self, webhook: Webhook, *, force: bool) -> None:
        current, previous = self.store.get(CURRENT), self.store.get(PREVIOUS)
        if not previous or previous == current:
            self.output.line("no change of secret is under way: nothing to finish")
            return
        switched = self.store.switched_at()
        if switched is None:
            raise OpsError(
                f"webhook {webhook.id} may still sign with the old secret: the change was not completed. "
                "Run `python -m ops webhook rotate-secret` first"
            )
        until = switched + DRAIN
        if self._now() < until and not force:
            raise UsageError(
                f"keep {PREVIOUS} until {when(until)}: deliveries signed with the old secret may be resent until "
                "then (--force drops it now)"
            )
        self.store.end_change()
        self.output.line(f"dropped {PREVIOUS} from {self.store.where}: only the new secret is accepted from now")
        if isinstance(self.store, KeyVaultSecretStore):
            self.output.line("the app stops accepting the old secret when it next loads its settings (restart it)")
