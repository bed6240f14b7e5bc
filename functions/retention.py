"""A timer (daily, 03:17 UTC): the command ledger's days older than ITWIN_LEDGER_RETENTION are dropped whole."""

import azure.functions as func

from shared import runtime
from shared.retention import drop_expired

bp = func.Blueprint()


@bp.function_name("ledger_retention")
@bp.timer_trigger(arg_name="timer", schedule="0 17 3 * * *", run_on_startup=False, use_monitor=False)
def ledger_retention(timer: func.TimerRequest) -> None:
    drop_expired(runtime.ledger(), runtime.settings().ledger_retention_days)
