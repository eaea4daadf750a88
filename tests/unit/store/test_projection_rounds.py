from pipeline.domain.codec import Located
from pipeline.domain.events import Outcome, OutcomeEvent
from pipeline.store.projection import rounds


def _item(pid: int, attempt: int) -> Located:
    event = OutcomeEvent(
        event_id=f"{pid}-{attempt}",
        propagation_id=pid,
        kind="tier_elevation",
        attempt=attempt,
        team_id="t",
        resource_type="postgres",
        resource_id="r",
        timestamp="2026-01-01T00:00:00Z",
        outcome=Outcome.RETRYING,
        occurred_at="2026-01-01T00:00:00Z",
    )
    return Located(event, "topic", 0, attempt)


def test_rounds_keep_one_event_per_propagation_in_log_order() -> None:
    items = [_item(1, 1), _item(2, 1), _item(1, 2), _item(1, 3), _item(3, 1), _item(2, 2)]
    assert rounds(items) == [[0, 1, 4], [2, 5], [3]]


def test_rounds_of_nothing() -> None:
    assert rounds([]) == []
