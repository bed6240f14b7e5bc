"""iTwin webhook signatures: ``Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>``.

While the webhook's secret is being changed, a delivery may be signed with either the new secret
(``ITWIN_WEBHOOK_SECRET``) or the one it replaces (``ITWIN_WEBHOOK_SECRET_PREVIOUS``): both verify.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "sha256="
SECRET_SETTING = "ITWIN_WEBHOOK_SECRET"  # noqa: S105 - a setting name
PREVIOUS_SECRET_SETTING = "ITWIN_WEBHOOK_SECRET_PREVIOUS"  # noqa: S105 - a setting name
# App Service leaves a Key Vault reference it could not resolve in place, as text anyone can read in the template.
_UNRESOLVED_REFERENCE = "@Microsoft.KeyVault("


def _usable(value: str | None) -> str | None:
    text = (value or "").strip()
    return text if text and not text.startswith(_UNRESOLVED_REFERENCE) else None


@dataclass(frozen=True)
class WebhookSecrets:
    """The secrets a delivery may be signed with. False (refuse everything) when the current one is unset."""

    current: str | None = field(default=None, repr=False)
    previous: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSecrets:
        """Both settings; an empty value or an unresolved Key Vault reference counts as unset."""
        return cls(_usable(environ.get(SECRET_SETTING)), _usable(environ.get(PREVIOUS_SECRET_SETTING)))

    def __bool__(self) -> bool:
        return self.current is not None

    def candidates(self) -> tuple[str, ...]:
        """The secrets to try, current first; none when the current one is unset."""
        if not self.current:
            return ()
        return (self.current,) if not self.previous or self.previous == self.current else (self.current, self.previous)


def sign(body: bytes, secret: str) -> str:
    """The ``Signature`` header value the platform sends for ``body``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str | WebhookSecrets | None) -> bool:
    """True only when a secret is configured and ``header`` signs exactly ``body`` with it (or, given
    `WebhookSecrets`, with the previous one); compares in constant time."""
    secrets = secret if isinstance(secret, WebhookSecrets) else WebhookSecrets(secret or None)
    if not header or not header.startswith(PREFIX):
        return False
    offered = header.strip().lower().encode()
    matches = [hmac.compare_digest(sign(body, key).lower().encode(), offered) for key in secrets.candidates()]
    return any(matches)
