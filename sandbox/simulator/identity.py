"""The token service: OpenID discovery, client-credentials tokens, and checking bearer tokens on API calls."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus

from .protocol import HEADER_NOT_FOUND, INSUFFICIENT_PERMISSIONS, ApiError, Response, json_response

API_SCOPE = "itwin-platform"


@dataclass(frozen=True)
class IssuedToken:
    """A token the service handed out: its scopes and when (time.monotonic) it expires."""

    scope: str
    expires_at: float


def _oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": error, "error_description": description}, headers)


class Identity:
    """Client-credentials token service for one registered client, and the token check the APIs run."""

    def __init__(self, client_id: str, client_secret: str, token_lifetime: float) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.down = False
        self._tokens: dict[str, IssuedToken] = {}
        self._lock = threading.Lock()

    # -- tokens -------------------------------------------------------------------------------------------
    def issue(self, scope: str, lifetime: float | None = None) -> str:
        """A new opaque access token for `scope`, valid `lifetime` seconds (default: the service's)."""
        token = secrets.token_urlsafe(32)
        seconds = self.token_lifetime if lifetime is None else lifetime
        with self._lock:
            self._tokens[token] = IssuedToken(scope, time.monotonic() + seconds)
        return token

    def revoke_all(self) -> None:
        """Forget every token issued so far: API calls carrying one answer 401."""
        with self._lock:
            self._tokens.clear()

    def authenticate(self, authorization: str | None) -> None:
        """Check an API call's Authorization header; raises `ApiError` 401 or 403 when it does not pass."""
        if authorization is None:
            raise ApiError(401, "HeaderNotFound", HEADER_NOT_FOUND)
        scheme, _, token = authorization.strip().partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "InvalidToken", "Authorization header must be 'Bearer <access token>'.", headers=challenge
            )
        with self._lock:
            issued = self._tokens.get(token.strip())
        if issued is None:
            raise ApiError(
                401, "InvalidToken", "The access token is unknown or was revoked. Access denied.", headers=challenge
            )
        if time.monotonic() >= issued.expires_at:
            raise ApiError(401, "InvalidToken", "The access token has expired. Access denied.", headers=challenge)
        if API_SCOPE not in issued.scope.split():
            raise ApiError(403, "InsufficientPermissions", INSUFFICIENT_PERMISSIONS)

    # -- endpoints ----------------------------------------------------------------------------------------
    @staticmethod
    def discovery(base_url: str) -> Response:
        """The OpenID Connect discovery document; the issuer is the path-less root, like ims.bentley.com."""
        return json_response(
            200,
            {
                "issuer": base_url,
                "authorization_endpoint": f"{base_url}/connect/authorize",
                "token_endpoint": f"{base_url}/connect/token",
                "jwks_uri": f"{base_url}/.well-known/openid-configuration/jwks",
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access", API_SCOPE],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            },
        )

    @staticmethod
    def jwks() -> Response:
        """An empty key set: the simulator's access tokens are opaque."""
        return json_response(200, {"keys": []})

    def token(self, headers: dict[str, str], body: bytes) -> Response:
        """Answer a token request (form-encoded, client credentials in the form or as HTTP Basic)."""
        if self.down:
            return _oauth_error(503, "temporarily_unavailable", "The token service is unavailable.")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            form = {}
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Only grant_type=client_credentials is supported here.")
        offered = {(form.get("client_id"), form.get("client_secret"))}
        authorization = headers.get("authorization") or ""
        basic = authorization[:6].lower() == "basic "
        if basic:
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, _, password = decoded.partition(":")
            # RFC 6749 2.3.1 form-encodes both before joining them; many clients do not: accept either.
            offered = {(user, password), (unquote_plus(user), unquote_plus(password))}
        if (self.client_id, self.client_secret) not in offered:
            challenge = {"WWW-Authenticate": 'Basic realm="connect"'} if basic else None
            return _oauth_error(401, "invalid_client", "Unknown client or wrong client secret.", challenge)
        scope = form.get("scope")
        if not scope:
            return _oauth_error(400, "invalid_scope", "The scope parameter is required.")
        lifetime = self.token_lifetime
        access_token = self.issue(scope, lifetime)
        return json_response(
            200,
            {"access_token": access_token, "token_type": "Bearer", "expires_in": int(lifetime), "scope": scope},
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )
