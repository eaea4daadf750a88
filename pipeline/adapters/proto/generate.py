"""Regenerate the provisioner stubs from the packaged ``provisioner.proto``, or check them.

Usage::

    python -m pipeline.adapters.proto.generate          # rewrite provisioner_pb2*.py(i) here
    python -m pipeline.adapters.proto.generate --check  # exit 1 when the committed files are stale

The generated code is committed (so installing the package needs no grpcio-tools), which is why
a freshness check exists: a proto edit without regeneration fails the unit tests. The proto is
read from the package (``pipeline/schemas``, a checked copy of the published ``schemas/``), so the
check works wherever the package is installed, not only in a source tree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

PROTO = resources.files("pipeline") / "schemas" / "provisioner.proto"
OUT_DIR = Path(__file__).resolve().parent
GENERATED = ("provisioner_pb2.py", "provisioner_pb2.pyi", "provisioner_pb2_grpc.py")

# protoc emits a top-level import that only works when pipeline/adapters/proto is on sys.path; the
# package-qualified import makes the stubs importable as pipeline.adapters.proto.*.
_GRPC_IMPORT = "import provisioner_pb2 as provisioner__pb2"
_GRPC_IMPORT_FIXED = "from pipeline.adapters.proto import provisioner_pb2 as provisioner__pb2"
# pyproject excludes only *_pb2*.py from ruff; the stub file must also be left exactly as
# generated, or `ruff format .` would rewrite it and the freshness check would fail.
_PYI_HEADER = "# ruff: noqa\n# fmt: off\n"


def generate(out_dir: Path = OUT_DIR) -> None:
    """Run protoc into ``out_dir`` and fix the grpc module's import."""
    # Imported here: grpcio-tools is a dev dependency, the runtime never needs it.
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with resources.as_file(PROTO) as proto:
        # protoc embeds paths relative to -I, so the output does not depend on where it runs.
        args = [
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto),
        ]
        rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    grpc_file = out_dir / "provisioner_pb2_grpc.py"
    text = grpc_file.read_text()
    if _GRPC_IMPORT not in text:
        raise RuntimeError(f"unexpected protoc output: {_GRPC_IMPORT!r} not found")
    grpc_file.write_text(text.replace(_GRPC_IMPORT, _GRPC_IMPORT_FIXED))
    pyi_file = out_dir / "provisioner_pb2.pyi"
    pyi_file.write_text(_PYI_HEADER + pyi_file.read_text())


def stale_files(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        stale: list[str] = []
        for name in GENERATED:
            committed = out_dir / name
            fresh = (fresh_dir / name).read_text()
            if not committed.exists() or committed.read_text() != fresh:
                stale.append(name)
        return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.adapters.proto.generate",
        description="Regenerate pipeline/adapters/proto from pipeline/schemas/provisioner.proto.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temp dir and exit 1 if the committed files differ",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                f"stale generated files: {', '.join(stale)}; "
                "run `python -m pipeline.adapters.proto.generate`",
                file=sys.stderr,
            )
            return 1
        print("generated files are up to date")
        return 0
    generate()
    print(f"generated {', '.join(GENERATED)} in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
