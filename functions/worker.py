"""The queue worker: each message on itwin-commands ends in exactly one recorded outcome."""

import azure.functions as func

from shared import runtime
from shared.settings import COMMAND_QUEUE, STORAGE_CONNECTION

bp = func.Blueprint()


@bp.function_name("command_worker")
@bp.queue_trigger(arg_name="msg", queue_name=COMMAND_QUEUE, connection=STORAGE_CONNECTION)
def command_worker(msg: func.QueueMessage) -> None:
    last_try = (msg.dequeue_count or 0) >= runtime.max_dequeue_count()
    runtime.worker().handle(msg.get_body(), last_try=last_try)
