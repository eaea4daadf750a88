"""The example billing consumer, killed and restarted during a run, counts exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from harness import Pipeline
from test_end_to_end import seeded

from pipeline.devtools.fake_provisioner import FakeProvisioner

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "billing_consumer.py"


def test_billing_consumer_counts_applied_elevations_exactly_once(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner, tmp_path: Path
) -> None:
    p, by_id, _ordered = seeded(make_pipeline, provisioner)
    cmd = [
        sys.executable,
        str(EXAMPLE),
        "--bootstrap",
        p.bootstrap,
        "--topic",
        f"{p.prefix}propagation-outcomes",
        "--state",
        str(tmp_path / "billing.sqlite"),
    ]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    p.start()
    consumer = start()
    for share in (3, 2):  # killed twice while outcomes are still arriving
        p.wait_count_terminal(len(by_id) // share, timeout=180)
        assert consumer.poll() is None
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=30)
        consumer = start()
    p.wait_terminal(list(by_id), timeout=240)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(timeout=30) == 0
    done = subprocess.run([*cmd, "--until-end"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    with psycopg.connect(p.database_url) as conn:
        expected = dict(
            conn.execute(
                "SELECT team_id, count(*) FROM pending_propagations"
                " WHERE kind = 'tier_elevation' AND applied_at IS NOT NULL GROUP BY team_id"
            ).fetchall()
        )
    assert report["applied_tier_elevations"] == expected
    assert report["total"] == sum(expected.values()) > 0
