"""What every console page shares: the templates, the per-app state, and page rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from pipeline.ops.console.security import Guard
from pipeline.ops.console.snapshots import Snapshotter
from pipeline.runtime.config import Config
from pipeline.store.status import MAX_ACTOR_CHARS, MAX_REASON_CHARS

if TYPE_CHECKING:
    from pipeline.components.lag import LagMonitor

LOG_SCAN_LIMIT = 200_000  # messages per topic the propagation page reads at most
REFRESH_SECONDS = 5

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.ops.console", "templates"),
    autoescape=True,  # every value is HTML-escaped unless a template says otherwise
    undefined=jinja2.StrictUndefined,
)
# JSON to read, as plain text (autoescape then escapes it); ``tojson`` is for data blocks.
_env.filters["json_text"] = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)
_env.globals["note_limits"] = {"actor": MAX_ACTOR_CHARS, "reason": MAX_REASON_CHARS}
_templates = Jinja2Templates(env=_env)


@dataclass
class ConsoleState:
    cfg: Config
    guard: Guard
    pool: ConnectionPool[Any]
    lag: LagMonitor  # .last is the latest report (None until the first measurement)
    snapshots: Snapshotter  # the overview's counts and chart, measured in the background
    log_scan_limit: int = LOG_SCAN_LIMIT


def state(request: Request) -> ConsoleState:
    s: ConsoleState = request.app.state.console
    return s


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    """A page with the CSRF token, session state and navigation every template expects."""
    st = state(request)
    nonce, new = st.guard.csrf_nonce(request)
    response = _templates.TemplateResponse(
        request,
        name,
        {
            **ctx,
            "csrf": st.guard.csrf_token(nonce),
            "operator": st.guard.is_operator(request),
            "read_only": st.guard.read_only,
            "refresh_seconds": REFRESH_SECONDS,
        },
        status_code=status,
    )
    if new:
        st.guard.set_csrf_cookie(response, nonce)
    response.headers["cache-control"] = "no-store"
    return response


def problem(request: Request, status: int, title: str, detail: str) -> Response:
    return render(request, "problem.html", {"title": title, "detail": detail}, status)
