"""Reading an HTTP answer's body within a deadline and a size cap, whatever the server does.

A read timeout bounds each wait for bytes, not the whole answer: a server that sends a byte every half second keeps
a plain ``requests`` call for as long as it likes, and one that sends 300 MiB has it all held in memory. Requests are
sent with ``stream=True`` and their bodies read here, in pieces, until the end, the deadline or the cap.
"""

from __future__ import annotations

from collections.abc import Callable

import requests
import urllib3

ERROR_BODY_LIMIT = 1024 * 1024  # an error body beyond this is cut: its first MiB says what went wrong
SUCCESS_BODY_LIMIT = 16 * 1024 * 1024  # the largest answer the app reads: a page of 1,000 runs is about 1 MiB
_PIECE = 64 * 1024


class BodyNotRead(Exception):
    """The body did not arrive whole within the deadline or the cap; the connection is closed. Its message
    completes "GET /path ..."."""


def read_body(
    response: requests.Response, *, deadline: float, limit: int, clock: Callable[[], float], cut: bool = False
) -> bytes:
    """Read ``response``'s body (sent with ``stream=True``) before ``deadline`` (on ``clock``) and up to ``limit``
    bytes, and keep it as the response's content. ``cut``: a body over ``limit`` is cut to it instead of refused.

    Each read waits at most the request's read timeout, so the whole read ends within one read timeout of
    ``deadline``. Raises `BodyNotRead` when the deadline passes first, or when the body is over ``limit`` and not
    ``cut``. A body read to its end gives its connection back to the pool; any other is closed.
    """
    body = bytearray()
    whole = False
    try:
        while True:
            piece = response.raw.read1(_PIECE)
            if not piece:
                whole = True
                break
            body += piece
            if len(body) > limit:
                if not cut:
                    raise BodyNotRead(f"got an answer larger than {limit:,} bytes, the most this app reads")
                del body[limit:]
                break
            # Past the deadline, only an answer that has all arrived is still read (after a paused process, say).
            if clock() > deadline and response.raw.length_remaining != 0:
                raise BodyNotRead(f"got no whole answer in time ({len(body):,} bytes by its deadline)")
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        response.close()
        raise BodyNotRead(f"got an answer that broke off: {type(exc).__name__}") from None
    except BodyNotRead:
        response.close()
        raise
    if whole:
        response.raw.release_conn()
    else:
        response.close()
    response._content = bytes(body)
    response._content_consumed = True
    return response._content
