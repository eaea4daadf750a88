"""The console's ASGI application: state (pool, lag monitor, guard), rendering, errors.

Pages live in ``pages.py``. Data comes from the CLI's own stores, so a page and the command
it mirrors cannot disagree; the console never holds SQL of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.domain.errors import PipelineError
from pipeline.ops.console.security import Guard, HostCheck, SecurityHeaders, allowed_hosts
from pipeline.ops.console.snapshots import Snapshotter
from pipeline.ops.console.views import ConsoleState, problem
from pipeline.ops.replay import CURSOR_SUFFIX as REPLAY_CURSOR_SUFFIX
from pipeline.runtime import logs
from pipeline.runtime.config import Config

_log = logs.get("ui")


async def _pipeline_error(request: Request, exc: Exception) -> Response:
    # Driver messages can name hosts, ports and users: they go to the log, never to a page.
    logs.event(_log, "page_failed", path=request.url.path, error=str(exc)[:500])
    return problem(
        request,
        503,
        "Data unavailable",
        "The database or the broker could not be read. The console's log has the details.",
    )


def create_app(cfg: Config, *, lag_interval: float = 5.0) -> Starlette:
    """The console; ``lag_interval`` paces the lag and overview measurements."""
    from pipeline.components import lag
    from pipeline.ops.console import pages
    from pipeline.runtime.metrics import Metrics

    sources = [
        *lag.pipeline_sources(
            cfg.processor_group, cfg.commands_topic, cfg.projection_name, cfg.outcomes_topic
        ),
        # A running (or interrupted) replay keeps its position as checkpoints of this name.
        lag.Source(cfg.projection_name + REPLAY_CURSOR_SUFFIX, cfg.outcomes_topic, "postgres"),
    ]
    monitor = lag.LagMonitor(
        client_kwargs=cfg.kafka_client_kwargs(),
        database_url=cfg.database_url,
        sources=sources,
        metrics=Metrics(()),  # a private registry: the console serves no /metrics
        interval=lag_interval,
        outbox=True,
    )
    pool: ConnectionPool[Any] = ConnectionPool(
        cfg.database_url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "application_name": "pipeline ui"},
        open=False,
    )
    console = ConsoleState(
        cfg,
        Guard(cfg.ui_token.reveal() if cfg.ui_token else None),
        pool,
        monitor,
        Snapshotter(pool, lag_interval),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No waiting for the database: a console started while Postgres is down serves the
        # "data unavailable" page and recovers by itself when it comes back.
        pool.open(wait=False)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(monitor.run(stop)),
            asyncio.create_task(console.snapshots.run(stop)),
        ]
        logs.event(_log, "started", read_only=console.guard.read_only)
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await asyncio.to_thread(pool.close)

    app = Starlette(
        routes=[
            *pages.routes(),
            Mount(
                "/static", StaticFiles(packages=[("pipeline.ops.console", "static")]), name="static"
            ),
            Route("/healthz", _healthz),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(HostCheck, allowed=allowed_hosts(cfg.ui_host)),
        ],
        exception_handlers={PipelineError: _pipeline_error},
        lifespan=lifespan,
    )
    app.state.console = console
    return app


async def _healthz(_request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")
