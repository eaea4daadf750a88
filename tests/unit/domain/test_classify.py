import random
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.classify import BUCKETS, bucket, is_allowed_skip


@pytest.mark.parametrize(
    "reason",
    [
        "already at target tier",
        "Resource is ALREADY AT TARGET TIER pro",
        "resource deleted",
        "skipped: Resource Deleted by user",
        "team deprovisioned",
        "TEAM DEPROVISIONED on 2026-01-01",
    ],
)
def test_every_allowed_reason_is_allowed(reason: str) -> None:
    assert is_allowed_skip(reason)


@pytest.mark.parametrize(
    ("reason", "expected_bucket"),
    [
        ("postgres-admin secret missing", "postgres_admin_secret_missing"),
        ("Postgres Admin SECRET not present", "postgres_admin_secret_missing"),
        ("redis-auth secret missing", "redis_auth_secret_missing"),
        ("redis auth secret was deleted", "redis_auth_secret_missing"),
        ("namespace team-42 not found", "namespace_not_found"),
        ("pod db-0 not found", "pod_not_found"),
        ("host unreachable", "resource_not_reachable"),
        ("endpoint not reachable", "resource_not_reachable"),
        ("dial tcp: connection refused", "resource_not_reachable"),
        ("operation timed out", "resource_not_reachable"),
        ("legacy resource, cannot regrade", "legacy_resource"),
        ("something new and strange", "other"),
        ("", "other"),
        # first rule wins: both postgres-admin/secret and namespace/not found match
        ("postgres-admin secret not found in namespace", "postgres_admin_secret_missing"),
        # a secret alone is not enough for the secret buckets
        ("secret rotated", "other"),
        ("namespace exists", "other"),
    ],
)
def test_known_failure_reasons_are_not_allowed_and_bucket_exactly(
    reason: str, expected_bucket: str
) -> None:
    assert not is_allowed_skip(reason)
    assert bucket(reason) == expected_bucket


def test_there_are_exactly_seven_buckets() -> None:
    assert len(BUCKETS) == 7 == len(set(BUCKETS))


def test_thousands_of_random_reasons_stay_in_the_seven_buckets() -> None:
    rng = random.Random(1234)
    words = ["pod", "namespace", "not found", "secret", "legacy", "redis-auth", "timed out"]
    seen: set[str] = set()
    for _ in range(5000):
        parts = [
            rng.choice(words)
            if rng.random() < 0.3
            else "".join(rng.choices(string.printable, k=rng.randint(0, 30)))
            for _ in range(rng.randint(0, 4))
        ]
        seen.add(bucket(" ".join(parts)))
    assert seen <= set(BUCKETS)
    assert len(seen) >= 5  # the generator really reaches several buckets


@given(st.text(max_size=300))
def test_bucket_is_total_and_bounded(reason: str) -> None:
    assert bucket(reason) in BUCKETS
