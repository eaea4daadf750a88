"""``--profile DIR``: py-spy on each component during the saturation phase.

py-spy records collapsed stacks (``--format raw``: one ``frame;frame;... count`` line per
stack), which speedscope opens directly and flamegraph.pl turns into an SVG; the bench also
summarises them into the top functions by own samples and by samples including callees.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.domain.errors import PipelineError

TOP = 12


@dataclass
class Recording:
    name: str
    path: Path
    proc: subprocess.Popen[bytes]


def py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise PipelineError("--profile needs py-spy: pip install -e '.[bench]'")
    return found


def start(name: str, pid: int, outdir: Path, rate: int = 100) -> Recording:
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{name}.collapsed.txt"
    cmd = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        str(rate),
        "--nonblocking",
        "--function",
        "-o",
        str(path),
    ]
    log = (outdir / f"{name}.py-spy.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Recording(name, path, proc)


def stop(rec: Recording, timeout: float = 30) -> None:
    """py-spy writes its file when interrupted."""
    if rec.proc.poll() is None:
        rec.proc.send_signal(signal.SIGINT)
    try:
        rec.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rec.proc.kill()
        rec.proc.wait()


def summarize(path: Path, top: int = TOP) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, as share of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"file": str(path), "samples": 0, "top_self": [], "top_total": []}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "share": n / total if total else 0.0}
            for f, n in counter.most_common(top)
        ]

    return {
        "file": str(path),
        "samples": total,
        "top_self": share(own),
        "top_total": share(inclusive),
    }


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    where = where.rstrip(")")
    for marker in ("site-packages/", "/pipeline/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/pipeline/":
                where = "pipeline/" + where
            break
    return f"{name} ({where})"
