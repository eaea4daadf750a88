"""Skip classification and bucketing: pure functions over the provisioner's free-text reason."""

from __future__ import annotations

ALLOWED_SKIP_REASONS: tuple[str, ...] = (
    "already at target tier",
    "resource deleted",
    "team deprovisioned",
)

# (bucket, any-of groups that must all match). A reason matches a bucket when, for every
# group, it contains at least one of the group's needles. First matching bucket wins.
_BUCKET_RULES: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("postgres_admin_secret_missing", (("postgres-admin", "postgres admin"), ("secret",))),
    ("redis_auth_secret_missing", (("redis-auth", "redis auth"), ("secret",))),
    ("namespace_not_found", (("namespace",), ("not found",))),
    ("pod_not_found", (("pod",), ("not found",))),
    (
        "resource_not_reachable",
        (("unreachable", "not reachable", "connection refused", "timed out"),),
    ),
    ("legacy_resource", (("legacy",),)),
)
OTHER_BUCKET = "other"
BUCKETS: tuple[str, ...] = (*(name for name, _ in _BUCKET_RULES), OTHER_BUCKET)


def is_allowed_skip(reason: str) -> bool:
    text = reason.casefold()
    return any(allowed in text for allowed in ALLOWED_SKIP_REASONS)


def bucket(reason: str) -> str:
    """Map any reason onto one of the seven fixed ``BUCKETS`` (bounded label values)."""
    text = reason.casefold()
    for name, groups in _BUCKET_RULES:
        if all(any(needle in text for needle in group) for group in groups):
            return name
    return OTHER_BUCKET
