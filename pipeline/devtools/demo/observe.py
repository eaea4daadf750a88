"""What the demo watches while it runs: the consumers' lag, and the terminal outcome events."""

from __future__ import annotations

from collections import defaultdict

from pipeline.domain.errors import BrokerError, PipelineError
from pipeline.runtime.config import Config


class Lag:
    """Consumer lag of the worker's group and of the projection, as `pipeline lag` shows it.
    Informational: a failed probe shows as '?' and never stops the demo."""

    def __init__(self, cfg: Config) -> None:
        from pipeline.components.lag import LagProbe, pipeline_sources

        self._cfg = cfg
        self._probe = LagProbe(cfg.kafka_client_kwargs(), cfg.database_url)
        self._sources = pipeline_sources(
            cfg.processor_group, cfg.commands_topic, cfg.projection_name, cfg.outcomes_topic
        )

    async def __aenter__(self) -> Lag:
        await self._probe.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._probe.close()

    async def measure(self) -> str:
        try:
            report = await self._probe.measure(self._sources, outbox=False)
        except PipelineError:
            return "lag ?"
        worker, projector = self._cfg.processor_group, self._cfg.projection_name
        return (
            f"lag worker {report.total(worker)} ({report.max_seconds(worker):.1f}s) "
            f"projector {report.total(projector)} ({report.max_seconds(projector):.1f}s)"
        )


async def terminal_events(cfg: Config) -> dict[int, set[tuple[int, str]]]:
    """Per propagation, its distinct terminal (attempt, outcome) events on the outcome topic,
    read from the beginning up to the end offsets of now."""
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from pipeline.adapters.topics import partitions_for
    from pipeline.devtools.workload import TERMINAL_OUTCOMES

    consumer = AIOKafkaConsumer(**cfg.kafka_client_kwargs(), enable_auto_commit=False)
    out: dict[int, set[tuple[int, str]]] = defaultdict(set)
    try:
        parts = await partitions_for(cfg.kafka_client_kwargs(), cfg.outcomes_topic)
        await consumer.start()
        tps = [TopicPartition(cfg.outcomes_topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    try:
                        doc = orjson.loads(m.value or b"")
                    except orjson.JSONDecodeError:
                        continue
                    outcome = doc.get("outcome") if isinstance(doc, dict) else None
                    if outcome in TERMINAL_OUTCOMES and isinstance(doc["propagation_id"], int):
                        out[doc["propagation_id"]].add((int(doc["attempt"]), str(outcome)))
    except KafkaError as exc:
        raise BrokerError(f"cannot read {cfg.outcomes_topic}: {exc}") from exc
    finally:
        await consumer.stop()
    return dict(out)
