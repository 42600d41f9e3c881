"""Who is asking: named users with roles, bearer tokens for the JSON API, session cookies for the browser.

Users come from the settings (``[auth] users``: name, role reviewer|admin, token). The legacy ``[api]
token`` is an admin named "api". Login is *on* when at least one of them exists; then every endpoint
but ``/health`` (and the login page and static files) needs a user. With login off, everybody is the
reviewer "anonymous" (attributed as such, never an admin), which suits a single-user demo. Tokens
must look random (``service.http.guard.token_weakness``); wrong tokens and logins are counted per
client and per user, and a few within a window lock the key out for a while (429,
``service.http.ratelimit``). Logout ends the session on the server (``service.http.sessions``).

- JSON API: ``Authorization: Bearer <token>``; missing or wrong -> 401, wrong role -> 403.
- Browser: ``POST /login`` with name + token sets an HMAC-signed session cookie (HttpOnly,
  SameSite=Strict) that carries the user and a per-session CSRF token. Every state-changing request
  authenticated by the cookie must send that CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``) and, when the browser sends one, an ``Origin`` equal to ours; a cross-site form
  post has neither and is refused with 403. Bearer requests need no CSRF token (a browser never
  adds that header on its own).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer

from service.http.guard import token_weakness
from service.http.ratelimit import FailureLimiter
from service.http.sessions import SessionRevocations

if TYPE_CHECKING:  # annotation-only types
    from pydantic import SecretStr
    from sqlalchemy import Engine
    from starlette.responses import Response

    from service.settings import ReviewUser, Settings

SESSION_COOKIE = "labelqa_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
ROLES = ("reviewer", "admin")
BEARER = HTTPBearer(auto_error=False, description="A user's token ([auth] users, or [api] token).")
"""The bearer scheme of the JSON API (it names the scheme in the OpenAPI schema)."""

__all__ = ["Auth", "Principal", "LoginRequired", "SESSION_COOKIE", "CSRF_HEADER", "CSRF_FIELD", "ROLES", "BEARER",
           "client_key", "safe_next"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: name, role, the person name for DICOM, and how it authenticated."""

    name: str
    role: str
    display_name: str
    via: str  # bearer | session | open
    csrf: str | None = None

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class _User:
    name: str
    role: str
    token: str
    display_name: str


class LoginRequired(Exception):
    """A browser page needs a login: the app turns this into a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _secret_value(v: SecretStr | str) -> str:
    return v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)


class Auth:
    """Authentication and authorisation for the API and the web pages."""

    def __init__(self, users: Iterable[ReviewUser] = (), *, api_token: str | None = None,
                 session_secret: str | None = None, max_age_s: int = 43200, cookie_secure: bool = False,
                 limiter: FailureLimiter | None = None,
                 revocations: SessionRevocations | None = None) -> None:
        self.users: dict[str, _User] = {}
        for u in users:
            token = _secret_value(u.token)
            if u.role not in ROLES:
                raise ValueError(f"user {u.name!r}: role must be one of {ROLES}")
            if weak := token_weakness(token, u.name):
                raise ValueError(f"user {u.name!r}: the token {weak}")
            if u.name in self.users:
                raise ValueError(f"user {u.name!r} is listed twice")
            self.users[u.name] = _User(u.name, u.role, token, u.display_name or u.name)
        if api_token:
            if weak := token_weakness(api_token):
                raise ValueError(f"[api] token: it {weak}")
            self.users.setdefault("api", _User("api", "admin", api_token, "api"))
        tokens = [u.token for u in self.users.values()]
        if len(set(tokens)) != len(tokens):
            raise ValueError("two users share a token: give each its own")
        if session_secret:
            key = session_secret
        elif self.users:  # stable across restarts, changes when a token changes
            key = hashlib.sha256("\x00".join(sorted(tokens)).encode()).hexdigest()
        else:
            key = secrets.token_hex(32)
        self._key = hashlib.sha256(b"labelqa-session\x00" + key.encode()).digest()
        self.max_age_s = int(max_age_s)
        self.cookie_secure = cookie_secure
        self.limiter = limiter or FailureLimiter()
        """Wrong tokens and logins per client and per user (429 once locked out)."""
        self.revocations = revocations or SessionRevocations()
        """Sessions ended by logout."""

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine | None = None) -> Auth:
        """The Auth of a ``service.settings.Settings``; with ``engine`` (the service database) logouts are
        recorded there, for every gateway."""
        a = settings.auth
        token = settings.api.token.get_secret_value() if settings.api.token else None
        secret = a.session_secret.get_secret_value() if a.session_secret else None
        return cls(a.users, api_token=token, session_secret=secret, max_age_s=a.session_max_age_s,
                   cookie_secure=a.cookie_secure,
                   limiter=FailureLimiter(a.max_failures, a.failure_window_s, a.lockout_s),
                   revocations=SessionRevocations(engine))

    @property
    def enabled(self) -> bool:
        """Whether login is required (some user or token is configured)."""
        return bool(self.users)

    # ---------------------------------------------------------------- credentials

    def check_token(self, token: str) -> _User | None:
        """The user whose token this is (constant-time comparison against each), or None."""
        found = None
        for u in self.users.values():
            if hmac.compare_digest(u.token.encode(), token.encode()):
                found = u
        return found

    def login(self, name: str, token: str) -> _User | None:
        """The user for a name + token pair from the login form, or None."""
        u = self.users.get(name.strip())
        if u is None or not hmac.compare_digest(u.token.encode(), token.encode()):
            return None
        return u

    def _sign(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + \
            base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def make_session(self, name: str) -> str:
        """A signed session cookie value for ``name`` with a fresh CSRF token."""
        body = json.dumps({"u": name, "c": secrets.token_urlsafe(24), "t": int(time.time())}).encode()
        return self._sign(body)

    def read_session(self, value: str | None) -> dict[str, Any] | None:
        """The payload of a valid, unexpired session cookie, or None."""
        if not value or "." not in value:
            return None
        a, b = value.split(".", 1)
        try:
            payload = base64.urlsafe_b64decode(a + "=" * (-len(a) % 4))
            mac = base64.urlsafe_b64decode(b + "=" * (-len(b) % 4))
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(mac, hmac.new(self._key, payload, hashlib.sha256).digest()):
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(data, dict) or time.time() - float(data.get("t", 0)) > self.max_age_s:
            return None
        if self.revocations.is_revoked(_session_id(data)):
            return None
        return data

    def revoke(self, value: str | None) -> None:
        """End the session of a cookie value on the server (logout): it is refused from now on."""
        data = self.read_session(value)
        if data is not None:
            self.revocations.revoke(_session_id(data), float(data.get("t", 0)) + self.max_age_s)

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=self.max_age_s, httponly=True, samesite="strict",
                            secure=self.cookie_secure, path="/")

    # ---------------------------------------------------------------- requests

    def principal(self, request: Request) -> Principal | None:
        """Who sent ``request`` (bearer token first, then the session cookie); None when nobody is logged in."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, cred = header.partition(" ")
            if scheme.lower() != "bearer" or not cred:
                return None
            u = self.check_token(cred.strip())
            return Principal(u.name, u.role, u.display_name, "bearer") if u else None
        data = self.read_session(request.cookies.get(SESSION_COOKIE))
        if data is None:
            return None
        name = str(data.get("u", ""))
        if not self.enabled:
            return Principal("anonymous", "reviewer", "anonymous", "open", str(data.get("c")))
        u = self.users.get(name)
        if u is None:
            return None
        return Principal(u.name, u.role, u.display_name, "session", str(data.get("c")))

    def _open(self) -> Principal:
        return Principal("anonymous", "reviewer", "anonymous", "open")

    def locked_out(self, keys: list[str]) -> None:
        """Raise 429 (with Retry-After) when one of ``keys`` is locked out after failed credentials."""
        wait = self.limiter.retry_after(keys)
        if wait is not None:
            raise HTTPException(429, f"too many failed logins or tokens; try again in {math.ceil(wait)} s",
                                headers={"Retry-After": str(math.ceil(wait))})

    def authorize(self, request: Request, role: str = "reviewer") -> Principal:
        """The caller of a JSON API request: 401 without valid credentials (a wrong bearer token counts
        towards the client's lock-out, 429 once locked out), 403 without ``role``, and the CSRF check of a
        state-changing request made with the session cookie."""
        bearer = bool(request.headers.get("authorization"))
        client = client_key(request)
        if bearer:
            self.locked_out([client])
        p = self.principal(request)
        if p is None:
            if not self.enabled and not bearer:
                p = self._open()
            else:
                if bearer:
                    self.limiter.fail([client], "bearer token")
                raise HTTPException(401, "login needed: send 'Authorization: Bearer <token>'",
                                    headers={"WWW-Authenticate": "Bearer"})
        if not p.can(role):
            raise HTTPException(403, f"this needs the {role} role; {p.name} is a {p.role}")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_csrf(request, p, None)
        return p

    def page_principal(self, request: Request, role: str = "reviewer") -> Principal:
        """The caller of an HTML page: like :meth:`authorize`, but a missing login (or a bearer token, which
        a browser never sends) raises :class:`LoginRequired`, which the app turns into a redirect to /login."""
        p = self.principal(request)
        if p is None or p.via == "bearer":
            if self.enabled:
                nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise LoginRequired(nxt)
            raise LoginRequired(request.url.path)  # open mode: /login hands out an anonymous session
        if not p.can(role):
            raise HTTPException(403, f"this needs the {role} role; {p.name} is a {p.role}")
        return p

    def check_csrf(self, request: Request, p: Principal, form_token: str | None) -> None:
        """Refuse (403) a state-changing request made with the session cookie without our CSRF token or
        from another origin; bearer-authenticated requests pass."""
        if p.via == "bearer":
            return
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin and origin != "null":
            want = f"{request.url.scheme}://{request.url.netloc}"
            o = urlsplit(origin)
            if f"{o.scheme}://{o.netloc}" != want:
                raise HTTPException(403, "cross-site request refused (Origin differs)")
        elif origin == "null":
            raise HTTPException(403, "cross-site request refused (opaque Origin)")
        sent = form_token or request.headers.get(CSRF_HEADER)
        if p.via == "open" and p.csrf is None and not origin:
            return  # login off, no browser session and no Origin: a script (curl, httpx), not a forged form
        if not sent or not p.csrf or not hmac.compare_digest(sent.encode(), p.csrf.encode()):
            raise HTTPException(403, "missing or wrong CSRF token")


def _session_id(data: dict[str, Any]) -> str:
    """A session's id: a hash of its per-session secret (the CSRF token), which is never stored."""
    return hashlib.sha256(f"{data.get('u')}\x00{data.get('c')}\x00{data.get('t')}".encode()).hexdigest()


def client_key(request: Request) -> str:
    """The rate-limit key of a request's client (its address)."""
    return f"client {request.client.host if request.client else 'unknown'}"


def safe_next(url: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/review"
    return url
