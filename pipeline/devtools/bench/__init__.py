"""``pipeline bench``: throughput, latency, per-stage rates and raw limits of the pipeline,
and the same job done by pgqueuer and procrastinate, measured in one run on a real stack.

Modules: ``cli`` (the subcommand), ``run`` (orchestration), ``peers`` (pgqueuer and
procrastinate), ``raw`` (raw limits), ``procstats`` (CPU and RSS), ``profile`` (py-spy),
``report`` (table and JSON), ``store`` (every SQL statement the bench runs).
"""

from pipeline.devtools.bench.cli import add_parser

__all__ = ["add_parser"]
