"""The console's defences: security headers, CSRF tokens and operator sessions.

* Every response carries a strict Content-Security-Policy (scripts, styles and data only from
  the console itself, no inline script, no framing), ``nosniff`` and no referrer.
* Every POST needs a CSRF token: a random nonce in an HttpOnly, SameSite=Strict cookie, and in
  the form its HMAC under a per-process key (a page on another origin can neither read the
  cookie nor compute the MAC); a foreign ``Origin`` header is refused as well.
* Only the console's own host names are served (``allowed_hosts``): a DNS-rebinding page,
  its name re-pointed at 127.0.0.1, would otherwise be same-origin with the console.
* Actions (retry) need an operator session, opened by posting ``PIPELINE_UI_TOKEN`` to
  ``/login``; without a configured token the console is read-only and no session can exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "pipeline_ui_csrf"
SESSION_COOKIE = "pipeline_ui_session"
SESSION_SECONDS = 8 * 3600

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form
    # posts, which the CSRF check (rightly) refuses.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding ``HEADERS`` to every HTTP response (errors and assets too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _v in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def allowed_hosts(bind: str) -> frozenset[str] | None:
    """Host names (no port) the console answers to when bound to ``bind``; None: any.

    Bound to every interface, the operator chose to reach it by whatever name the network
    gives it; bound to one address, only that address and the loopback names.
    """
    if bind in WILDCARD_BINDS:
        return None
    return frozenset({bind.lower().strip("[]"), *LOOPBACK_NAMES})


def host_name(header: str) -> str:
    """The name of a Host header without its port: ``[::1]:9480`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    return header.partition(":")[0].lower()


class HostCheck:
    """ASGI middleware answering 400 to a Host header that is not the console's own."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is not None and scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                response = Response("Invalid host header", 400, media_type="text/plain")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class Guard:
    """CSRF and session checks for one console process."""

    token: str | None  # PIPELINE_UI_TOKEN, revealed; None = read-only
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: dict[str, float] = field(default_factory=dict)  # session id -> expiry (monotonic)

    @property
    def read_only(self) -> bool:
        return self.token is None

    # --- CSRF ---------------------------------------------------------------------------

    def csrf_nonce(self, request: Request) -> tuple[str, bool]:
        """The request's CSRF nonce, and whether it is new (the response must set it)."""
        nonce = request.cookies.get(CSRF_COOKIE)
        if nonce and len(nonce) == 43:
            return nonce, False
        return secrets.token_urlsafe(32), True

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self.key, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, submitted: str | None) -> bool:
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            return False
        nonce = request.cookies.get(CSRF_COOKIE)
        if not nonce or not submitted:
            return False
        return hmac.compare_digest(self.csrf_token(nonce), submitted)

    @staticmethod
    def set_csrf_cookie(response: Response, nonce: str) -> None:
        response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="strict", path="/")

    # --- sessions -----------------------------------------------------------------------

    def login(self, submitted: str) -> str | None:
        """A new session id when ``submitted`` is the token, else None."""
        if self.token is None or not hmac.compare_digest(submitted.encode(), self.token.encode()):
            return None
        now = time.monotonic()
        self.sessions = {s: t for s, t in self.sessions.items() if t > now}
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_SECONDS
        return session

    def logout(self, request: Request) -> None:
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def is_operator(self, request: Request) -> bool:
        if self.token is None:
            return False
        expiry = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        return expiry is not None and expiry > time.monotonic()

    @staticmethod
    def set_session_cookie(response: Response, session: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/",
        )


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"
