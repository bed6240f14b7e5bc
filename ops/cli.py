"""``python -m ops``: the command line. It parses, builds the collaborators from the settings, and maps every
failure to a message and an exit status (0 done, 1 failed, 2 bad input, 3 done but something needs you, 130
interrupted); it never shows a traceback unless asked with ``--debug``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ops.dead_letters import DeadLetter, Selection, parse_age, token_in
from ops.errors import EXIT_ATTENTION, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, NeedsAttention, OpsError, UsageError
from ops.local_settings import LocalSettingsFile
from ops.output import Output, span, table, when
from shared.ledger import Status as LedgerStatus
from shared.settings import SettingsError

DEFAULT_SETTINGS = "local.settings.json"
SANDBOX_SETTINGS = Path(".sandbox") / "local.settings.json"  # what `make dev` writes, for this tool
PROG = "python -m ops"


class Context:
    """The settings and the collaborators built from them, on first use."""

    def __init__(self, args: argparse.Namespace, output: Output, environ: dict[str, str]) -> None:
        self.args = args
        self.output = output
        self.environ = environ
        self.settings_file = LocalSettingsFile(args.settings)
        self.settings_file.load_into(environ)
        # The CA bundle a settings file names goes with the endpoints it names (make dev's simulator), so it wins
        # over one set for the whole machine.
        self.ca_bundle = self.settings_file.values().get("REQUESTS_CA_BUNDLE") or None
        if not _storage_set(environ) and environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
            # What `azd env get-values` gives, for the identity-based form of AzureWebJobsStorage.
            environ["AzureWebJobsStorage__accountName"] = environ["AZURE_STORAGE_ACCOUNT_NAME"]
        self._store: Any = None
        self._api: Any = None

    def where(self) -> str:
        """Where settings are read from, for error messages."""
        return _where(self.settings_file.path)

    def queues(self) -> Any:
        from ops.poison_queue import Queues
        from ops.reach import QUEUE_OPTIONS

        try:
            return Queues.from_environment(self.environ, **QUEUE_OPTIONS)
        except SettingsError as error:
            raise UsageError(f"{error}. Set it in {self.where()}") from None

    def ledger(self) -> Any:
        """The command ledger (`ops.command_status.CommandLedger`), from ``AzureWebJobsStorage`` in either form."""
        from ops.command_status import CommandLedger
        from ops.reach import TABLE_OPTIONS
        from shared.ledger import Ledger

        try:
            ledger = Ledger.from_environment(self.environ, **TABLE_OPTIONS)
        except SettingsError as error:
            raise UsageError(f"{error}. Set it in {self.where()}") from None
        except ValueError as error:  # the SDK's word for a connection string it cannot read
            raise UsageError(f"AzureWebJobsStorage is not a usable connection string ({error})") from None
        return CommandLedger(ledger)

    def retention_days(self) -> int:
        """``ITWIN_LEDGER_RETENTION`` in days: how far back the ledger keeps commands."""
        from shared.settings import parse_days

        try:
            return parse_days("ITWIN_LEDGER_RETENTION", self.environ.get("ITWIN_LEDGER_RETENTION", "").strip() or "7d")
        except SettingsError as error:
            raise UsageError(f"{error}. Fix it in {self.where()}") from None

    def store(self) -> Any:
        from ops.secret_store import secret_store

        if self._store is None:
            self._store = secret_store(self.args.key_vault, self.settings_file, self.environ)
        return self._store

    def api(self) -> Any:
        from ops.platform_api import PlatformApi
        from ops.reach import trusted_ca
        from ops.secret_store import KeyVaultSecretStore
        from shared.settings import Settings

        if self._api is None:
            trusted_ca(self.ca_bundle, self.settings_file.path)
            environ = dict(self.environ)
            if not environ.get("ITWIN_CLIENT_SECRET", "").strip() and isinstance(self.store(), KeyVaultSecretStore):
                environ["ITWIN_CLIENT_SECRET"] = self.store().get("ITWIN_CLIENT_SECRET") or ""
            try:
                settings = Settings.from_env(environ)
            except SettingsError as error:
                raise UsageError(f"{error}: set them in {self.where()}") from None
            self._api = PlatformApi.from_settings(settings, self.ca_bundle)
        return self._api

    def callback_url(self) -> str:
        from ops.subscription import check_callback

        url = self.args.url or self.environ.get("ITWIN_WEBHOOK_URL", "").strip()
        if not url:
            raise UsageError(
                "the app's webhook URL is unknown: give --url https://<app>/api/webhooks/itwin, or set "
                "ITWIN_WEBHOOK_URL (an output of the deployment: azd env get-values)"
            )
        return check_callback(url)


def never_expires(expires_on: datetime | None, now: datetime) -> bool:
    """True for a message sent with no expiry (time to live -1: Azure Storage says it expires on 9999-12-31)."""
    return expires_on is not None and expires_on - now > timedelta(days=365 * 100)


def _where(path: Path) -> str:
    return f"the environment or {path}" + ("" if path.exists() else f" (there is no {path})")


def settings_path(given: str | None, environ: Mapping[str, str], cwd: Path) -> Path:
    """The settings file to read: the one given; else ``local.settings.json`` here; else, when the environment names
    no storage either, the one `make dev` writes (``.sandbox/local.settings.json``), so that the tool works as
    typed next to a running ``make dev``."""
    if given:
        return Path(given)
    in_azure = _storage_set(environ) or environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    if not (cwd / DEFAULT_SETTINGS).exists() and not in_azure and (cwd / SANDBOX_SETTINGS).exists():
        return SANDBOX_SETTINGS
    return Path(DEFAULT_SETTINGS)


def _storage_set(environ: Mapping[str, str]) -> bool:
    from shared.settings import storage_configured

    return storage_configured(environ)


# -- poison ----------------------------------------------------------------------------------------------------
def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        ids=tuple(getattr(args, "ids", ()) or ()),
        everything=getattr(args, "all", False),
        code=args.code,
        command=args.command,
        older_than=parse_age(args.older_than) if args.older_than else None,
        newer_than=parse_age(args.newer_than) if args.newer_than else None,
    )


def _scan(context: Context) -> list[DeadLetter]:
    return context.queues().scan()


def _replay_column(letter: DeadLetter) -> str:
    """yes; no (see poison show); check (an unknown create: replay looks for it first); interrupted."""
    if letter.problem:
        return "no"
    if letter.replay_interrupted:
        return "interrupted"
    return "check" if letter.code == "CreateOutcomeUnknown" else "yes"


def poison_list(context: Context) -> int:
    args, output = context.args, context.output
    now = datetime.now(UTC)
    letters = _selection(args).choose(_scan(context), now)
    if args.json:
        output.line(json.dumps([letter.as_dict() for letter in letters], indent=2))
        return 0
    if not letters:
        output.line("no dead letters" + (" match" if not _selection(args).is_empty else ""))
        return 0
    rows = []
    for letter in letters:
        expires = (
            "never"
            if never_expires(letter.expires_on, now)
            else span(letter.expires_on - now)
            if letter.expires_on
            else "-"
        )
        attempts = str(letter.attempts) if letter.attempts is not None else "-"
        rows.append(
            [
                when(letter.when),
                letter.id[:8],
                letter.command_kind,
                letter.code,
                attempts,
                _replay_column(letter),
                expires,
                letter.reason,
            ]
        )
    headers = ["FAILED AT", "ID", "COMMAND", "CODE", "ATTEMPTS", "REPLAY", "EXPIRES IN", "MESSAGE"]
    for line in table(headers, rows, output.width):
        output.line(line)
    replayable = sum(1 for letter in letters if letter.problem is None)
    output.line(f"\n{len(letters)} dead letter(s), {replayable} replayable. `{PROG} poison show ID` shows one in full.")
    return 0


def poison_show(context: Context) -> int:
    args, output = context.args, context.output
    letters = Selection(ids=(args.id,)).choose(_scan(context), datetime.now(UTC))
    letter = letters[0]
    if args.json:
        output.line(json.dumps({**letter.as_dict(), "envelope": letter.text}, indent=2))
        return 0
    output.line(f"id          {letter.id}")
    output.line(f"kind        {letter.kind.value}")
    output.line(f"failed at   {when(letter.when)}")
    if never_expires(letter.expires_on, datetime.now(UTC)):
        output.line("expires     never (sent without an expiry, as the app sends its dead letters)")
    elif letter.expires_on:
        output.line(f"expires     {when(letter.expires_on)} (sent with an expiry; a queue message's default is 7 days)")
    output.line(f"command     {letter.command_kind}")
    output.line(f"error       {letter.code}: {letter.reason}")
    for detail in letter.error.get("details") or []:
        if isinstance(detail, dict):
            output.line(f"            {detail.get('target') or '-'}: {detail.get('message')} ({detail.get('code')})")
    output.line(f"attempts    {letter.attempts if letter.attempts is not None else '-'}")
    if earlier := token_in(letter.message):
        output.line(f"replay of   dead letter {earlier.removeprefix('replay-')}, which failed again")
    if letter.replay_interrupted:
        output.line(f"replay      started {when(letter.replay_started)} and did not finish")
    output.line(f"replayable  {'yes' if letter.problem is None else 'no: ' + letter.problem}")
    output.line("envelope:")
    try:
        output.line(json.dumps(json.loads(letter.text), indent=2, ensure_ascii=False))
    except ValueError:
        output.line(letter.text)
    return 0


def _choose(context: Context, verb: str) -> tuple[list[DeadLetter], list[DeadLetter]]:
    selection = _selection(context.args)
    if selection.is_empty:
        raise UsageError(
            f"say which dead letters to {verb}: give their ids, a filter (--code, --command, "
            "--older-than, --newer-than), or --all"
        )
    letters = _scan(context)
    return selection.choose(letters, datetime.now(UTC)), letters


def poison_replay(context: Context) -> int:
    from ops.exists import ExistenceChecker
    from ops.replay import Replayer

    args, output = context.args, context.output
    chosen, letters = _choose(context, "replay")
    if not chosen:
        output.line("no dead letters match: nothing to replay")
        return 0
    needs_api = any(letter.code == "CreateOutcomeUnknown" for letter in chosen) and not args.force
    checker = ExistenceChecker(context.api(), args.itwin_id) if needs_api else None
    try:
        ledger = context.ledger()
    except UsageError:
        if any(letter.command and letter.command.command_id for letter in chosen):
            raise
        ledger = None  # nothing chosen is in the ledger; should a letter that is turn up, it is refused
    replayer = Replayer(
        context.queues(),
        checker,
        output,
        ledger=ledger,
        lease=args.lease,
        wait=args.wait,
        rate=args.rate,
        force=args.force,
        resend_interrupted=args.resend_interrupted,
    )
    if args.dry_run:
        output.line(f"dry run: {len(chosen)} dead letter(s); nothing is changed")
        replayer.plan(chosen, letters)
        return 0
    selection, now = _selection(args), datetime.now(UTC)
    report = replayer.run(chosen, letters, None if selection.ids else lambda letter: selection.passes(letter, now))
    summary = f"replayed {len(report.replayed)}"
    if report.settled:
        summary += f", settled {len(report.settled)} an earlier run had sent"
    if report.refused:
        summary += f", kept {len(report.refused)} that cannot be replayed as they are"
    if report.interrupted:
        summary += f", kept {len(report.interrupted)} interrupted earlier (see above)"
    if report.taken:
        summary += f", skipped {len(report.taken)} another run took"
    output.line(summary + ".")
    if report.missing:
        raise NeedsAttention(
            f"{report.missing} dead letter(s) stayed held by another run; run the replay again once it has "
            "finished or its lease has run out"
        )
    return EXIT_ATTENTION if report.needs_attention else 0


def _deletion_confirmed(context: Context, count: int, noun: str, why: str, question: str) -> bool:
    """Whether deleting ``count`` ``noun``(s) may go ahead: False after saying what a dry run would delete; True
    with --yes, or at a terminal once the count is typed in answer to ``question``. Raises `UsageError` otherwise,
    saying ``why`` confirmation is needed."""
    args, output = context.args, context.output
    if args.dry_run:
        output.line(f"dry run: would delete {count} {noun}(s)")
        return False
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{why}: confirm with --yes when not at a terminal")
        if not output.confirm(question, str(count)):
            raise UsageError(f"nothing deleted: the count typed was not {count}")
    return True


def poison_purge(context: Context) -> int:
    output = context.output
    chosen, _ = _choose(context, "purge")
    if not chosen:
        output.line("no dead letters match: nothing to purge")
        return 0
    for letter in chosen[:10]:
        output.line(f"{letter.id[:8]}  {when(letter.when)}  {letter.command_kind}  {letter.code}")
    if len(chosen) > 10:
        output.line(f"... and {len(chosen) - 10} more")
    question = f"Delete these {len(chosen)} dead letter(s) for good?"
    if not _deletion_confirmed(context, len(chosen), "dead letter", "purge deletes dead letters for good", question):
        return 0
    progress = output.progress(len(chosen), "purge")
    try:
        deleted = context.queues().purge({letter.id for letter in chosen}, progress)
    finally:
        progress.close()
    output.line(f"deleted {deleted} dead letter(s)")
    if deleted < len(chosen):
        raise NeedsAttention(f"{len(chosen) - deleted} were not deleted: another run held or took them; run it again")
    return 0


# -- commands --------------------------------------------------------------------------------------------------
def commands_show(context: Context) -> int:
    from ops.command_status import show_lines

    args, output = context.args, context.output
    record = context.ledger().show(args.id.strip())
    if args.json:
        output.line(json.dumps(record.to_dict(), indent=2))
        return 0
    for line in show_lines(record):
        output.line(line)
    return 0


def commands_list(context: Context) -> int:
    from ops.command_status import LIST_HEADERS, list_row

    args, output = context.args, context.output
    days = args.days if args.days is not None else context.retention_days()
    if not 1 <= days <= 30:
        raise UsageError(f"--days must be a whole number from 1 to 30 (the ledger keeps at most 30 days); got {days}")
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1; got {args.limit}")
    status = LedgerStatus(args.status) if args.status else None
    records = context.ledger().recent(status, days, datetime.now(UTC), args.limit)
    if args.json:
        output.line(json.dumps([record.to_dict() for record in records], indent=2))
        return 0
    which = f"{status.value} " if status else ""
    since = f"in the last {days} day(s)"
    if not records:
        output.line(f"no {which}commands {since}")
        return 0
    for line in table(LIST_HEADERS, [list_row(record) for record in records], output.width):
        output.line(line)
    more = f" (the newest {args.limit}: --limit N shows more)" if len(records) >= args.limit else ""
    output.line(f"\n{len(records)} {which}command(s) {since}{more}. `{PROG} commands show ID` shows one in full.")
    if status is LedgerStatus.DEAD_LETTERED:
        output.line(f"Their dead letters: `{PROG} poison list`; `{PROG} poison replay` sends them again.")
    return 0


# -- webhook ---------------------------------------------------------------------------------------------------
def _subscription(context: Context) -> Any:
    from ops.subscription import Subscription

    return Subscription(context.api(), context.output)


def webhook_create(context: Context) -> int:
    import secrets as random

    from ops.subscription import Target, handled_event_types
    from shared.rules import load_rules
    from shared.settings import SettingsError

    args, output = context.args, context.output
    url = context.callback_url()
    scope = "iTwin" if args.scope.lower() == "itwin" else "Account"
    if scope == "iTwin" and not args.itwin_id:
        raise UsageError("--scope itwin needs --itwin-id: the iTwin whose events the webhook receives")
    if args.event_type:
        event_types = list(dict.fromkeys(args.event_type))
    else:
        try:
            rules = load_rules(context.environ.get("ITWIN_EVENT_RULES") or None)
        except SettingsError as error:
            raise UsageError(str(error)) from None
        event_types, skipped = handled_event_types(rules, context.environ)
        for why in skipped:
            output.note(f"not subscribing to {why}")
        if not event_types:
            raise UsageError("no rule can produce commands with these settings, so there is nothing to subscribe to")
    store = context.store()
    secret = store.get("ITWIN_WEBHOOK_SECRET")
    subscription = _subscription(context)
    if not secret and not subscription.find(url):
        secret = random.token_urlsafe(48)
        store.put_secret(secret)
        output.line(
            f"ITWIN_WEBHOOK_SECRET was not set: wrote a new one to {store.where}; the app must load it "
            "(restart it; make dev reloads local.settings.json by itself)"
        )
    target = Target(url, scope, args.itwin_id if scope == "iTwin" else None, tuple(event_types))
    subscription.create(target, secret, activate=args.activate)
    return 0


def webhook_activate(context: Context) -> int:
    subscription = _subscription(context)
    subscription.activate(subscription.one(context.callback_url()))
    return 0


def webhook_list(context: Context) -> int:
    from ops.subscription import normal_url

    args, output = context.args, context.output
    webhooks = context.api().webhooks()
    mine = normal_url(args.url or context.environ.get("ITWIN_WEBHOOK_URL", "") or "-")
    if args.json:
        output.line(json.dumps([w.as_dict() for w in webhooks], indent=2))
        return 0
    if not webhooks:
        output.line("the service application has no webhooks")
        return 0
    rows = []
    for webhook in webhooks:
        scope = f"iTwin {webhook.scope_id}" if webhook.scope == "iTwin" else str(webhook.scope)
        app = "*" if normal_url(webhook.callback_url) == mine else ""
        state = "active" if webhook.active else "inactive"
        rows.append([app, webhook.id, state, scope, webhook.callback_url, ", ".join(webhook.event_types)])
    for line in table(["", "ID", "STATE", "SCOPE", "CALLBACK", "EVENT TYPES"], rows, output.width):
        output.line(line)
    if any(row[0] for row in rows):
        output.line("\n* sends to this app's webhook URL")
    return 0


def webhook_delete(context: Context) -> int:
    from ops.subscription import describe, normal_url
    from shared.errors import NotFound

    args, output = context.args, context.output
    api = context.api()
    url = args.url or context.environ.get("ITWIN_WEBHOOK_URL", "").strip()
    if args.id:
        try:
            webhooks = [api.get_webhook(args.id)]
        except NotFound:
            output.line(f"webhook {args.id} does not exist (already deleted)")
            return 0
        theirs = [w for w in webhooks if not url or normal_url(w.callback_url) != normal_url(url)]
        if theirs and not args.force:
            mine = f"this app's webhook URL, {url}" if url else "known to be this app's (ITWIN_WEBHOOK_URL is not set)"
            raise UsageError(
                f"webhook {args.id} sends to {theirs[0].callback_url}, not {mine}: deleting it stops another "
                "receiver's events. Check with `python -m ops webhook list`; add --force to delete it all the same"
            )
    else:
        url = context.callback_url()
        webhooks = _subscription(context).find(url)
        if not webhooks:
            output.line(f"no webhook sends to {url}: nothing to delete")
            return 0
    for webhook in webhooks:
        output.line(f"{describe(webhook)} sends to {webhook.callback_url}")
    question = f"Delete {len(webhooks)} webhook(s)? Deliveries stop at once."
    why = "deleting a webhook stops its deliveries"
    if not _deletion_confirmed(context, len(webhooks), "webhook", why, question):
        return 0
    for webhook in webhooks:
        try:
            api.delete_webhook(webhook.id)
            output.line(f"deleted webhook {webhook.id}")
        except NotFound:
            output.line(f"webhook {webhook.id} does not exist (already deleted)")
    return 0


def webhook_rotate(context: Context) -> int:
    from ops.rotation import Probe, Rotation
    from shared.client import new_session

    args = context.args
    url = context.callback_url()
    webhook = _subscription(context).one(url)
    session = new_session(url)
    session.verify = context.ca_bundle or session.verify
    rotation = Rotation(context.api(), context.store(), Probe(url, session), context.output, wait=args.wait)
    if args.finish:
        rotation.finish(webhook, force=args.force)
    else:
        rotation.rotate(webhook)
    return 0


# -- the parser ------------------------------------------------------------------------------------------------
MIN_RATE = 0.01  # commands a second: one every 100 s; anything slower is a mistake, not a plan
MAX_LEASE = 7 * 24 * 3600  # the longest visibility timeout a storage queue takes


def _rate(text: str) -> float:
    """``--rate``: a finite number of commands a second, at least `MIN_RATE`."""
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate < MIN_RATE:
        raise argparse.ArgumentTypeError(
            f"must be a number of commands a second, at least {MIN_RATE}; got {text!r} (leave out --rate for no limit)"
        )
    return rate


def _seconds(text: str) -> float:
    """``--wait``: a finite number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more; got {text!r}")
    return seconds


def _lease(text: str) -> int:
    """``--lease``: whole seconds a storage queue can hide a message for."""
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= MAX_LEASE:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds from 1 to {MAX_LEASE}; got {text!r}")
    return seconds


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", help="only this error code, e.g. InsufficientPermissions or CreateOutcomeUnknown")
    parser.add_argument("--command", help='only this command, e.g. "delete connection", or a resource such as run')
    parser.add_argument("--older-than", metavar="AGE", help="failed longer ago than AGE (90s, 15m, 2h, 3d, 1w)")
    parser.add_argument("--newer-than", metavar="AGE", help="failed within AGE")


def _say_defaults(parser: argparse.ArgumentParser) -> None:
    """Add ``(default N)`` to the help of every option with a default its help does not already give."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _say_defaults(sub)
        elif action.help and action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
            default = f"{action.default:g}" if isinstance(action.default, float) else action.default
            action.help = f"{action.help} (default {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate the iTwin event sync app: dead letters on the poison queue, command status (the "
        "command ledger), and the webhook.",
        epilog="Settings come from the environment, then from local.settings.json (--settings), as the app reads them; "
        "next to a running `make dev`, from the .sandbox/local.settings.json it writes.",
    )
    parser.add_argument(
        "--settings",
        help="the local.settings.json to read (and write); default local.settings.json, or make dev's "
        ".sandbox/local.settings.json when there is none and the environment names no storage",
    )
    parser.add_argument("--key-vault", help="Key Vault name or URL holding the secrets (default AZURE_KEY_VAULT_NAME)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{poison,commands,webhook}")

    poison = groups.add_parser(
        "poison", help="dead letters on itwin-commands-poison", description="dead letters on itwin-commands-poison"
    )
    verbs = poison.add_subparsers(dest="verb", required=True, metavar="{list,show,replay,purge}")
    listing = verbs.add_parser("list", help="a table of the dead letters", description="a table of the dead letters")
    _filters(listing)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(run=poison_list)
    show = verbs.add_parser("show", help="one dead letter in full", description="one dead letter in full")
    show.add_argument("id", help="its id, or the start of it (as poison list shows)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=poison_show)
    replay = verbs.add_parser(
        "replay",
        help="put commands back on itwin-commands, attempt count reset",
        description="put commands back on itwin-commands, attempt count reset",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letters to replay (ids or their starts)")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    _filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    replay.add_argument(
        "--rate", type=_rate, help="at most this many commands a second (spare the API limits; default: no limit)"
    )
    replay.add_argument("--itwin-id", help="the iTwin to list Clash Detection runs in, to check unknown run creates")
    replay.add_argument("--force", action="store_true", help="replay CreateOutcomeUnknown creates without a check")
    replay.add_argument(
        "--resend-interrupted",
        action="store_true",
        help="resend commands whose earlier replay was interrupted and left no trace",
    )
    replay.add_argument("--lease", type=_lease, default=30, help="seconds a dead letter is held while worked on")
    replay.add_argument(
        "--wait",
        type=_seconds,
        default=40.0,
        help="seconds to wait for dead letters held by another (or a stopped) run",
    )
    replay.set_defaults(run=poison_replay)
    purge = verbs.add_parser(
        "purge",
        help="delete dead letters for good (asks first)",
        description="delete dead letters for good (asks first)",
    )
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true")
    _filters(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.add_argument("--dry-run", action="store_true")
    purge.set_defaults(run=poison_purge)

    commands = groups.add_parser(
        "commands",
        help="what became of each command (the command ledger)",
        description="what became of each command: its row in the command ledger, as GET /api/commands/{id} answers",
    )
    verbs = commands.add_subparsers(dest="verb", required=True, metavar="{show,list}")
    show = verbs.add_parser("show", help="one command's status", description="one command's status, attempts, result")
    show.add_argument(
        "id", help="the command id, such as 20261123-c3f1a2... (as POST /api/commands answered), or its start"
    )
    show.add_argument("--json", action="store_true", help="print the GET /api/commands/{id} answer")
    show.set_defaults(run=commands_show)
    listing = verbs.add_parser(
        "list", help="the newest commands, by status", description="the newest commands first, by status"
    )
    listing.add_argument("--status", choices=[s.value for s in LedgerStatus], help="only commands with this status")
    listing.add_argument(
        "--days", type=int, help="look back this many days (default: ITWIN_LEDGER_RETENTION, all the ledger keeps)"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many commands (default 100)")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(run=commands_list)

    webhook = groups.add_parser(
        "webhook",
        help="the app's iTwin Platform webhook (Webhooks v2)",
        description="the app's iTwin Platform webhook (Webhooks v2)",
    )
    verbs = webhook.add_subparsers(dest="verb", required=True, metavar="{create,activate,list,delete,rotate-secret}")
    url_help = "the app's webhook URL (default ITWIN_WEBHOOK_URL)"
    create = verbs.add_parser(
        "create",
        help="create it, or reuse the one for this URL",
        description="create it, or reuse the one for this URL",
    )
    create.add_argument("--url", help=url_help)
    create.add_argument("--scope", choices=["account", "itwin", "Account", "iTwin"], default="account")
    create.add_argument("--itwin-id", help="the iTwin, for --scope itwin")
    create.add_argument("--event-type", action="append", help="subscribe to this type (default: what the rules handle)")
    create.add_argument("--activate", action="store_true", help="activate it too")
    create.set_defaults(run=webhook_create)
    activate = verbs.add_parser(
        "activate", help="make the platform start delivering", description="make the platform start delivering"
    )
    activate.add_argument("--url", help=url_help)
    activate.set_defaults(run=webhook_activate)
    listing = verbs.add_parser(
        "list", help="the service application's webhooks", description="the service application's webhooks"
    )
    listing.add_argument("--url", help=url_help)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=webhook_list)
    delete = verbs.add_parser(
        "delete",
        help="delete the app's webhook (or --id; asks first)",
        description="delete the app's webhook (or --id; asks first)",
    )
    delete.add_argument("--url", help=url_help)
    delete.add_argument("--id", help="delete this webhook instead")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    delete.add_argument("--force", action="store_true", help="with --id: delete it even if it sends elsewhere")
    delete.set_defaults(run=webhook_delete)
    rotate = verbs.add_parser(
        "rotate-secret",
        help="change the webhook secret without refusing a delivery",
        description="change the webhook secret without refusing a delivery",
    )
    rotate.add_argument("--url", help=url_help)
    rotate.add_argument("--wait", type=_seconds, default=600.0, help="seconds to wait for the app to load the secrets")
    rotate.add_argument("--finish", action="store_true", help="drop the previous secret once it is no longer needed")
    rotate.add_argument("--force", action="store_true", help="with --finish: drop it now")
    rotate.set_defaults(run=webhook_rotate)
    _say_defaults(parser)
    return parser


def _unexpected(error: Exception, environ: dict[str, str], settings: Path) -> str:
    from azure.core.exceptions import AzureError

    from ops.poison_queue import storage_error
    from ops.reach import api_unreachable, token_service_unreachable
    from shared.errors import Forbidden, ITwinError, TokenError, TransportError
    from shared.settings import DEFAULT_API_URL, DEFAULT_AUTHORITY, SettingsError

    if isinstance(error, Forbidden) and (error.operation or "").startswith("webhooks"):
        return (
            f"the iTwin Platform refused ({error.status} {error.code}): webhooks need the webhooks_maintainer "
            "permission on the iTwin, or an organization administrator, for the service application"
        )
    if isinstance(error, TransportError):
        return api_unreachable(
            environ.get("ITWIN_API_URL", "").strip() or DEFAULT_API_URL, str(error), _where(settings)
        ).message
    if isinstance(error, TokenError) and error.code == "TokenServiceUnavailable":
        return token_service_unreachable(
            environ.get("ITWIN_AUTHORITY", "").strip() or DEFAULT_AUTHORITY, str(error)
        ).message
    if isinstance(error, ITwinError):
        return f"the iTwin Platform call failed: {error}"
    if isinstance(error, SettingsError):
        return str(error)
    if isinstance(error, AzureError):
        return storage_error(error, "do that").message
    raise error


def main(
    argv: Sequence[str] | None = None, *, output: Output | None = None, environ: dict[str, str] | None = None
) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = output or Output()
    run: Callable[[Context], int] = args.run
    context_environ = os.environ if environ is None else environ
    args.settings = str(settings_path(args.settings, context_environ, Path.cwd()))
    try:
        return run(Context(args, output, context_environ))
    except OpsError as error:
        output.note(f"error: {error.message}" if not isinstance(error, NeedsAttention) else error.message)
        return error.exit_code
    except ImportError as error:
        output.note(
            f"error: a package the tool needs is not installed ({error.name or error}): run `python -m pip install "
            "-r requirements.txt -r requirements-ops.txt`, or use .venv/bin/python after make test"
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        output.note("interrupted: what was done is shown above; anything held comes back when its lease runs out")
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        try:
            message = _unexpected(error, context_environ, Path(args.settings))
        except Exception:
            output.note(f"error: unexpected {type(error).__name__}: {error}. Rerun with --debug for the traceback.")
            return EXIT_FAILED
        output.note(f"error: {message}")
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
