"""The console's defences without a server: CSRF, sessions, redirects, headers, escaping."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import jinja2
import pytest
from starlette.requests import Request

from pipeline.domain.errors import ConfigError
from pipeline.ops.console import app as ui_app
from pipeline.ops.console import views
from pipeline.ops.console.pages import _local_path
from pipeline.ops.console.security import (
    CSRF_COOKIE,
    HEADERS,
    SESSION_COOKIE,
    Guard,
    SecurityHeaders,
)
from pipeline.runtime.config import Config
from pipeline.store.console import DeadLetterFilter

TOKEN = "a-console-token-of-some-length"
HOST = "127.0.0.1:9480"


def request(cookies: dict[str, str] | None = None, origin: str | None = None) -> Request:
    headers = [(b"host", HOST.encode())]
    if cookies:
        headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": "http",
            "path": "/retry",
            "query_string": b"",
            "headers": headers,
            "server": ("127.0.0.1", 9480),
        }
    )


def test_csrf_token_must_match_the_cookie_nonce_and_origin() -> None:
    guard = Guard(TOKEN)
    nonce, new = guard.csrf_nonce(request())
    assert new and len(nonce) == 43
    token = guard.csrf_token(nonce)
    assert guard.csrf_ok(request({CSRF_COOKIE: nonce}), token)
    assert guard.csrf_ok(request({CSRF_COOKIE: nonce}, origin=f"http://{HOST}"), token)
    # Planted defects, each refused: no cookie, another nonce, no token, a forged token,
    # a foreign origin, the opaque origin of a sandboxed or no-referrer context.
    assert not guard.csrf_ok(request(), token)
    assert not guard.csrf_ok(request({CSRF_COOKIE: "x" * 43}), token)
    assert not guard.csrf_ok(request({CSRF_COOKIE: nonce}), None)
    forged = token[:-1] + ("1" if token.endswith("0") else "0")
    assert not guard.csrf_ok(request({CSRF_COOKIE: nonce}), forged)
    assert not guard.csrf_ok(request({CSRF_COOKIE: nonce}, origin="http://evil.example"), token)
    assert not guard.csrf_ok(request({CSRF_COOKIE: nonce}, origin="null"), token)
    # Another console process (another key) does not accept this one's tokens.
    assert not Guard(TOKEN).csrf_ok(request({CSRF_COOKIE: nonce}), token)


def test_sessions_need_the_token_and_expire() -> None:
    assert Guard(None).read_only and Guard(None).login(TOKEN) is None
    guard = Guard(TOKEN)
    assert guard.login("wrong") is None
    assert guard.login(TOKEN[:-1]) is None
    session = guard.login(TOKEN)
    assert session is not None
    assert guard.is_operator(request({SESSION_COOKIE: session}))
    assert not guard.is_operator(request({SESSION_COOKIE: session + "x"}))
    assert not guard.is_operator(request())
    guard.sessions[session] = 0.0  # expired
    assert not guard.is_operator(request({SESSION_COOKIE: session}))


@pytest.mark.parametrize(
    ("asked", "went"),
    [
        ("/dead-letters?kind=x", "/dead-letters?kind=x"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        (None, "/"),
    ],
)
def test_login_redirects_only_within_the_console(asked: str | None, went: str) -> None:
    assert _local_path(asked) == went


def test_every_response_carries_the_security_headers() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    asyncio.run(SecurityHeaders(app)({"type": "http"}, receive, send))
    headers = dict(sent[0]["headers"])
    assert headers == dict(HEADERS)
    csp = headers[b"content-security-policy"].decode()
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert headers[b"x-content-type-options"] == b"nosniff"


HOSTILE = "<script>alert(1)</script>"


def _render_dead_letters(env: jinja2.Environment) -> str:
    row = {
        "id": 7,
        "kind": "tier_elevation",
        "team_id": HOSTILE,
        "resource_type": "postgres",
        "resource_id": "db",
        "attempts": 10,
        "failed_at": datetime(2026, 1, 1, tzinfo=UTC),
        "last_skip_reason": HOSTILE,
        "last_error": None,
        "dead_letter_reason": "max_attempts",
        "skip_reason_bucket": "other",
    }
    page = {"rows": [row], "next_after": None}
    return env.get_template("dead_letters.html").render(
        page=page,
        kinds=[],
        reasons=[],
        buckets=[],
        q={},
        first_page=True,
        csrf="c",
        operator=False,
        read_only=True,
        refresh_seconds=5,
        request=request(),
    )


def test_hostile_strings_are_escaped_and_the_check_catches_a_template_that_does_not() -> None:
    html = _render_dead_letters(views._env)
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The planted defect: the same templates without autoescape let the script through.
    unsafe = jinja2.Environment(loader=views._env.loader, autoescape=False)
    unsafe.filters.update(views._env.filters)
    assert HOSTILE in _render_dead_letters(unsafe)


def test_dead_letter_filter_puts_only_the_asked_conditions_in_the_statement() -> None:
    statement, params = DeadLetterFilter().query()
    text = statement.as_string(None)
    assert " AND " not in text.split("WHERE p.failed_at IS NOT NULL")[1].split("ORDER BY")[0]
    assert params == {} and "LIMIT 51" in text and "FROM pending_propagations p" in text
    since = datetime(2026, 1, 1, tzinfo=UTC)
    # By kind and time: the outbox's indexes, the kind compared as the enum (not as text,
    # which no index serves).
    statement, params = DeadLetterFilter(kind="tier_elevation", since=since, after=42).query()
    text = statement.as_string(None)
    assert "p.kind = %(kind)s::propagation_kind" in text and "p.failed_at >= %(since)s" in text
    assert (
        "(p.failed_at, p.id) < (SELECT failed_at, id FROM pending_propagations WHERE id = 42)"
        in text
    )
    assert params == {"kind": "tier_elevation", "since": since}
    # By skip bucket: walked from the audit's dead-letter index instead.
    statement, params = DeadLetterFilter(bucket="other", since=since, after=42, limit=10).query()
    text = statement.as_string(None)
    assert "FROM propagation_audit a" in text and "a.skip_reason_bucket = %(bucket)s" in text
    assert "a.occurred_at >= %(since)s" in text and "a.dead_letter_reason =" not in text
    assert "(a.occurred_at, a.propagation_id) < (SELECT" in text and "WHERE id = 42" in text
    assert "LIMIT 11" in text and params == {"bucket": "other", "since": since}


def test_ui_settings_keep_the_token_secret() -> None:
    cfg = Config.from_env({"PIPELINE_UI_TOKEN": TOKEN, "PIPELINE_UI_PORT": "9555"}, ())
    assert (cfg.ui_port, cfg.ui_host) == (9555, "127.0.0.1")
    assert TOKEN not in repr(cfg) and cfg.ui_token is not None and cfg.ui_token.reveal() == TOKEN
    with pytest.raises(ConfigError) as bad:
        Config.from_env({"PIPELINE_UI_TOKEN": "short"}, ())
    assert "PIPELINE_UI_TOKEN must be at least 16 characters" in str(bad.value)
    assert "short" not in str(bad.value)


def test_dead_letter_filters_refuse_bad_input_with_a_clear_message() -> None:
    from pipeline.ops.console.pages import BadInput, _choice, _int, _when

    assert _choice("", ("a",), "kind") is None and _choice("a", ("a",), "kind") == "a"
    with pytest.raises(BadInput, match=r"unknown kind '<x>'; choose one of a, b"):
        _choice("<x>", ("a", "b"), "kind")
    assert _when("2026-01-31T14:05", "since") == datetime(2026, 1, 31, 14, 5, tzinfo=UTC)
    with pytest.raises(BadInput, match="since must be a time like 2026-01-31T14:05"):
        _when("yesterday", "since")
    assert _int("42", "after") == 42
    with pytest.raises(BadInput, match="after must be a propagation id"):
        _int("1 OR 1=1", "after")


def _call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    cookies: str = "",
    host: str = HOST,
    timeout: float = 30,
) -> tuple[int, str]:
    """One request straight through the ASGI app (no server, no lifespan, no database)."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http", "method": method, "scheme": "http", "path": path,
        "query_string": query.encode(), "http_version": "1.1", "root_path": "",
        "headers": [(b"host", host.encode()), (b"cookie", cookies.encode()),
                    (b"content-type", b"application/x-www-form-urlencoded")],
        "server": ("127.0.0.1", 9480), "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], text.decode()


@pytest.mark.parametrize("bad", ["²", "١٢", "9" * 20])
def test_ids_that_are_not_bigints_get_a_clear_refusal(bad: str) -> None:
    from urllib.parse import quote

    from pipeline.ops.console.pages import BadInput, _int

    # str.isdigit() accepts superscripts and other scripts' digits, which int() then refuses
    # or reads as another number; and Postgres ids are bigints.
    with pytest.raises(BadInput, match="after must be a propagation id"):
        _int(bad, "after")
    app = ui_app.create_app(Config.from_env({"PIPELINE_UI_TOKEN": TOKEN}, ()))
    guard: Guard = app.state.console.guard
    nonce = "n" * 43
    session = guard.login(TOKEN)
    cookies = f"{CSRF_COOKIE}={nonce}; {SESSION_COOKIE}={session}"
    form = f"csrf={guard.csrf_token(nonce)}&id={quote(bad)}&operator=me&reason=why"
    status, page = _call(app, "POST", "/retry", form.encode(), cookies)
    assert (status, "Select 1 to 500 ids" in page) == (400, True), page


@pytest.mark.parametrize(
    ("operator", "reason", "says"),
    [
        ("o" * 101, "why", "the actor is 101 characters long; at most 100 are kept"),
        ("me", "r" * 501, "the reason is 501 characters long; at most 500 are kept"),
    ],
)
def test_a_retry_whose_name_or_reason_is_too_long_is_refused_whole(
    operator: str, reason: str, says: str
) -> None:
    # The form's maxlength is the browser's; a script posting past it gets a 400, not a
    # per-id refusal, and nothing is retried (the refusal comes before any database use).
    app = ui_app.create_app(Config.from_env({"PIPELINE_UI_TOKEN": TOKEN}, ()))
    guard: Guard = app.state.console.guard
    nonce = "n" * 43
    cookies = f"{CSRF_COOKIE}={nonce}; {SESSION_COOKIE}={guard.login(TOKEN)}"
    form = f"csrf={guard.csrf_token(nonce)}&id=7&operator={operator}&reason={reason}"
    status, page = _call(app, "POST", "/retry", form.encode(), cookies)
    assert (status, f"Nothing was retried: {says}." in page) == (400, True), page


def test_the_retry_form_and_the_store_keep_one_limit() -> None:
    from pipeline.ops.console.views import _env
    from pipeline.store import status

    html = _env.get_template("_retry_fields.html").render(read_only=False, operator=True)
    assert f'maxlength="{status.MAX_ACTOR_CHARS}"' in html
    assert f'maxlength="{status.MAX_REASON_CHARS}"' in html
    # and `pipeline retry` is refused the same way, before its transaction starts
    with pytest.raises(status.RetryRefused, match="at most 500 are kept"):
        status.retry(None, 7, reason="r" * 501, actor="me")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bind", "host", "served"),
    [
        ("127.0.0.1", HOST, True),
        ("127.0.0.1", "localhost:9480", True),
        # DNS rebinding: a page of attacker.example, its name re-pointed at 127.0.0.1, is
        # same-origin with the console and could read every page (and the CSRF token).
        ("127.0.0.1", "attacker.example:9480", False),
        ("127.0.0.1", "attacker.example", False),
        ("ops-console.internal", "ops-console.internal:9480", True),
        ("ops-console.internal", "attacker.example:9480", False),
        ("::1", "[::1]:9480", True),
        ("::1", "[::2]:9480", False),
        ("0.0.0.0", "any-name.example:9480", True),  # bound everywhere: any name reaches it
    ],
)
def test_only_the_consoles_own_host_names_are_served(bind: str, host: str, served: bool) -> None:
    app = ui_app.create_app(Config.from_env({"PIPELINE_UI_HOST": bind}, ()))
    status, page = _call(app, "GET", "/healthz", host=host)
    assert (status, page) == ((200, "ok\n") if served else (400, "Invalid host header")), page


@pytest.mark.parametrize("path", ["/replays", "/propagations/1?log=0"])
def test_pages_give_up_on_a_database_that_never_answers(path: str) -> None:
    import socket

    # A port that accepts TCP (the kernel completes the handshake) but never speaks: what a
    # hung or black-holed Postgres looks like. The page must say "data unavailable" in
    # seconds, like every other page, not hang on the connection (and hold a worker thread
    # the overview's measurements need).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {"PIPELINE_DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/d"}
        app = ui_app.create_app(Config.from_env(env, ()))
        status, page = _call(app, "GET", path, timeout=60)  # unbounded, it hangs past this
    assert (status, "Data unavailable" in page) == (503, True), page
