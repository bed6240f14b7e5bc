"""What the command ledger says about replaying a dead letter whose command carries ``commandId``.

Such a command's ledger row is ``dead_lettered``, a final status: sent back as it is, the worker would answer
``already_done`` and do nothing. So a replay sets the row back to ``queued`` (`shared.ledger.Ledger.requeue`,
conditional on the row's ETag) before it sends the command, which keeps its id and its status URL. The requeue
writes the replay's token (``replay-<poison message id>``) into the row, which lets the ledger settle what the
queues alone cannot after a replay was interrupted (see `ops.replay`):

- the row carries this dead letter's token and the worker has had the command since (any status but ``queued``):
  the command was sent, so only the envelope is left to remove (``settle``);
- the row carries the token and is still ``queued``: the command may or may not have been sent. It is sent
  (again): a second delivery is harmless, because the ledger lets one delivery make a create and the others find
  its lease or its result (``resend``);
- the row is ``dead_lettered`` and no replay ever set it back: no replay of it was ever sent (``requeue``);
- the row is anything else (it succeeded meanwhile by another path, another replay has it): it is not replayed,
  and the operator is told (``refuse``).

A command without ``commandId`` (another producer's), or whose row is gone (older than the ledger keeps), has
nothing in the ledger to go by, and is replayed as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.command_status import CommandLedger
from ops.dead_letters import DeadLetter
from ops.output import when
from shared.ledger import Record, Status


@dataclass(frozen=True)
class Verdict:
    """What a replay does with one dead letter and why (``says``, shown to the operator).

    ``action``: ``replay``; ``requeue`` (the ledger row back to queued, then replay); ``resend`` (replay; this
    replay's requeue is done already); ``settle`` (only remove the envelope); ``refuse``; ``interrupted``.
    ``row``: the ledger row read, for a requeue; ``unsent``: the ledger shows that no replay of it was ever sent.
    """

    says: str
    action: str
    row: Record | None = None
    unsent: bool = False


def ledger_verdict(letter: DeadLetter, ledger: CommandLedger) -> Verdict | None:
    """The ledger's verdict on replaying ``letter``; None when the ledger has no row to go by."""
    command_id = letter.command.command_id if letter.command else None
    if command_id is None:
        return None
    row = ledger.get(command_id)
    if row is None:
        return None
    if row.requeued_by == letter.token:
        if row.status is Status.QUEUED:
            return Verdict(
                "replay (an earlier run set its ledger row back to queued and may have stopped before sending it: "
                "sent again; the ledger keeps it to one effect)",
                "resend",
                row,
            )
        return Verdict(
            f"an earlier run sent it and the worker has had it since ({row.status.value} in the ledger): "
            "removing this envelope",
            "settle",
            row,
        )
    if row.status is not Status.DEAD_LETTERED:
        return Verdict(
            f"refused: its ledger row is {row.status.value} since {when(row.updated)}, not dead_lettered: it was "
            f"carried out meanwhile, or is on its way, by another path. See `python -m ops commands show "
            f"{command_id}`; purge this envelope once you have checked",
            "refuse",
            row,
        )
    return Verdict("replay (ledger row dead_lettered, set back to queued)", "requeue", row, unsent=not row.requeued_by)
