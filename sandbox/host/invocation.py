"""What every invocation needs, whatever its trigger: the ``context`` argument, and calling the user function
(``async def`` ones too)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import azure.functions as func


class Context(func.Context):
    """The ``context`` argument of an invocation."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._tls = threading.local()
        self._tls.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return SimpleNamespace(trace_parent="", trace_state="", attributes={})

    @property
    def retry_context(self) -> Any:
        return SimpleNamespace(retry_count=0, max_retry_count=0, exception=None)


def call(user_function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call a user function with its arguments; a coroutine is run to its end. Returns what it returned."""
    result = user_function(**kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result
