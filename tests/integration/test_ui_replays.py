"""The console's replay page follows a real ``pipeline replay``: killed midway, then resumed."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable

import psycopg
import pytest
from console import Client, Console
from harness import Pipeline
from test_replay import kill_midway, run_cli
from test_security_roles import PASSWORDS, url_for

from pipeline.store.outbox import enqueue
from pipeline.store.roles import create_roles

pytestmark = pytest.mark.integration


def _replays_page(client: Client, until: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        status, html, _h = client.get("/replays")
        assert status == 200, html[-2000:]
        if until(html):
            return html
        assert time.monotonic() < deadline, f"the replay page never showed {what}:\n{html}"
        time.sleep(0.5)


def test_replay_page_shows_progress_and_the_last_report(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline()
    create_roles(p.database_url, {"pipeline_operator": PASSWORDS["pipeline_operator"]})
    with psycopg.connect(p.database_url) as conn:
        ids = [
            enqueue(conn, "tier_elevation", "team-r", "postgres", f"db-{i}", {"target_tier": "pro"})
            for i in range(400)
        ]
    p.start()
    p.wait_terminal(ids)
    p.signal("projector", signal.SIGTERM)  # a replay needs the projection lock

    kill_midway(p, "--from-beginning")
    env = {**p.env(), "PIPELINE_DATABASE_URL": url_for(p.database_url, "pipeline_operator")}
    console = Console(env, p.logdir, "ui-replays")
    try:
        client = Client(console.url)
        html = _replays_page(client, lambda h: 'table id="replay-cursor"' in h, "the cursor")
        assert '<p id="lock">free' in html
        remaining = [int(n) for n in re.findall(r'<td class="num">(\d+)</td></tr>', html)]
        assert sum(remaining[:3]) > 0  # killed partway: something is left for the re-run
        assert 'id="last-report"' in html and "no replay of this projection" in html

        report = run_cli(p, "--from-beginning")  # resumes where the killed one stopped
        assert report["resumed"] and report["committed"]
        html = _replays_page(client, lambda h: "no incremental replay position" in h, "the end")
        assert '<td id="last-report-outcome">committed</td>' in html
        read, folded = report["events_read"], report["events_folded"]
        assert f"<td>{read} / {folded}</td>" in html
    finally:
        console.stop()
    with psycopg.connect(p.database_url) as conn:
        stored = conn.execute("SELECT report FROM replay_reports ORDER BY id").fetchall()
    assert [r[0]["events_read"] for r in stored] == [read]  # the killed run left no report
