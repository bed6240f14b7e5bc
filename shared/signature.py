"""iTwin webhook signatures: ``Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>``."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The ``Signature`` header value the platform sends for ``body``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str | None) -> bool:
    """True only when a secret is configured and ``header`` signs exactly ``body``; compares in constant time."""
    if not secret or not header or not header.startswith(PREFIX):
        return False
    return hmac.compare_digest(sign(body, secret).lower().encode(), header.strip().lower().encode())
