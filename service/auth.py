"""API keys for the scoring routes and the bearer token for the admin routes.

Comparisons are constant-time and every configured key is compared, so the response time
does not tell which key (or how much of one) matched. Secrets never reach the logs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from service.errors import AdminDisabled, Unauthorized


class ApiKeys:
    """The keys accepted in ``X-API-Key``; with none configured, scoring is open."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._keys = tuple(key.get_secret_value().encode() for key in keys)

    @property
    def required(self) -> bool:
        """Whether a key must be sent."""
        return bool(self._keys)

    def check(self, presented: bytes | None) -> None:
        """Unauthorized unless no key is configured or ``presented`` is one of the keys."""
        if not self._keys:
            return
        if presented is None:
            raise Unauthorized("this route needs an API key in the X-API-Key header")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(key, presented)
        if not matched:
            raise Unauthorized("the X-API-Key header does not hold a valid API key")


class AdminToken:
    """The bearer token of the admin routes; without one they are disabled."""

    def __init__(self, token: SecretStr | None) -> None:
        self._token = None if token is None else token.get_secret_value().encode()

    @property
    def enabled(self) -> bool:
        """Whether admin routes are on."""
        return self._token is not None

    def check(self, authorization: str | None) -> str:
        """The caller's token id (for audit logs) if ``authorization`` bears the token.

        AdminDisabled when no token is configured, Unauthorized when it does not match.
        """
        if self._token is None:
            raise AdminDisabled(
                "admin routes are disabled: set FRAUDSCORE_ADMIN_TOKEN to enable them"
            )
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized("admin routes need an 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(self._token, presented.strip().encode()):
            raise Unauthorized("the bearer token is not valid")
        return token_id(self._token)


def token_id(secret: bytes) -> str:
    """A short, stable, non-reversible name for a secret, safe to log."""
    return "sha256:" + hashlib.sha256(secret).hexdigest()[:12]
