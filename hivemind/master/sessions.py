"""Console sign-in state: server-side sessions, CSRF tokens and the login rate limit.

The session cookie holds only a random id; the node pool token stays in the master's
memory, so no page or script can read it. Sessions end at sign-out, after
MASTER_SESSION_TTL seconds, or when the node pool token expires, whichever comes first.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

SESSION_COOKIE = "hivemind_session"
#: A signed-out visitor's CSRF token for the sign-in form (double-submit cookie).
LOGIN_CSRF_COOKIE = "hivemind_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Sign-in attempts one client address may make per window, successful or not.
LOGIN_ATTEMPTS_MAX = 10
LOGIN_WINDOW_SECONDS = 60.0
#: Sessions kept at most; the oldest go first (bounds memory under a flood of sign-ins).
SESSIONS_MAX = 10_000


@dataclass
class Session:
    id: str
    username: str
    role: str
    token: str
    csrf: str
    expires_at: float
    created_at: float = field(default_factory=time.time)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class SessionStore:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self, username: str, role: str, token: str, token_expires_at: float) -> Session:
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(32),
            username=username,
            role=role,
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires_at=min(now + self.ttl, token_expires_at),
        )
        with self._lock:
            if len(self._sessions) >= SESSIONS_MAX:
                self._drop_expired(now)
                while len(self._sessions) >= SESSIONS_MAX:
                    self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= time.time():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str | None) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_id or "", None)

    def replace_token(self, session_id: str, token: str) -> None:
        """The session's user changed their password: it goes on with the new token."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.token = token

    def end_user(self, username: str, keep: str | None = None) -> list[Session]:
        """End every session of ``username`` but ``keep`` (their tokens were revoked)."""
        with self._lock:
            ended = [s for s in self._sessions.values() if s.username == username and s.id != keep]
            for session in ended:
                del self._sessions[session.id]
        return ended

    def _drop_expired(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[sid]


def same_token(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given), expected)


class LoginLimiter:
    """At most LOGIN_ATTEMPTS_MAX sign-ins per client address per window (sliding)."""

    def __init__(
        self, attempts: int = LOGIN_ATTEMPTS_MAX, window: float = LOGIN_WINDOW_SECONDS
    ) -> None:
        self.attempts = attempts
        self.window = window
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def check(self, client: str) -> float:
        """Record an attempt; 0 if allowed, else the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()
            times = self._seen.setdefault(client, deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.attempts:
                return max(1.0, times[0] + self.window - now)
            times.append(now)
            return 0.0
