"""``pipeline ui``: serve the operator console."""

from __future__ import annotations

import argparse

from pipeline.domain.errors import PipelineError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.ops.options import add_command

    p = add_command(sub, "ui", cmd_ui)
    p.add_argument(
        "--lag-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between lag and overview measurements (default 5; longer when slow)",
    )


def cmd_ui(args: argparse.Namespace) -> int:
    """the operator console in the browser: overview, dead letters, retry, replays

    Serve the operator console on PIPELINE_UI_HOST:PIPELINE_UI_PORT (127.0.0.1:9480 by default).
    It is read-only unless PIPELINE_UI_TOKEN is set (at least 16 characters; prefer the variable
    to the flag, which shows in ps); retrying then needs that token. Run it as the
    pipeline_operator database role of `pipeline migrate --create-roles`: it needs nothing more."""

    try:
        import uvicorn

        from pipeline.ops.console.app import create_app
    except ImportError as exc:
        raise PipelineError(
            f"the console needs the ui extra ({exc.name} is missing): pip install 'pipeline[ui]'"
        ) from exc
    from pipeline.ops.options import load_config

    cfg = load_config(args, ("database_url", "kafka_bootstrap"))
    if args.lag_interval <= 0:
        raise PipelineError("--lag-interval must be positive")
    app = create_app(cfg, lag_interval=args.lag_interval)
    mode = "read-only" if cfg.ui_token is None else "actions need the token"
    print(f"pipeline ui: http://{cfg.ui_host}:{cfg.ui_port}/ ({mode})", flush=True)
    uvicorn.run(
        app,
        host=cfg.ui_host,
        port=cfg.ui_port,
        log_config=None,  # keep the JSON logs of logs.configure
        log_level="warning",
        server_header=False,
        proxy_headers=False,
    )
    return 0
