"""Part sizes fit 5 TiB in 10,000 parts; manifests parse strictly; row-count comparison names tables."""

from __future__ import annotations

import pytest

from feint.backup.manifest import ManifestInvalid, parse
from feint.backup.storage import MIB, OBJECT_BYTES_MAX, PART_BYTES_MIN, PARTS_MAX, part_bytes_for
from feint.backup.verify import compare_counts, compare_heads

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("estimate", [0, 1, 5 * 10**9, 50 * 10**9, 10**12, OBJECT_BYTES_MAX, 100 * OBJECT_BYTES_MAX])
def test_part_size_fits(estimate: int) -> None:
    """Twice the estimate (capped at 5 TiB) fits in 10,000 parts; parts are whole MiB, at least 8 MiB."""
    part = part_bytes_for(estimate)
    assert part >= PART_BYTES_MIN and part % MIB == 0
    assert part * PARTS_MAX >= min(2 * estimate, OBJECT_BYTES_MAX)


def test_small_databases_use_the_floor_and_5_tib_fits() -> None:
    """A 5 GB database gets 8 MiB parts; the largest part still lets a 5 TiB object fit."""
    assert part_bytes_for(5 * 10**9) == PART_BYTES_MIN
    assert part_bytes_for(10**15) * PARTS_MAX >= OBJECT_BYTES_MAX


def test_manifest_rejects_bad_documents() -> None:
    """Not JSON, wrong format and missing fields are each named."""
    with pytest.raises(ManifestInvalid, match="not JSON"):
        parse(b"{", where="x")
    with pytest.raises(ManifestInvalid, match="format 2"):
        parse(b'{"format": 2}', where="x")
    with pytest.raises(ManifestInvalid, match="x:"):
        parse(b'{"format": 1, "started_at": "2026-01-01T00:00:00+00:00"}', where="x")


def test_compare_counts_names_each_difference() -> None:
    """Missing, extra and different tables each produce one problem."""
    problems = compare_counts({"public.a": 1, "public.b": 2}, {"public.b": 3, "public.c": 0})
    assert problems == [
        "table public.a is missing after restore",
        "table public.c is not in the manifest",
        "table public.b: 3 rows restored, the manifest says 2",
    ]
    assert compare_heads({"t": {"seq": 1, "hash": "aa"}}, {"t": {"seq": 1, "hash": "aa"}}) == []
    assert compare_heads({"t": {"seq": 2, "hash": "bb"}}, {"t": {"seq": 1, "hash": "aa"}})[0].startswith("tenant t")
