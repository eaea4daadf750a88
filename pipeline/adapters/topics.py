"""Creating the pipeline's topics with explicit partition counts (auto-create is off)."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.adapters import replication as rep
from pipeline.domain.errors import BrokerError, login_hint


async def ensure_topics(
    client_kwargs: dict[str, Any],
    names: list[str],
    partitions: int,
    replication: int = 0,
    min_insync: int = 0,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[rep.TopicReplication]:
    """Create what is missing, wait until every broker shows it, and describe what exists."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        # Replication (pipeline/adapters/replication.py): 0 = what the cluster says.
        want = await rep.resolve(admin, replication, min_insync)
        if missing:
            # another component may have created it first
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            n,
                            partitions,
                            want.factor,
                            topic_configs=(configs or {}).get(n, {}) | want.topic_configs(),
                        )
                        for n in missing
                    ]
                )
        await rep.wait_visible(admin, names)
        return await rep.describe(admin, names, want)
    except KafkaError as exc:
        raise BrokerError(
            f"could not ensure topics {names}: {exc}{login_hint(client_kwargs)}"
        ) from exc
    finally:
        await admin.close()


async def _describe(client_kwargs: dict[str, Any], what: str, ask: Any) -> Any:
    """``await ask(admin)`` on a short-lived admin client; a broker error names ``what``."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        return await ask(admin)
    except KafkaError as exc:
        raise BrokerError(f"could not describe {what}: {exc}") from exc
    finally:
        await admin.close()


async def partitions_for(client_kwargs: dict[str, Any], topic: str) -> list[int]:
    described = await _describe(client_kwargs, topic, lambda a: a.describe_topics([topic]))
    for t in described:
        if t["topic"] == topic and not t["error_code"]:
            return sorted(p["partition"] for p in t["partitions"])
    raise BrokerError(f"topic {topic} does not exist")


async def group_assignment(client_kwargs: dict[str, Any], group: str) -> tuple[str, list[set[str]]]:
    """A consumer group's state ("Stable", "PreparingRebalance", ...) and, per member, the
    topics it holds a partition of."""
    responses = await _describe(
        client_kwargs, f"group {group}", lambda a: a.describe_consumer_groups([group])
    )
    for response in responses:
        for error_code, name, state, _ptype, _protocol, members, *_ in response.groups:
            if name != group or error_code:
                continue
            held = []
            for *_ids, _metadata, assignment in members:
                decoded = (
                    ConsumerProtocolMemberAssignment.decode(assignment) if assignment else None
                )
                held.append({t for t, parts in decoded.assignment if parts} if decoded else set())
            return state, held
    return "Dead", []
