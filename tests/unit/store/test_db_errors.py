"""The store's one driver-error translation: what callers above the store see."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pipeline.domain.errors import InvalidPropagation, StoreError
from pipeline.store.db import connect_async, connected, translated


def test_a_driver_error_becomes_a_store_error_that_says_what_failed() -> None:
    original = psycopg.OperationalError("server closed the connection")
    with pytest.raises(StoreError) as raised, translated("claim failed"):
        raise original
    assert str(raised.value) == "claim failed: server closed the connection"
    assert raised.value.__cause__ is original


def test_other_errors_pass_unchanged() -> None:
    with pytest.raises(KeyError), translated("claim failed"):
        raise KeyError("not a driver error")
    with pytest.raises(StoreError, match=r"^stamp failed: inner$"), translated("outer failed"):
        raise StoreError("stamp failed: inner")  # a store call's own message is kept


def test_refine_turns_a_callers_mistake_into_its_own_error() -> None:
    def refine(exc: psycopg.Error) -> InvalidPropagation | None:
        return InvalidPropagation("bad kind") if isinstance(exc, psycopg.DataError) else None

    with (
        pytest.raises(InvalidPropagation, match=r"^bad kind$"),
        translated("enqueue failed", refine),
    ):
        raise psycopg.DataError("invalid input value for enum")
    with (
        pytest.raises(StoreError, match=r"^enqueue failed: gone$"),
        translated("enqueue failed", refine),
    ):
        raise psycopg.OperationalError("gone")


def test_a_refused_connection_says_so_without_a_driver_type() -> None:
    url = "postgresql://u@127.0.0.1:1/x?connect_timeout=2"  # nothing listens on port 1
    with pytest.raises(StoreError, match=r"^cannot connect to Postgres: connection failed"):
        asyncio.run(connect_async(url))
    with (
        pytest.raises(StoreError, match=r"^cannot retry: connection failed"),
        connected(url, what="cannot retry"),
    ):
        pass  # pragma: no cover
