"""The example billing consumer, killed and restarted during a run, counts exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from harness import Pipeline
from test_end_to_end import RULES, seed_workload

from pipeline.devtools.fake_provisioner import FakeProvisioner

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "billing_consumer.py"


def test_billing_consumer_counts_applied_elevations_exactly_once(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner, tmp_path: Path
) -> None:
    provisioner.set_rules(RULES)
    p = make_pipeline()
    by_id, _ordered = seed_workload(p.database_url)
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
        deadline = time.monotonic() + 180
        while p.count_terminal() < len(by_id) // share:
            assert time.monotonic() < deadline, p.logs()
            p.assert_running()
            time.sleep(0.05)
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
