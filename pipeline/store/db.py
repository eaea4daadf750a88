"""The store's one translation of driver errors, and the connections it hands out.

psycopg's errors stop here (``pipeline.domain.errors`` promises callers never see a driver
error): every store function runs its statements inside ``translated``, which re-raises a
``psycopg.Error`` as a ``StoreError`` that says what failed. Components and operator
commands open connections with ``connected``/``connect_async``/``session``, keep them typed as
``Conn``/``AsyncConn``, catch ``StoreError`` and never import psycopg.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg

from pipeline.domain.errors import PipelineError, StoreError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool  # the `ui` extra: imported only by its user

Conn: TypeAlias = psycopg.Connection[Any]
AsyncConn: TypeAlias = psycopg.AsyncConnection[Any]
Refine: TypeAlias = Callable[[psycopg.Error], PipelineError | None]
CANNOT_CONNECT = "cannot connect to Postgres"


class _Translated:
    """A context manager, not a generator: ``__exit__`` returns None, so type checkers know
    it never swallows an exception (a ``return`` inside the block needs no second one)."""

    __slots__ = ("_refine", "_what")

    def __init__(self, what: str, refine: Refine | None) -> None:
        self._what = what
        self._refine = refine

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, psycopg.Error):
            better = self._refine(exc) if self._refine else None
            raise (better or StoreError(f"{self._what}: {exc}")) from exc


def translated(what: str, refine: Refine | None = None) -> _Translated:
    """``with translated("claim failed"): ...``: a driver error becomes ``StoreError("claim
    failed: <driver message>")``, or what ``refine`` makes of it (a caller's mistake the
    database noticed); any other exception passes unchanged."""
    return _Translated(what, refine)


@contextmanager
def connected(url: str, *, what: str = CANNOT_CONNECT, **kwargs: Any) -> Iterator[Conn]:
    """A synchronous connection for the block, committed and closed after it; a driver error
    in connecting, in the block or at the commit is ``StoreError("<what>: ...")`` (errors the
    store functions called in the block raise keep their own message)."""
    with translated(what), psycopg.connect(url, **kwargs) as conn:
        yield conn


@contextmanager
def pooled(pool: ConnectionPool[Any], *, timeout: float, what: str) -> Iterator[Conn]:
    """A connection from ``pool`` for the block; the pool's own errors (a wait that timed out)
    are psycopg errors too, and become ``StoreError("<what>: ...")`` like the rest."""
    with translated(what), pool.connection(timeout=timeout) as conn:
        yield conn


async def connect_async(
    url: str, *, what: str = CANNOT_CONNECT, autocommit: bool = True, **kwargs: Any
) -> AsyncConn:
    with translated(what):
        return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, **kwargs)


@asynccontextmanager
async def session(
    url: str, *, what: str = CANNOT_CONNECT, **kwargs: Any
) -> AsyncIterator[AsyncConn]:
    """An autocommit connection for the block, closed after it (closing never raises, so a
    connection the server dropped ends the block with the error that noticed it)."""
    conn = await connect_async(url, what=what, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


class Tx:
    """The handle ``transaction`` yields: ``discard()`` rolls the block back at its end."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept = True

    def discard(self) -> None:
        self.kept = False


@asynccontextmanager
async def transaction(conn: AsyncConn, *, what: str, pipelined: bool = False) -> AsyncIterator[Tx]:
    """One transaction around the block: committed at its end unless discarded or it raised.

    ``pipelined``: in libpq's pipeline mode, so statements whose results nobody reads yet
    travel together: BEGIN with the first query, the last writes with COMMIT. A driver error
    then shows at the next read or at the end of the block, still as ``StoreError``.
    """
    tx = Tx()
    with translated(what):
        async with AsyncExitStack() as stack:
            if pipelined:
                await stack.enter_async_context(conn.pipeline())
            async with conn.transaction() as driver_tx:
                yield tx
                if not tx.kept:
                    raise psycopg.Rollback(driver_tx)


async def fetchone(
    conn: AsyncConn, query: Any, params: Sequence[Any] = (), *, what: str
) -> tuple[Any, ...] | None:
    with translated(what):
        cur = await conn.execute(query, params)
        return await cur.fetchone()


async def fetchall(
    conn: AsyncConn, query: Any, params: Sequence[Any] = (), *, what: str
) -> list[tuple[Any, ...]]:
    with translated(what):
        cur = await conn.execute(query, params)
        return await cur.fetchall()
