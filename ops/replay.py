"""Replaying dead letters: each command back on ``itwin-commands`` once, its envelope removed only after that.

For each chosen dead letter, under a lease (the message is hidden from other runs while we work on it):

1. **mark**: write ``"replay": {"token", "startedAt"}`` into the envelope (this also renews the lease);
2. **send** the command, attempt count reset, its ``correlationId`` ending in the token;
3. **delete** the envelope.

Killed before 1 completes, nothing happened: the lease runs out, the envelope comes back unmarked, and the next
run replays it. Killed after 3, it is done. Killed between 1 and 3, the envelope comes back marked, and the
command may or may not have been sent. The next run then looks for the token: on the first 32 commands waiting on
``itwin-commands`` (where it sits until the worker takes it) and in the ``correlationId`` of every other dead
letter (where it is if the worker took it and it failed again). Found: the command was sent, so only the envelope
is removed. Not found: the command was sent and has been processed since, or never sent, and no queue can tell
which; the envelope stays, reported as interrupted, until the operator replays it with ``--resend-interrupted``
(or purges it). Nothing is lost and nothing is sent twice without the operator saying so.

A command the command ledger tracks (it carries ``commandId``) has its ledger row set back to ``queued`` between
1 and 2, or the worker would answer ``already_done``; the ledger then settles an interrupted replay of it by itself
(see `ops.ledger_replay`), and a row that is no longer dead-lettered keeps its dead letter from being replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ops.command_status import CommandLedger
from ops.dead_letters import CREATE_OUTCOME_UNKNOWN, DeadLetter, token_in
from ops.exists import ExistenceChecker, Finding
from ops.ledger_replay import Verdict, ledger_verdict
from ops.output import Output
from ops.poison_queue import Leased, LeaseLost, Queues

# How far the storage service's clock may be ahead of ours when telling a dead letter held by an earlier run from
# one that arrived during this run.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class Report:
    """What a replay did with each chosen dead letter."""

    replayed: list[DeadLetter] = field(default_factory=list)
    settled: list[DeadLetter] = field(default_factory=list)
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)
    interrupted: list[DeadLetter] = field(default_factory=list)
    taken: list[DeadLetter] = field(default_factory=list)
    missing: int = 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.refused or self.interrupted or self.missing)


class Evidence:
    """Replay tokens seen on the queues: proof that a command carrying one was sent."""

    def __init__(self, queues: Queues, letters: list[DeadLetter]) -> None:
        self._queues = queues
        self._tokens = {token for letter in letters if (token := token_in(letter.message))}
        self._peeked = False

    def sent(self, token: str) -> bool:
        if token not in self._tokens and not self._peeked:
            self._tokens.update(t for message in self._queues.peek_commands() if (t := token_in(message)))
            self._peeked = True
        return token in self._tokens


def short(letter: DeadLetter) -> str:
    return letter.id[:8]


class Replayer:
    """Replays chosen dead letters. ``rate``: at most this many sends a second (None: as fast as it goes).
    ``ledger``: the command ledger, for commands that carry ``commandId`` (None: nothing chosen carries one)."""

    def __init__(
        self,
        queues: Queues,
        checker: ExistenceChecker | None,
        output: Output,
        *,
        ledger: CommandLedger | None = None,
        lease: int = 30,
        wait: float = 40.0,
        rate: float | None = None,
        force: bool = False,
        resend_interrupted: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.queues = queues
        self.checker = checker
        self.ledger = ledger
        self.output = output
        self.lease = lease
        self.wait = wait
        self.rate = rate
        self.force = force
        self.resend_interrupted = resend_interrupted
        self._clock = clock
        self._sleep = sleep
        self._now = now
        # Received but not yet worked on, a batch must be done within its lease.
        self.batch = max(1, min(8, int(lease * rate / 2))) if rate else 8

    def plan(self, chosen: list[DeadLetter], letters: list[DeadLetter]) -> None:
        """``--dry-run``: say what a replay would do with each, changing nothing (existence checks included)."""
        evidence = Evidence(self.queues, letters)
        for letter in chosen:
            verdict = self._verdict(letter, evidence)
            self.output.line(f"{short(letter)}  {letter.command_kind:<18}  {verdict.says}")

    def _verdict(self, letter: DeadLetter, evidence: Evidence) -> Verdict:
        """What to do with ``letter``, and why."""
        if letter.problem:
            return Verdict(f"refused: {letter.problem}", "refuse")
        if letter.replay_interrupted and evidence.sent(letter.token):
            return Verdict("an earlier run sent it and stopped before removing this envelope: removing it", "settle")
        if self.ledger is None and letter.command and letter.command.command_id:
            return Verdict(
                "refused: its command is in the command ledger, which these settings do not reach, so it cannot be "
                "set back to queued: give AzureWebJobsStorage with its table service",
                "refuse",
            )
        ledger = ledger_verdict(letter, self.ledger) if self.ledger else None
        if ledger and ledger.action in ("settle", "refuse", "resend"):
            return ledger
        replay = ledger or Verdict("replay", "replay")
        if letter.replay_interrupted and not replay.unsent:
            if not self.resend_interrupted:
                return Verdict(
                    "an earlier replay was interrupted and its command is not on the queues, so it was either "
                    "processed already or never sent: check (logs, or the resource itself), then replay it with "
                    "--resend-interrupted, or purge it",
                    "interrupted",
                )
            replay = Verdict("replay (interrupted earlier; --resend-interrupted)", replay.action, replay.row)
        if letter.code == CREATE_OUTCOME_UNKNOWN and not self.force:
            finding = self.checker.check(letter) if self.checker else Finding(None, "no iTwin settings to check with")
            if finding.exists:
                return Verdict(f"refused: it exists ({finding.summary}); purge the envelope", "refuse")
            if finding.exists is None:
                return Verdict(f"refused: {finding.summary}; replay it with --force once you have checked", "refuse")
            return Verdict(f"replay (checked: {finding.summary})", replay.action, replay.row)
        return replay

    def _requeue(self, letter: DeadLetter, verdict: Verdict) -> bool:
        """Set the command's ledger row back to queued (only if unchanged since read), marked with the token."""
        assert self.ledger is not None
        assert verdict.row is not None
        return self.ledger.requeue(verdict.row, self._now(), letter.token)

    @staticmethod
    def _was(letter: DeadLetter) -> str:
        attempts = f" after {letter.attempts} attempt(s)" if letter.attempts else ""
        return f"was {letter.code}{attempts}"

    def run(
        self,
        chosen: list[DeadLetter],
        letters: list[DeadLetter],
        also: Callable[[DeadLetter], bool] | None = None,
    ) -> Report:
        """Replay ``chosen`` (a selection from ``letters``, the queue as scanned). Dead letters the scan could not
        see, because another run (or one that was stopped) held them, are waited for, and replayed too when
        ``also`` says they are chosen."""
        report = Report()
        self._started = self._now()
        self._sent: set[str] = set()
        wanted = {letter.id: letter for letter in chosen}
        scanned = {letter.id for letter in letters}
        evidence = Evidence(self.queues, letters)
        held: dict[str, Leased] = {}
        done: set[str] = set()
        progress = self.output.progress(len(chosen), "replay")
        waiting_since: float | None = None
        try:
            while True:
                replayed_before = len(done)
                for leased in self.queues.leases(self.lease, self.batch):
                    letter = leased.letter
                    if letter.id not in wanted and letter.id not in scanned and self._held_at_start(letter, also):
                        wanted[letter.id] = letter
                        progress.total += 1
                    if letter.id not in wanted or letter.id in done:
                        held[letter.id] = leased  # not ours to replay, or kept: hold it till the end
                        continue
                    done.add(letter.id)
                    progress.advance()
                    kept = self._one(leased, evidence, report)
                    if kept is not None:
                        held[letter.id] = kept
                missing = [wanted[i] for i in wanted if i not in done]
                elsewhere = max(0, self.queues.count() - len(held)) if also else 0
                if not missing and not elsewhere:
                    break
                if len(done) > replayed_before:  # the pass ended at a letter whose lease ran out: go round again
                    waiting_since = None
                    continue
                if waiting_since is None:
                    waiting_since = self._clock()
                    self.output.note(
                        f"{len(missing) or elsewhere} dead letter(s) are held by another run, or by one that was "
                        f"stopped: waiting up to {self.wait:.0f} s for them to come back"
                    )
                if self._clock() - waiting_since >= self.wait:
                    report.missing = len(missing) or elsewhere
                    break
                self._sleep(0.5)
        finally:
            progress.close()
            self.queues.release_all(list(held.values()))
        return report

    def _held_at_start(self, letter: DeadLetter, also: Callable[[DeadLetter], bool] | None) -> bool:
        """Chosen, and on the queue (hidden) when this run began: not a dead letter that arrived since, above all
        not one of this run's own replays failing again, which would be replayed round and round."""
        if also is None or not also(letter) or token_in(letter.message) in self._sent:
            return False
        return letter.inserted_on is None or letter.inserted_on <= self._started + CLOCK_SKEW

    def _one(self, leased: Leased, evidence: Evidence, report: Report) -> Leased | None:
        """Replay one; returns the lease to keep holding when its envelope stays."""
        letter = leased.letter
        verdict = self._verdict(letter, evidence)
        action = verdict.action
        if action == "refuse":
            report.refused.append((letter, verdict.says.removeprefix("refused: ")))
            self.output.line(f"kept      {short(letter)}  {letter.command_kind}: {verdict.says}")
            return leased
        if action == "interrupted":
            report.interrupted.append(letter)
            self.output.line(f"kept      {short(letter)}  {letter.command_kind}: {verdict.says}")
            return leased
        try:
            if action == "settle":
                self.queues.delete(leased)
                report.settled.append(letter)
                self.output.line(f"settled   {short(letter)}  {letter.command_kind}: {verdict.says}")
                return None
            leased = self.queues.mark(leased, letter.marked(self._now()), self.lease)
        except LeaseLost:
            report.taken.append(letter)
            self.output.line(f"skipped   {short(letter)}  {letter.command_kind}: another run took it")
            return None
        if action == "requeue" and not self._requeue(letter, verdict):
            changed = "its ledger row changed while it was being replayed; run the replay again to see why"
            report.refused.append((letter, changed))
            self.output.line(f"kept      {short(letter)}  {letter.command_kind}: {changed}")
            return leased
        started = self._clock()
        self._sent.add(letter.token)
        self.queues.send_command(letter.replay_message())
        try:
            self.queues.delete(leased)
        except LeaseLost:
            self.output.note(f"{short(letter)}: sent, but another run took its envelope; that run will remove it")
        report.replayed.append(letter)
        note = verdict.says.removeprefix("replay").strip(" ()")
        self.output.line(
            f"replayed  {short(letter)}  {letter.command_kind}  ({self._was(letter)}{'; ' + note if note else ''})"
        )
        if self.rate:
            self._sleep(max(0.0, 1.0 / self.rate - (self._clock() - started)))
        return None
