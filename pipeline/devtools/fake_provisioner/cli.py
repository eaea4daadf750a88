"""`pipeline fake-provisioner`: serve the fake until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
import time
from typing import Any

from pipeline.domain.events import iso, utcnow
from pipeline.runtime.gc_tuning import freeze_after_startup

FREEZE_EVERY_S = 1.0

_HELP = """\
Serve schemas/provisioner.proto with scripted failures (for tests, demo and bench).

Rules (--rules FILE, or PUT /rules on the admin port) are a JSON list; the first rule that
matches a call and fires decides it, no rule means the call is applied. Fields:
  match       fnmatch glob over resource_id            (default "*")
  method      RegradeResource|SuspendResource|ResumeResource, null = all
  action      ok | skip | error | apply_then_error     (default "ok")
  code        gRPC status name for error actions       (default "UNAVAILABLE")
  reason      skip reason text
  latency_ms  delay before answering, any action       (default 0)
  rate        probability the rule fires, seeded       (default 1.0)
  times       fire only for the first N calls per idempotency key (default null = always)

Example:
  [{"match": "db-flaky-*", "action": "error", "code": "UNAVAILABLE", "times": 2},
   {"match": "db-legacy-*", "action": "skip", "reason": "legacy resource"},
   {"match": "db-lost-*", "action": "apply_then_error", "times": 1},
   {"method": "SuspendResource", "action": "error", "code": "INVALID_ARGUMENT"},
   {"action": "ok", "latency_ms": 5}]

An idempotency key is applied once; later calls reply applied=true without a new effect
(error rules still answer with their error). Admin endpoint (--admin-port): GET /effects,
GET /calls, GET /rules, PUT /rules, POST /reset.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-provisioner",
        help="serve a fake gRPC provisioner with failure-injection rules",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051)")
    p.add_argument("--admin-port", type=int, default=0, help="HTTP admin port (default 0 = off)")
    p.add_argument("--rules", metavar="FILE", help="JSON list of rules (see above)")
    p.add_argument("--seed", type=int, default=0, help="seed for rule rates (default 0)")
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="answer ApplyBatch with UNIMPLEMENTED, like a provisioner with single calls only",
    )
    p.add_argument("--tls-cert", help="server certificate (PEM); enables TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA (PEM) for client certificates; makes them required")
    p.set_defaults(func=_serve)


def _log(event: str, **fields_: Any) -> None:
    line = {"ts": iso(utcnow()), "component": "fake-provisioner", "event": event, **fields_}
    print(json.dumps(line), flush=True)


def _serve(args: argparse.Namespace) -> int:
    # Here, not at the top: build_parser imports this module, and --help loads no grpc.
    from pipeline.devtools.fake_provisioner.rules import load_rules
    from pipeline.devtools.fake_provisioner.server import FakeProvisioner

    rules = load_rules(args.rules) if args.rules else []
    fake = FakeProvisioner(rules, seed=args.seed, batch_enabled=not args.no_batch)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address = fake.start(
            args.host,
            args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
            admin_port=args.admin_port or None,
        )
    except RuntimeError as exc:  # grpc reports a busy port as RuntimeError
        print(f"pipeline fake-provisioner: cannot listen: {exc}", file=sys.stderr)
        return 1
    _log(
        "started",
        address=address,
        admin_url=fake.admin_url,
        rules=len(rules),
        seed=args.seed,
        tls=bool(args.tls_cert),
    )
    # The fake keeps a record of every call for its whole life: freezing them out of the
    # collector's scans keeps full collections from growing with them (a bench run saw
    # 290 ms pauses, every one of them latency for the worker waiting on an answer).
    freeze_after_startup()
    last_freeze = time.monotonic()
    # A timeout keeps the main thread returning to the interpreter so signals are handled.
    while not stop.wait(0.5):
        if time.monotonic() - last_freeze >= FREEZE_EVERY_S:
            gc.freeze()
            last_freeze = time.monotonic()
    calls, applied = len(fake.calls()), len(fake.applied_keys())
    fake.stop()
    _log("stopped", address=address, calls=calls, applied_keys=applied)
    return 0
