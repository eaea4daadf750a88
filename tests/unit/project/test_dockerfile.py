"""compose/Dockerfile builds the wheel in one stage and installs only that wheel, as a non-root
user, in the next. Checked statically: no Docker engine runs here (tests/integration/test_wheel.py
proves the same wheel installs and runs outside the source tree)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml
from distribution import ROOT, pyproject, supported_pythons

DOCKERFILE = ROOT / "compose" / "Dockerfile"
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def runs(self) -> list[str]:
        return [args for kw, args in self.steps if kw == "RUN"]


def parse(text: str) -> list[Stage]:
    """The stages, with continuation lines joined and ARGs before the first FROM substituted."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = _VAR.sub(lambda m: args.get(m.group(1) or m.group(2), ""), rest).split()
            named = len(parts) == 3 and parts[1].lower() == "as"
            stages.append(Stage(parts[0], parts[2] if named else None))
        else:
            stages[-1].steps.append((keyword, rest))
    return stages


def problems(text: str, newest_python: str, build_pin: str) -> list[str]:
    stages = parse(text)
    if len(stages) < 2:
        return ["one stage only: the wheel must be built in a stage of its own"]
    *builders, final = stages
    out = []
    for stage in stages:
        if stage.base != f"python:{newest_python}-slim":
            out.append(f"base image {stage.base} is not python:{newest_python}-slim")
        for run in stage.runs():
            if "pip install" in run and re.search(r"(^|\s)(-e|--editable)(\s|$)", run):
                out.append(f"editable install: RUN {run}")
    build_runs = [run for stage in builders for run in stage.runs()]
    if not any("-m build" in run and "--wheel" in run for run in build_runs):
        out.append("no earlier stage runs `python -m build --wheel`")
    if not any(f"pip install {build_pin}" in run for run in build_runs):
        out.append(f"the build stage does not install {build_pin} (the dev extras' pin)")
    for stage in builders:
        for kw, args in stage.steps:
            if kw == "COPY" and "--from" not in args:
                missing = [src for src in args.split()[:-1] if not (ROOT / src).exists()]
                if missing:
                    out.append(f"COPY of paths not in the repository: {missing}")
    names = {stage.name for stage in builders}
    copies = [args.split() for kw, args in final.steps if kw == "COPY"]
    wheel_copied = any(
        c[0].startswith("--from=") and c[0].removeprefix("--from=") in names and ".whl" in c[1]
        for c in copies
    )
    if not wheel_copied:
        out.append("the final stage copies no wheel from an earlier stage")
    from_context = [" ".join(c) for c in copies if not c[0].startswith("--from=")]
    if from_context:
        out.append(f"the final stage copies from the build context: {from_context}")
    if not any("pip install" in run and ".whl" in run for run in final.runs()):
        out.append("the final stage does not pip install the wheel")
    users = [args for kw, args in final.steps if kw == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        out.append("the final stage runs as root")
    return out


def _build_pin() -> str:
    (pin,) = [d for d in pyproject()["project"]["optional-dependencies"]["dev"] if "build" in d]
    return pin


def _problems(text: str) -> list[str]:
    return problems(text, supported_pythons()[-1], _build_pin())


def test_dockerfile_builds_the_wheel_and_installs_only_it_as_non_root() -> None:
    assert _problems(DOCKERFILE.read_text()) == []


def test_planted_defects_are_found() -> None:
    good = DOCKERFILE.read_text()
    editable = good.replace("COPY --from=build /dist/*.whl /tmp/wheels/", "COPY . /app").replace(
        "RUN pip install /tmp/wheels/*.whl", "RUN pip install -e /app"
    )
    assert _problems(editable) == [
        "editable install: RUN pip install -e /app && rm -rf /tmp/wheels",
        "the final stage copies no wheel from an earlier stage",
        "the final stage copies from the build context: ['. /app']",
        "the final stage does not pip install the wheel",
    ]
    assert _problems(good.replace("USER pipeline\n", "")) == ["the final stage runs as root"]
    assert _problems(good.replace("USER pipeline\n", "USER 0:0\n")) == [
        "the final stage runs as root"
    ]
    old_python = good.replace("ARG PYTHON_VERSION=3.13", "ARG PYTHON_VERSION=3.10")
    assert _problems(old_python) == ["base image python:3.10-slim is not python:3.13-slim"] * 2
    no_build = good.replace("RUN python -m build --wheel --outdir /dist", "RUN true")
    assert _problems(no_build) == ["no earlier stage runs `python -m build --wheel`"]
    assert _problems(good.replace("COPY pipeline ./pipeline", "COPY src ./src")) == [
        "COPY of paths not in the repository: ['src']"
    ]
    one_stage = good[good.index("FROM python:${PYTHON_VERSION}-slim\n") :]
    assert _problems("ARG PYTHON_VERSION=3.13\n" + one_stage) == [
        "one stage only: the wheel must be built in a stage of its own"
    ]


def test_compose_builds_every_pipeline_service_from_this_dockerfile() -> None:
    doc = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    built = {name: svc["build"] for name, svc in doc["services"].items() if "build" in svc}
    assert set(built) == {"provisioner", "migrate", "relay", "worker", "projector"}
    for name, build in built.items():
        context = (ROOT / "compose" / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
