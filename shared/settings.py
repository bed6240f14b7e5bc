"""Every setting the app reads from its environment, in one table, validated once.

`SETTINGS` is the single list of names: the table in docs/settings.md, `/api/health`, `local.settings.example.json`
and the Bicep app settings are all checked against it by the tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COMMAND_QUEUE = "itwin-commands"
POISON_QUEUE = "itwin-commands-poison"
STORAGE_CONNECTION = "AzureWebJobsStorage"

DEFAULT_AUTHORITY = "https://ims.bentley.com"
DEFAULT_SCOPE = "itwin-platform"
DEFAULT_API_URL = "https://api.bentley.com"
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_MAX_COMMAND_AGE = "24h"
DEFAULT_LEDGER_RETENTION = "7d"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Clash Detection documents 6 calls a second for v1 (``/clashdetection``) and v2 (``/clash-detection``); the client
# names an API by the first path segment after ITWIN_API_URL's path, so each version has its own key.
DEFAULT_RATE_LIMITS = {"clashdetection": 6.0, "clash-detection": 6.0}
_API_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
# The slowest pace ITWIN_RATE_LIMITS may set: one call every 10 s. Slower, a process's first slot and its floor
# (the rate divided by 1,024 after 429s) would lie hours away.
MIN_RATE = 0.1
MAX_RATE = 10_000.0
# A 429's Retry-After is honoured up to this long. The platform's windows are a second to a minute (the tier's
# hourly limit at most an hour), so a longer hold comes from a proxy or a bug; a wrong hold then costs at most this
# long, a right one an extra 429 after it.
DEFAULT_MAX_RETRY_AFTER = "15m"
# The subscription's tier limits across all APIs, paced by the shared schedule (ITWIN_SHARED_PACING): the developer
# portal's "Rate limits" page gives Community 500 calls a minute and 5,000 an hour (the default: the lowest tier),
# Standard and higher 5,000 a minute.
DEFAULT_TIER_LIMITS = "500/m,5000/h"
_TIER_WINDOWS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Setting:
    """One environment setting: its name, default, and whether it is required or secret."""

    name: str
    description: str
    default: str | None = None
    required: bool = False
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("ITWIN_CLIENT_ID", "Client id of the iTwin service application.", required=True),
    Setting(
        "ITWIN_CLIENT_SECRET",
        "Client secret of the iTwin service application.",
        required=True,
        secret=True,
    ),
    Setting("ITWIN_AUTHORITY", "Token service (IMS) root URL.", DEFAULT_AUTHORITY),
    Setting("ITWIN_SCOPE", "Scope requested for service tokens.", DEFAULT_SCOPE),
    Setting("ITWIN_API_URL", "iTwin Platform API root URL.", DEFAULT_API_URL),
    Setting(
        "ITWIN_WEBHOOK_SECRET",
        "Secret the iTwin webhook signs deliveries with; unset refuses every delivery.",
        secret=True,
    ),
    Setting(
        "ITWIN_WEBHOOK_SECRET_PREVIOUS",
        "While the webhook secret is being changed, the secret it replaces: deliveries signed with it verify too.",
        secret=True,
    ),
    Setting(
        "ITWIN_EXPORT_CONNECTION_NAME",
        "When set, iModels.iModelCreated.v1 creates an Export connection with this name.",
    ),
    Setting(
        "ITWIN_CLASH_TEST_IDS",
        "Comma-separated Clash Detection test ids run on iModels.namedVersionCreated.v1.",
    ),
    Setting(
        "ITWIN_CLASH_V2_TEST_IDS",
        "Comma-separated Clash Detection v2 test ids (GUIDs) run on iModels.namedVersionCreated.v1, on the named "
        "version's changeset.",
    ),
    Setting(
        "ITWIN_CLASH_V2_CHANGES_TEST_IDS",
        "Comma-separated Clash Detection v2 test ids (GUIDs) run on every iModels.changesReady.v1, on its changeset "
        "(every batch of changes pushed, not only named versions).",
    ),
    Setting("ITWIN_EVENT_RULES", "JSON document that replaces the default event rules."),
    Setting(
        "ITWIN_RATE_LIMITS",
        "Calls per second this process allows itself per API (the first path segment), e.g. "
        "export=8,reality-modeling=8; clashdetection=6 and clash-detection=6 (Clash Detection v1 and v2, their "
        "documented limit) unless set here.",
    ),
    Setting(
        "ITWIN_SHARED_PACING",
        "on: every instance paces its calls by one schedule in the app's table (falling back to its own pacing while "
        "the table fails); off: each instance paces itself.",
        "off",
    ),
    Setting(
        "ITWIN_TIER_LIMITS",
        "The subscription's limits across all APIs, paced by the shared schedule, e.g. 5000/m (Standard) or "
        "500/m,5000/h (Community, the default); off: none.",
        DEFAULT_TIER_LIMITS,
    ),
    Setting(
        "ITWIN_MAX_RETRY_AFTER",
        "The longest wait a Retry-After header may impose (longer ones are cut to this and logged), 1m to 24h.",
        DEFAULT_MAX_RETRY_AFTER,
    ),
    Setting(
        "ITWIN_MAX_ATTEMPTS",
        "Attempts per queue message before it is dead-lettered.",
        str(DEFAULT_MAX_ATTEMPTS),
    ),
    Setting(
        "ITWIN_MAX_COMMAND_AGE",
        "How long a command may keep waiting on rate limits or a busy connection (those waits use up no attempt) "
        "before it is dead-lettered, e.g. 24h, 90m, 2d.",
        DEFAULT_MAX_COMMAND_AGE,
    ),
    Setting(
        "ITWIN_LEDGER_RETENTION",
        "How long the command ledger keeps a command's row (and an idempotency key stays taken), in whole days, "
        "e.g. 7d, at least ITWIN_MAX_COMMAND_AGE plus one day; older days are dropped by the daily ledger_retention "
        "function.",
        DEFAULT_LEDGER_RETENTION,
    ),
    Setting(
        STORAGE_CONNECTION,
        "Storage for the queues and the command ledger: a connection string, or identity-based "
        "AzureWebJobsStorage__queueServiceUri and __tableServiceUri, or __accountName (+ __credential, __clientId).",
        required=True,
        secret=True,
    ),
)


class SettingsError(ValueError):
    """A setting is missing or malformed. The message names the setting, never a secret value."""


def storage_configured(environ: Mapping[str, str]) -> bool:
    """True when `AzureWebJobsStorage` is set in its connection-string or identity-based form."""
    prefix = STORAGE_CONNECTION + "__"
    return bool(environ.get(STORAGE_CONNECTION)) or any(
        key.startswith(prefix) and value for key, value in environ.items()
    )


def missing_required(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of required settings that are absent or empty, in table order."""
    env = os.environ if environ is None else environ
    missing = []
    for setting in SETTINGS:
        if not setting.required:
            continue
        present = (
            storage_configured(env) if setting.name == STORAGE_CONNECTION else bool(env.get(setting.name, "").strip())
        )
        if not present:
            missing.append(setting.name)
    return missing


def _https_root(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds a credential, which would reach logs, spans and error text.
        raise SettingsError(
            f"{name} must not carry a user name or password (https://user:pass@...): the app authenticates with "
            "service tokens; remove them from the URL"
        )
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise SettingsError(f"{name} must be an https:// URL such as {DEFAULT_API_URL}; got {value!r}")
    return value.rstrip("/")


def parse_rate_limits(text: str | None) -> dict[str, float]:
    """``"export=8, clashdetection=6"`` as calls per second per API, over the documented defaults."""
    limits = dict(DEFAULT_RATE_LIMITS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        api, _, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = 0.0
        if not _API_NAME.match(api.strip().lower()) or not MIN_RATE <= value <= MAX_RATE:  # NaN fails both comparisons
            raise SettingsError(
                f"ITWIN_RATE_LIMITS must look like export=8,clash-detection=6, calls per second from {MIN_RATE:g} "
                f"(one every 10 s) to {MAX_RATE:g}; got {item.strip()!r}"
            )
        limits[api.strip().lower()] = value
    return limits


def parse_tier_limits(text: str | None) -> tuple[tuple[float, int], ...]:
    """``"500/m,5000/h"`` as (window seconds, calls) pairs; ``off`` (or nothing) as none."""
    value = (text or DEFAULT_TIER_LIMITS).strip().lower()
    if value == "off":
        return ()
    limits: dict[float, int] = {}
    for item in value.split(","):
        calls, _, unit = item.strip().partition("/")
        window = _TIER_WINDOWS.get(unit.strip())
        if window is None or not calls.strip().isdigit() or not 1 <= int(calls) <= 10_000_000 or window in limits:
            raise SettingsError(
                f"ITWIN_TIER_LIMITS must look like 500/m,5000/h (whole calls per s, m or h, each window once) or "
                f"off; got {item.strip()!r}"
            )
        limits[window] = int(calls)
    return tuple(sorted(limits.items()))


def parse_duration(name: str, text: str, longest: str = "30d") -> float:
    """``"24h"``, ``"90m"``, ``"2d"``, ``"3600s"`` or plain seconds, as seconds from 1 minute to ``longest``."""

    def seconds_of(value: str) -> float:
        unit = _DURATION_UNITS.get(value[-1:])
        try:
            return float(value[:-1] if unit else value) * (unit or 1)
        except ValueError:
            return -1.0

    if not 60 <= seconds_of(text.strip().lower()) <= seconds_of(longest):
        raise SettingsError(f"{name} must be a duration from 1m to {longest} such as 24h, 90m or 2d; got {text!r}")
    return seconds_of(text.strip().lower())


def parse_days(name: str, text: str) -> int:
    """``"7d"`` or ``"7"`` as whole days from 1 to 30."""
    value = text.strip().lower().removesuffix("d")
    if not value.isdigit() or not 1 <= int(value) <= 30:
        raise SettingsError(f"{name} must be whole days from 1d to 30d such as 7d; got {text!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """The validated settings the iTwin client and the functions use."""

    client_id: str
    client_secret: str = field(repr=False)
    authority: str = DEFAULT_AUTHORITY
    scope: str = DEFAULT_SCOPE
    api_url: str = DEFAULT_API_URL
    webhook_secret: str | None = field(default=None, repr=False)
    export_connection_name: str | None = None
    clash_test_ids: tuple[str, ...] = ()
    event_rules: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_command_age: float = 24 * 3600.0
    ledger_retention_days: int = 7
    rate_limits: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    max_retry_after: float = 15 * 60.0
    shared_pacing: bool = False
    tier_limits: tuple[tuple[float, int], ...] = ((60.0, 500), (3600.0, 5000))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises `SettingsError` naming every missing one."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        missing = [name for name in ("ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET") if not get(name)]
        if missing:
            raise SettingsError(f"required setting(s) not set: {', '.join(missing)}")
        raw_attempts = get("ITWIN_MAX_ATTEMPTS") or str(DEFAULT_MAX_ATTEMPTS)
        if not raw_attempts.isdigit() or not 1 <= int(raw_attempts) <= 100:
            raise SettingsError(f"ITWIN_MAX_ATTEMPTS must be a whole number from 1 to 100; got {raw_attempts!r}")
        clash_ids = tuple(t.strip() for t in (get("ITWIN_CLASH_TEST_IDS") or "").split(",") if t.strip())
        max_age_text = get("ITWIN_MAX_COMMAND_AGE") or DEFAULT_MAX_COMMAND_AGE
        retention_text = get("ITWIN_LEDGER_RETENTION") or DEFAULT_LEDGER_RETENTION
        max_age = parse_duration("ITWIN_MAX_COMMAND_AGE", max_age_text)
        retention = parse_days("ITWIN_LEDGER_RETENTION", retention_text)
        shared_pacing = (get("ITWIN_SHARED_PACING") or "off").lower()
        if shared_pacing not in ("on", "off"):
            raise SettingsError(f"ITWIN_SHARED_PACING must be on or off; got {shared_pacing!r}")
        if retention * 86400 < max_age + 86400:
            raise SettingsError(
                f"ITWIN_LEDGER_RETENTION ({retention_text}) must be at least ITWIN_MAX_COMMAND_AGE ({max_age_text}) "
                "plus one day: a command may wait that long, and its ledger row (which keeps it from being carried "
                "out twice) must outlive it; a webhook's commands are recorded on the day the platform enqueued the "
                "event, up to a day earlier. Raise the retention or lower the age."
            )
        return cls(
            client_id=get("ITWIN_CLIENT_ID") or "",
            client_secret=get("ITWIN_CLIENT_SECRET") or "",
            authority=_https_root("ITWIN_AUTHORITY", get("ITWIN_AUTHORITY") or DEFAULT_AUTHORITY),
            scope=get("ITWIN_SCOPE") or DEFAULT_SCOPE,
            api_url=_https_root("ITWIN_API_URL", get("ITWIN_API_URL") or DEFAULT_API_URL),
            webhook_secret=get("ITWIN_WEBHOOK_SECRET"),
            export_connection_name=get("ITWIN_EXPORT_CONNECTION_NAME"),
            clash_test_ids=clash_ids,
            event_rules=get("ITWIN_EVENT_RULES"),
            max_attempts=int(raw_attempts),
            max_command_age=max_age,
            ledger_retention_days=retention,
            rate_limits=parse_rate_limits(get("ITWIN_RATE_LIMITS")),
            max_retry_after=parse_duration(
                "ITWIN_MAX_RETRY_AFTER", get("ITWIN_MAX_RETRY_AFTER") or DEFAULT_MAX_RETRY_AFTER, longest="24h"
            ),
            shared_pacing=shared_pacing == "on",
            tier_limits=parse_tier_limits(get("ITWIN_TIER_LIMITS")),
        )
