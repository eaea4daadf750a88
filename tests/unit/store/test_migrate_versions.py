"""The migration runner refuses two files that share a version number."""

from __future__ import annotations

import pytest

from pipeline.domain.errors import StoreError
from pipeline.store.migrate import Migration, _refuse_duplicate_versions, available


def test_shipped_migrations_have_distinct_versions() -> None:
    versions = [m.version for m in available()]
    assert versions == sorted(set(versions))


def test_a_shared_version_is_refused() -> None:
    twins = [Migration(4, "0004_a.sql", ""), Migration(4, "0004_b.sql", "")]
    with pytest.raises(
        StoreError, match=r"two migrations share version 4: 0004_a\.sql, 0004_b\.sql"
    ):
        _refuse_duplicate_versions(twins)
