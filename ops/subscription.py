"""The app's webhook subscription: created for its callback URL, with the event types its rules handle.

Every operation is idempotent: the subscription is found by its callback URL, so running ``create`` again reuses
it (bringing its event types up to date), ``activate`` on an active one and ``delete`` on a missing one do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ops.errors import OpsError, UsageError
from ops.output import Output
from ops.platform_api import PlatformApi, Webhook
from shared.rules import Rule
from shared.signature import SECRET_SETTING

MIN_SECRET = 32


def normal_url(url: str) -> str:
    """A callback URL compared without case in scheme and host, and without a trailing slash."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def check_callback(url: str) -> str:
    """The callback URL, or `UsageError` when it is not one the platform can call."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"{url!r} is not a URL: give the app's webhook URL, https://<app>/api/webhooks/itwin")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"{url} is not HTTPS: the iTwin Platform only calls HTTPS callback URLs")
    return url.strip()


def handled_event_types(rules: tuple[Rule, ...], environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The event types some rule can turn into commands with these settings, and why the others cannot."""
    handled: list[str] = []
    skipped: dict[str, str] = {}

    def unset(path: str | None) -> str | None:
        if path and path.startswith("settings.") and not environ.get(path.removeprefix("settings."), "").strip():
            return path.removeprefix("settings.")
        return None

    for rule in rules:
        missing = [name for name in (*map(unset, rule.requires), unset(rule.for_each)) if name]
        if missing:
            skipped.setdefault(rule.event_type, f"{rule.event_type} (its rule needs {', '.join(missing)})")
        elif rule.event_type not in handled:
            handled.append(rule.event_type)
    return handled, [why for event_type, why in skipped.items() if event_type not in handled]


@dataclass(frozen=True)
class Target:
    """The subscription the app wants."""

    callback_url: str
    scope: str  # Account or iTwin
    scope_id: str | None
    event_types: tuple[str, ...]


def describe(webhook: Webhook) -> str:
    """``<id> (<state>, scope <scope>, <n> event type(s))``."""
    state = "active" if webhook.active else "inactive"
    scope = f"{webhook.scope} {webhook.scope_id}" if webhook.scope == "iTwin" else str(webhook.scope)
    return f"{webhook.id} ({state}, scope {scope}, {len(webhook.event_types)} event type(s))"


class Subscription:
    """Finds and changes the webhook whose callback is the app's."""

    def __init__(self, api: PlatformApi, output: Output) -> None:
        self.api = api
        self.output = output

    def find(self, callback_url: str) -> list[Webhook]:
        """The app's webhooks for this callback, oldest first."""
        wanted = normal_url(callback_url)
        return [w for w in self.api.webhooks() if normal_url(w.callback_url) == wanted]

    def one(self, callback_url: str) -> Webhook:
        """The webhook for this callback; `OpsError` when there is none."""
        found = self.find(callback_url)
        if not found:
            raise OpsError(f"no webhook sends to {callback_url}: create it with `python -m ops webhook create`")
        if len(found) > 1:
            self.output.note(
                f"warning: {len(found)} webhooks send to {callback_url}, so each event arrives {len(found)} times; "
                f"using the oldest, {found[0].id}. Delete the others with `python -m ops webhook delete --id ID`."
            )
        return found[0]

    def create(self, target: Target, secret: str | None, *, activate: bool) -> Webhook:
        """Create the webhook, or reuse the one that exists for the callback (updating its event types)."""
        found = self.find(target.callback_url)
        if found:
            webhook = found[0]
            if len(found) > 1:
                self.one(target.callback_url)
            if (webhook.scope, webhook.scope_id if webhook.scope == "iTwin" else None) != (
                target.scope,
                target.scope_id,
            ):
                raise OpsError(
                    f"webhook {webhook.id} already sends to {target.callback_url} with scope {webhook.scope}"
                    f"{' ' + str(webhook.scope_id) if webhook.scope == 'iTwin' else ''}; the scope cannot be changed: "
                    "delete it first (`python -m ops webhook delete`), then create it again"
                )
            self.output.line(f"reusing webhook {describe(webhook)} for {target.callback_url}")
            if set(webhook.event_types) != set(target.event_types):
                webhook = self.api.update_webhook(webhook.id, {"eventTypes": list(target.event_types)})
                self.output.line(f"updated its event types: {', '.join(webhook.event_types)}")
            self.output.line("its secret was not changed (`python -m ops webhook rotate-secret` changes it)")
        else:
            if not secret or len(secret) < MIN_SECRET:
                raise UsageError(f"{SECRET_SETTING} must be set, with at least {MIN_SECRET} characters")
            body = {
                "callbackUrl": target.callback_url,
                "scope": target.scope,
                "secret": secret,
                "eventTypes": list(target.event_types),
            }
            if target.scope == "iTwin":
                body["scopeId"] = target.scope_id
            webhook = self.api.create_webhook(body)
            self.output.line(f"created webhook {describe(webhook)} for {target.callback_url}")
            self.output.line(f"event types: {', '.join(webhook.event_types)}")
        if activate:
            return self.activate(webhook)
        if not webhook.active:
            self.output.line("it is inactive: activate it with `python -m ops webhook activate`")
        return webhook

    def activate(self, webhook: Webhook) -> Webhook:
        if webhook.active:
            self.output.line(f"webhook {webhook.id} is already active")
            return webhook
        webhook = self.api.update_webhook(webhook.id, {"active": True})
        self.output.line(f"activated webhook {webhook.id}: the platform now delivers events to {webhook.callback_url}")
        return webhook
