"""The console's pages and actions. Each one reads through the CLI's stores.

Synchronous endpoints run in Starlette's thread pool on the console's connection pool; the
propagation and replay pages are async because their sources (the log, the lock holder) are.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pipeline.domain.classify import BUCKETS
from pipeline.domain.errors import PipelineError, StoreError
from pipeline.domain.events import DeadLetterReason
from pipeline.domain.rowstate import STATES
from pipeline.ops.console.security import SESSION_COOKIE, Guard
from pipeline.ops.console.snapshots import DB_WAIT_SECONDS
from pipeline.ops.console.views import ConsoleState, problem, render, state
from pipeline.ops.replay import CURSOR_SUFFIX as REPLAY_CURSOR_SUFFIX
from pipeline.runtime import logs
from pipeline.store import console as console_store
from pipeline.store import status as status_store
from pipeline.store.db import Conn, pooled, session

_log = logs.get("ui")
PAGE_SIZE = 50
MAX_RETRY_IDS = 500  # one form post; more is a replay's job, not a click's
LOG_SCAN_SECONDS = 10.0  # the propagation page's log scan gives up after this
MAX_ID = 2**63 - 1  # ids are bigints


def _is_id(value: str) -> bool:
    # Not str.isdigit() alone: it accepts "²" (int() refuses it) and other scripts' digits.
    return value.isascii() and value.isdigit() and int(value) <= MAX_ID


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/overview/live", overview_live),
        Route("/dead-letters", dead_letters),
        Route("/retry", retry, methods=["POST"]),
        Route("/propagations", search),
        Route("/propagations/{id:int}", propagation),
        Route("/replays", replays),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _conn(st: ConsoleState) -> contextlib.AbstractContextManager[Conn]:
    return pooled(st.pool, timeout=DB_WAIT_SECONDS, what="console database connection failed")


# --- overview -----------------------------------------------------------------------------


def _overview(request: Request) -> dict[str, Any]:
    st = state(request)
    snap = st.snapshots.last or st.snapshots.take()  # the first view may precede the first
    report, series = snap.status, snap.outcomes
    lag = st.lag.last
    cursor = st.cfg.projection_name + REPLAY_CURSOR_SUFFIX
    return {
        "snapshot": snap,
        "snapshot_failing": st.snapshots.failing,
        "report": report,
        "totals": report.totals(),
        "states": STATES,
        "lag": lag,
        "lag_rows": [p for p in lag.partitions if p.group != cursor] if lag else [],
        "lag_groups": sorted({p.group for p in lag.partitions if p.group != cursor}) if lag else [],
        "chart": {
            "x": [int(m.timestamp()) for m in series.minutes],
            "series": [{"label": o, "data": d} for o, d in series.counts.items()],
        },
        "last_hour": {o: sum(d) for o, d in series.counts.items()},
    }


def overview(request: Request) -> Response:
    return render(request, "overview.html", _overview(request))


def overview_live(request: Request) -> Response:
    return render(request, "_overview_live.html", _overview(request))


# --- dead letters -------------------------------------------------------------------------


class BadInput(PipelineError):
    pass


def _choice(value: str | None, allowed: tuple[str, ...] | list[str], name: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise BadInput(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _when(value: str | None, name: str) -> datetime | None:
    """A ``datetime-local`` value (read as UTC) or an ISO time with offset."""
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadInput(f"{name} must be a time like 2026-01-31T14:05 (UTC)") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _int(value: str | None, name: str) -> int | None:
    if not value:
        return None
    if not _is_id(value):
        raise BadInput(f"{name} must be a propagation id (digits)")
    return int(value)


def dead_letters(request: Request) -> Response:
    from pipeline.store.outbox import kind_enum_values

    st = state(request)
    q = request.query_params
    reasons = tuple(r.value for r in DeadLetterReason)
    with _conn(st) as conn:
        kinds = kind_enum_values(conn)
        try:
            f = console_store.DeadLetterFilter(
                kind=_choice(q.get("kind"), kinds, "kind"),
                reason=_choice(q.get("reason"), reasons, "reason"),
                bucket=_choice(q.get("bucket"), BUCKETS, "skip bucket"),
                since=_when(q.get("since"), "since"),
                until=_when(q.get("until"), "until"),
                after=_int(q.get("after"), "after"),
                limit=PAGE_SIZE,
            )
        except BadInput as exc:
            return problem(request, 400, "Bad filter", str(exc))
        page = console_store.dead_letters(conn, f)
    params = {k: v for k, v in q.items() if k != "after" and v}
    return render(
        request,
        "dead_letters.html",
        {
            "page": page,
            "kinds": kinds,
            "reasons": reasons,
            "buckets": BUCKETS,
            "q": params,
            "first_page": f.after is None,
        },
    )


# --- retry --------------------------------------------------------------------------------


def _refusal(guard: Guard, request: Request, csrf: str | None) -> tuple[str, str] | None:
    if not guard.csrf_ok(request, csrf):
        return "Refused", "The form's CSRF token is missing or stale: reload the page and retry."
    if guard.read_only:
        return "Read-only console", "Retries need PIPELINE_UI_TOKEN set where the console runs."
    if not guard.is_operator(request):
        return "Token required", "Retries need the console token: sign in with it first."
    return None


async def retry(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    refused = _refusal(st.guard, request, _field(form.get("csrf")))
    if refused:
        logs.event(_log, "retry_refused", why=refused[0])
        return problem(request, 403, *refused)
    raw_ids = [str(v) for v in form.getlist("id")]
    operator = (_field(form.get("operator")) or "").strip()
    reason = (_field(form.get("reason")) or "").strip()
    if not raw_ids or not all(_is_id(i) for i in raw_ids) or len(raw_ids) > MAX_RETRY_IDS:
        return problem(request, 400, "Nothing to retry", f"Select 1 to {MAX_RETRY_IDS} ids.")
    if not operator or not reason:
        return problem(request, 400, "Who and why", "A retry needs your name and a reason.")
    too_long = status_store.note_problem(operator, reason)
    if too_long is not None:
        return problem(request, 400, "Too long", f"Nothing was retried: {too_long}.")
    ids = sorted({int(i) for i in raw_ids})
    force = _field(form.get("force")) == "on"
    results = await run_in_threadpool(_retry_each, st, ids, operator, reason, force)
    return render(request, "retried.html", {"results": results})


def _field(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _retry_each(
    st: ConsoleState, ids: list[int], operator: str, reason: str, force: bool
) -> list[tuple[int, bool, str]]:
    """``pipeline retry``'s own function for each id, one transaction each."""
    out: list[tuple[int, bool, str]] = []
    with _conn(st) as conn:
        for i in ids:
            try:
                r = status_store.retry(conn, i, reason=reason, actor=operator, force=force)
            except status_store.RetryRefused as exc:
                out.append((i, False, str(exc)))
                continue
            except StoreError as exc:
                logs.event(_log, "retry_failed", id=i, error=str(exc)[:500])
                out.append((i, False, "the database refused the retry (see the console's log)"))
                continue
            logs.event(_log, "retried", id=i, actor=operator, action_id=r.action_id)
            budget = ", fresh attempt budget" if r.action == "retry_dead_lettered" else ""
            out.append(
                (i, True, f"attempt {r.next_attempt} due now{budget} (audit #{r.action_id})")
            )
    return out


# --- propagations -------------------------------------------------------------------------


def search(request: Request) -> Response:
    text = request.query_params.get("q", "").strip()
    if _is_id(text):
        return RedirectResponse(f"/propagations/{int(text)}", status_code=303)
    rows: list[dict[str, Any]] = []
    if text:
        with _conn(state(request)) as conn:
            rows = console_store.search(conn, text, PAGE_SIZE)
    return render(request, "search.html", {"text": text, "rows": rows})


async def propagation(request: Request) -> Response:
    from pipeline.ops.history import load_story

    st = state(request)
    pid: int = request.path_params["id"]
    with_log = request.query_params.get("log") != "0"
    log_error = False
    try:
        # A broker that is down (or a huge scan) must not hold the page: Postgres alone then.
        story = await asyncio.wait_for(
            load_story(st.cfg, pid, scan_limit=st.log_scan_limit, with_log=with_log),
            LOG_SCAN_SECONDS,
        )
    except (PipelineError, TimeoutError) as exc:
        if not with_log or isinstance(exc, StoreError):
            raise
        logs.event(_log, "log_scan_failed", id=pid, error=str(exc)[:500] or "timed out")
        log_error = True
        story = await load_story(st.cfg, pid, scan_limit=0, with_log=False)
    if story is None:
        return problem(request, 404, "Not found", f"There is no propagation {pid}.")

    def actions() -> list[status_store.OperatorAction]:
        with _conn(st) as conn:
            return status_store.operator_actions(conn, pid)

    row = story.row
    open_ = row["applied_at"] is None
    return render(
        request,
        "propagation.html",
        {
            "row": row,
            "story": story,
            "actions": await run_in_threadpool(actions),
            "with_log": with_log,
            "log_error": log_error,
            "retryable": open_,
            "state": "applied"
            if row["applied_at"]
            else "dead_lettered"
            if row["failed_at"]
            else "open",
        },
    )


# --- replays ------------------------------------------------------------------------------


async def replays(request: Request) -> Response:
    from pipeline.store.replay import ReplayStore

    st = state(request)
    # Bounded like the pool's waits: a Postgres that accepts but never answers must give
    # "data unavailable", not a page that hangs until the TCP timeout.
    async with session(
        st.cfg.database_url,
        what="cannot connect for the replay page",
        application_name="pipeline ui",
        connect_timeout=int(DB_WAIT_SECONDS),
    ) as conn:
        rstore = ReplayStore(conn, st.cfg.projection_name)
        holder = await rstore.lock_holder()
        last = await rstore.last_report()
    lag = st.lag.last
    cursor = st.cfg.projection_name + REPLAY_CURSOR_SUFFIX
    rows = [p for p in lag.partitions if p.group == cursor] if lag else []
    live = [p for p in lag.partitions if p.group == st.cfg.projection_name] if lag else []
    return render(
        request,
        "replays.html",
        {
            "holder": holder,
            "cursor": [p for p in rows if p.committed is not None],
            "live": live,
            "lag": lag,
            "projection": st.cfg.projection_name,
            "last": last,
        },
    )


# --- sessions -----------------------------------------------------------------------------


def _local_path(value: str | None) -> str:
    # Only paths of this console: never an open redirect to another site.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def login(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    if not st.guard.csrf_ok(request, _field(form.get("csrf"))):
        return problem(request, 403, "Refused", "The form's CSRF token is missing or stale.")
    if st.guard.read_only:
        return problem(request, 403, "Read-only console", "PIPELINE_UI_TOKEN is not set.")
    session = st.guard.login(_field(form.get("token")) or "")
    if session is None:
        await asyncio.sleep(0.5)  # slows guessing down
        logs.event(_log, "login_refused")
        return problem(request, 403, "Wrong token", "That is not the console's token.")
    response = RedirectResponse(_local_path(_field(form.get("next"))), status_code=303)
    st.guard.set_session_cookie(response, session)
    return response


async def logout(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    if not st.guard.csrf_ok(request, _field(form.get("csrf"))):
        return problem(request, 403, "Refused", "The form's CSRF token is missing or stale.")
    st.guard.logout(request)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
