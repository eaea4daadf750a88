"""The handler registry: an explicit object, built in one place (``build_registry``)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.domain.errors import PipelineError
from pipeline.domain.handlers import Handler, RegradeHandler, ResumeHandler, SuspendHandler


class HandlerRegistry:
    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._by_kind: dict[str, Handler] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: Handler) -> None:
        if handler.kind in self._by_kind:
            raise PipelineError(f"two handlers for kind {handler.kind!r}")
        self._by_kind[handler.kind] = handler

    def get(self, kind: str) -> Handler | None:
        return self._by_kind.get(kind)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._by_kind)


def build_registry() -> HandlerRegistry:
    """Every value of the ``propagation_kind`` enum needs an entry here (a test walks it)."""
    return HandlerRegistry(
        [
            RegradeHandler("tier_elevation"),
            RegradeHandler("tier_demotion"),
            SuspendHandler("resource_suspend"),
            ResumeHandler("resource_resume"),
        ]
    )
