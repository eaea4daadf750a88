"""Ports and the service registry, without starting any service."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.postgres import database_url, mask_url
from pipeline.domain.errors import StackError


def test_free_port_is_bindable_on_localhost() -> None:
    port = procs.free_port()

    assert 1024 <= port <= 65535
    assert procs.port_is_free(port)


def test_a_listening_port_is_not_free_and_not_picked() -> None:
    with socket.socket() as s:
        s.bind((procs.LOCALHOST, 0))
        s.listen()
        taken = s.getsockname()[1]

        assert not procs.port_is_free(taken)
        assert procs.port_accepts(taken)
        assert procs.pick_port(taken, required=False) != taken
        with pytest.raises(StackError, match=str(taken)):
            procs.pick_port(taken, required=True)


def test_pick_port_keeps_a_free_preferred_port() -> None:
    port = procs.free_port()

    assert procs.pick_port(port, required=True) == port


def test_pick_port_avoids_ports_already_taken_by_the_caller() -> None:
    port = procs.free_port()

    assert procs.pick_port(port, required=False, taken=[port]) != port


def test_registry_round_trip(tmp_path: Path) -> None:
    rec = procs.ServiceRecord(
        pid=123, kind="kafka", port=9092, owner_pid=None, started_at=1.5, signature="x"
    )

    path = procs.register(tmp_path / "run", rec)

    assert path.name == "kafka-123.json"
    assert procs.read_records(tmp_path / "run") == [rec]
    procs.unregister(tmp_path / "run", "kafka", 123)
    assert procs.read_records(tmp_path / "run") == []


def test_registry_drops_unreadable_records(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "alien.json").write_text('{"pid": 1}')

    assert procs.read_records(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_missing_run_dir_has_no_records(tmp_path: Path) -> None:
    assert procs.read_records(tmp_path / "nope") == []
    assert procs.reap_stale(tmp_path / "nope") == []


def test_reap_keeps_dev_owned_records_of_live_services(tmp_path: Path) -> None:
    # Our own pid stands in for a live service: dev-owned, so it must never be touched.
    rec = procs.ServiceRecord(os.getpid(), "kafka", 1, None, 0.0, "")
    procs.register(tmp_path, rec)

    assert procs.reap_stale(tmp_path) == []
    assert procs.read_records(tmp_path) == [rec]


def test_reap_forgets_records_of_services_that_are_gone(tmp_path: Path) -> None:
    rec = procs.ServiceRecord(2**22 + 12345, "kafka", 1, None, 0.0, "sig")
    procs.register(tmp_path, rec)

    assert procs.reap_stale(tmp_path) == [rec]
    assert procs.read_records(tmp_path) == []


def test_pid_alive() -> None:
    assert procs.pid_alive(os.getpid())
    assert not procs.pid_alive(2**22 + 12345)


def test_tail_of_a_missing_log_says_so(tmp_path: Path) -> None:
    assert "no log" in procs.tail(tmp_path / "missing.log")


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))

    assert procs.tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        ("host=h password=s3cret dbname=x", "host=h password=*** dbname=x"),
        ("postgresql://u:s3cret@[::1/db", "postgresql://*** (unparseable URL, not shown)"),
    ],
)
def test_mask_url_hides_passwords(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_database_url_swaps_the_database() -> None:
    assert database_url("postgresql://u@h:1/postgres?sslmode=disable", "t_1") == (
        "postgresql://u@h:1/t_1?sslmode=disable"
    )
    assert "dbname=t_1" in database_url("host=h dbname=postgres", "t_1")
