"""Dashboard sessions: a login with an API token, kept in this process's memory.

Theory of operation
-------------------
A person pastes an API token into the login form. It is checked exactly as a bearer
token is (:func:`orchestrator.auth.authenticate`); the session then keeps the token's
SHA-256 (never the token) and a random CSRF token, under a random session id that
goes to the browser as an HttpOnly, SameSite=Strict cookie. The session id itself is
kept only as its hash, so a memory dump of the table gives no cookie to replay.

Each request checks the token again (:meth:`SessionStore.principal`): a revoked token
ends its sessions at once. A session ends on logout, after :data:`SESSION_IDLE_S`
without a request, after :data:`SESSION_MAX_AGE_S` in all, or when ``orch serve``
restarts (nothing is written to the database; see decision 0020). At most
:data:`MAX_SESSIONS` live at once; the least recently used goes first.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from orchestrator.auth import (
    LEGACY_ADMIN_NAME,
    Principal,
    authenticate,
    hash_token,
)
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = [
    "MAX_SESSIONS",
    "SESSION_IDLE_S",
    "SESSION_MAX_AGE_S",
    "Session",
    "SessionStore",
    "csrf_matches",
]

SESSION_IDLE_S: Final = 8 * 3600.0
SESSION_MAX_AGE_S: Final = 7 * 24 * 3600.0
MAX_SESSIONS: Final = 10_000
SESSION_ID_BYTES: Final = 32
CSRF_BYTES: Final = 32


@dataclass(frozen=True)
class Session:
    """One login: whose token, the CSRF token its forms carry, and its ages."""

    csrf: str
    token_digest: str
    principal: Principal
    created_at: float
    seen_at: float


def csrf_matches(expected: str, sent: str | None) -> bool:
    """Whether a form's CSRF token is the session's (constant time)."""
    if not sent or not expected:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "surrogateescape"))


class SessionStore:
    """The live sessions of one ``orch serve``; thread-safe."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        idle_s: float = SESSION_IDLE_S,
        max_age_s: float = SESSION_MAX_AGE_S,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def login(self, token: str) -> tuple[str, Session]:
        """Check ``token`` as a bearer token and open a session: (session id, session).

        Raises :class:`~orchestrator.errors.NotAuthenticatedError` for a token that is
        not one.
        """
        principal = authenticate(self.store, self.settings, f"Bearer {token}")
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self.clock()
        session = Session(
            csrf=secrets.token_urlsafe(CSRF_BYTES),
            token_digest=hash_token(token.strip()),
            principal=principal,
            created_at=now,
            seen_at=now,
        )
        with self._lock:
            self._sessions[hash_token(session_id)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session ``session_id`` (its token not checked again), or None."""
        key = hash_token(session_id)
        now = self.clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.seen_at > self.idle_s or now - session.created_at > self.max_age_s:
                del self._sessions[key]
                return None
            session = replace(session, seen_at=now)
            self._sessions[key] = session
            self._sessions.move_to_end(key)
            return session

    def principal(self, session_id: str) -> Principal | None:
        """Who session ``session_id`` is, with its token checked again (revoked: None)."""
        session = self.get(session_id)
        if session is None:
            return None
        if not self._token_lives(session):
            self.logout(session_id)
            return None
        return session.principal

    def _token_lives(self, session: Session) -> bool:
        legacy = self.settings.admin_token
        digest = session.token_digest.encode()
        if legacy and hmac.compare_digest(hash_token(legacy).encode(), digest):
            return session.principal.name == LEGACY_ADMIN_NAME
        found = self.store.api_token_by_hash(session.token_digest)
        return found is not None and Principal(found.name, found.role) == session.principal

    def logout(self, session_id: str) -> None:
        """End session ``session_id`` (nothing happens when there is none)."""
        with self._lock:
            self._sessions.pop(hash_token(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
