from factories import outcome_event

from pipeline.domain.codec import Located
from pipeline.store.projection import rounds


def _item(pid: int, attempt: int) -> Located:
    return Located(outcome_event(pid, attempt), "topic", 0, attempt)


def test_rounds_keep_one_event_per_propagation_in_log_order() -> None:
    items = [_item(1, 1), _item(2, 1), _item(1, 2), _item(1, 3), _item(3, 1), _item(2, 2)]
    assert rounds(items) == [[0, 1, 4], [2, 5], [3]]


def test_rounds_of_nothing() -> None:
    assert rounds([]) == []
