"""Who may reach the HTTP API at all: the Host header, an open API on the network, weak tokens.

- **Host header** (DNS rebinding): a page on another site whose name is re-pointed at 127.0.0.1 can
  make the browser send requests to the API with ``Host: evil.example``. Every request must name the
  bound address, ``localhost``, ``127.0.0.1``, ``[::1]`` or an ``[api] allowed_hosts`` entry
  (``*.example.org`` for a domain); any other gets 400 (Starlette's ``TrustedHostMiddleware``).
- **Open API**: without ``[auth] users`` or ``[api] token`` everybody is the anonymous reviewer. On
  a loopback address that suits one person at one machine; on any other address the service refuses
  to start unless ``[api] allow_open`` says that is wanted (then it logs a WARNING).
- **Weak tokens**: a token is the password of the login page and a bearer credential; fewer than 16
  characters, few distinct ones, a run such as ``abcdefgh``, or the user's own name is refused at
  start with the reason.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotation-only types
    from service.settings import Settings

__all__ = ["MIN_TOKEN_LENGTH", "RefusedSettings", "ApiBinding", "allowed_hosts", "api_exposed", "open_api_problem",
           "token_weakness"]

MIN_TOKEN_LENGTH = 16
_MIN_DISTINCT = 10
_MAX_RUN = 6  # characters in a row that follow each other (abcdef, 654321)
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class RefusedSettings(ValueError):
    """Settings the service refuses to start with (an open API on the network, a weak token)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name
        return False


class ApiBinding(Protocol):
    """What the Host checks read of ``[api]`` (:class:`service.settings.ApiSettings`): the bound address (and
    ``allowed_hosts``, the extra Host names answered, where it has them)."""

    @property
    def host(self) -> str: ...


def api_exposed(api: ApiBinding) -> bool:
    """Whether the API binds something other than loopback (``[api] host``)."""
    return not _is_loopback(str(api.host))


def allowed_hosts(api: ApiBinding) -> list[str]:
    """The Host header values (without port) the API answers: loopback names, the bound address unless
    it is a wildcard (0.0.0.0, ::), and ``[api] allowed_hosts``."""
    out = list(_LOOPBACK_NAMES)
    host = str(api.host)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        bound = None if ip.is_unspecified else (f"[{ip}]" if ip.version == 6 else str(ip))
    except ValueError:
        bound = host.lower()
    for h in [bound, *(str(h).lower() for h in getattr(api, "allowed_hosts", []) or [])]:
        if h and h not in out:
            out.append(h)
    return out


def open_api_problem(settings: Settings) -> tuple[str | None, str | None]:
    """(error, warning) about an API reachable from the network with no login: the error when it must not
    start, the warning when ``[api] allow_open`` says it may."""
    api = settings.api
    if not api.enabled or not api_exposed(api) or settings.auth.users or api.token:
        return None, None
    what = (f"the HTTP API on {api.host}:{api.port} has no [auth] users and no [api] token: anyone who reaches "
            "it can read the worklist and export, and record decisions that are written back to the PACS")
    if api.allow_open:
        return None, what + " ([api] allow_open = true)"
    return what + "; add users (or a token), bind 127.0.0.1, or set [api] allow_open = true if that is wanted", None


def token_weakness(token: str, name: str | None = None) -> str | None:
    """Why ``token`` is too weak to be a credential, or None. Generate one with
    ``python -c "import secrets; print(secrets.token_urlsafe(24))"``."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} random ones"
    if len(set(token)) < _MIN_DISTINCT:
        return f"has only {len(set(token))} distinct characters; use random ones"
    run = longest = 1
    for a, b in zip(token, token[1:], strict=False):
        run = run + 1 if abs(ord(b) - ord(a)) == 1 else 1
        longest = max(longest, run)
    if longest >= _MAX_RUN:
        return f"has {longest} consecutive characters in sequence; use random ones"
    if name and len(name) >= 3 and name.lower() in token.lower():
        return "contains the user's name; use random characters"
    return None
