"""Encoding and decoding of events: orjson on the wire, JSON Schema at the edges.

Decoding returns values, not exceptions: a message that is not a valid command becomes an
``Undecodable`` that still carries the propagation id when one can be read, so the
processor can dead-letter it instead of crashing or stalling the partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol

import fastjsonschema
import orjson

from pipeline.domain.events import COMMAND_SCHEMA, OUTCOME_SCHEMA, Command, OutcomeEvent

# Package data: the published contract in the repository's schemas/ is copied here
# (tests/unit/project/test_distribution.py keeps the two identical).
SCHEMA_DIR = resources.files("pipeline") / "schemas"
MAX_EVENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Undecodable:
    reason: str  # bounded: bad_json | schema_violation | oversized | empty
    detail: str
    propagation_id: int | None = None
    fields: dict[str, Any] | None = None


@cache
def schema_document(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((SCHEMA_DIR / f"{name}.json").read_bytes())
    return doc


@cache
def validator(name: str) -> Callable[[Any], Any]:
    # format checks are left to the producer side; fastjsonschema's date-time regex is strict
    # about the 'Z' suffix we emit and it costs time on the hot path.
    return fastjsonschema.compile(schema_document(name), formats={"date-time": r".+"})


def encode(event: Command | OutcomeEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def encode_validated(event: Command | OutcomeEvent) -> bytes:
    doc = event.to_dict()
    validator(event.schema)(doc)
    return orjson.dumps(doc)


def _validated(raw: bytes | None, schema: str, *, sniff: bool) -> dict[str, Any] | Undecodable:
    """The JSON document of ``raw`` if it is valid against ``schema``. An oversized message is
    never parsed; with ``sniff`` its propagation id is looked for in its first kilobyte."""
    if not raw:
        return Undecodable("empty", "empty message")
    if len(raw) > MAX_EVENT_BYTES:
        pid = _sniff_id_prefix(raw) if sniff else None
        return Undecodable("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}", pid)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Undecodable("bad_json", str(exc)[:200])
    if not isinstance(doc, dict):
        return Undecodable("schema_violation", "not a JSON object")
    try:
        validator(schema)(doc)
    except fastjsonschema.JsonSchemaException as exc:
        return Undecodable("schema_violation", str(exc)[:300], _readable_id(doc), doc)
    return doc


def decode_command(raw: bytes | None) -> Command | Undecodable:
    doc = _validated(raw, COMMAND_SCHEMA, sniff=True)
    return doc if isinstance(doc, Undecodable) else Command.from_dict(doc)


def decode_outcome(raw: bytes | None) -> OutcomeEvent | Undecodable:
    doc = _validated(raw, OUTCOME_SCHEMA, sniff=False)
    return doc if isinstance(doc, Undecodable) else OutcomeEvent.from_dict(doc)


class LogRecord(Protocol):
    """What ``decode_outcomes`` reads of a consumed message (aiokafka's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Located:
    """An outcome event with where it came from on the log."""

    event: OutcomeEvent
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """An outcome-topic message that did not decode, and where it lies."""

    topic: str
    partition: int
    offset: int
    reason: str  # Undecodable.reason: a bounded set

    def log_fields(self) -> dict[str, Any]:
        """What a skip's log line says (the topic is the reader's own)."""
        return {"partition": self.partition, "offset": self.offset, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DecodedOutcomes:
    items: list[Located]
    skipped: list[SkippedRecord]
    next_offsets: dict[tuple[str, int], int]  # (topic, partition) -> past the last record


def decode_outcomes(records: Iterable[LogRecord]) -> DecodedOutcomes:
    """Decodes consumed outcome messages in log order: the projector, ``replay`` and ``tail``
    read the log this one way. An undecodable message is skipped, not fatal (a foreign or
    corrupt message must not stall a partition), and listed so the caller can count it; the
    next offsets move past every record, skipped ones too."""
    items: list[Located] = []
    skipped: list[SkippedRecord] = []
    next_offsets: dict[tuple[str, int], int] = {}
    for r in records:
        next_offsets[(r.topic, r.partition)] = r.offset + 1
        decoded = decode_outcome(r.value)
        if isinstance(decoded, Undecodable):
            skipped.append(SkippedRecord(r.topic, r.partition, r.offset, decoded.reason))
        else:
            items.append(Located(decoded, r.topic, r.partition, r.offset))
    return DecodedOutcomes(items, skipped, next_offsets)


def _readable_id(doc: dict[str, Any]) -> int | None:
    pid = doc.get("propagation_id")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 1:
        return pid
    return None


def _sniff_id_prefix(raw: bytes) -> int | None:
    # An oversized message is never parsed whole; the relay writes propagation_id early,
    # so look for it in the first kilobyte only.
    head = raw[:1024]
    marker = b'"propagation_id":'
    at = head.find(marker)
    if at < 0:
        return None
    digits = head[at + len(marker) :].lstrip()[:20]
    num = b""
    for ch in digits:
        if 48 <= ch <= 57:
            num += bytes([ch])
        else:
            break
    return int(num) if num else None
