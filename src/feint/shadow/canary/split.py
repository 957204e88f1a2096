"""Which rule version judges a client during a canary: consistent hashing of the client key.

Every client key maps to one of ``SPLIT_BUCKETS`` buckets by a keyed hash (BLAKE2b with the
rollout's salt), and the candidate judges the buckets below ``weight × SPLIT_BUCKETS / 100``.
So, within a step, one client always sees one version; when the weight grows, every client that
was in the canary stays in it (the slice only gains buckets), and a rollback (weight 0) empties
it at once. Different rollouts use different salts, so the same clients are not always the ones
exposed first. The gateway, the live controller and ``feint rollout simulate`` all call
:func:`judged_by_candidate`; there is no second implementation of the split.
"""

from __future__ import annotations

import hashlib
from typing import Final

SPLIT_BUCKETS: Final = 10_000
WEIGHT_PERCENT_MAX: Final = 100.0
SALT_BYTES_MAX: Final = 64


def bucket(client_key: str, *, salt: str) -> int:
    """The bucket (0 ≤ b < SPLIT_BUCKETS) of ``client_key`` under ``salt``; stable across processes."""
    key = salt.encode()[:SALT_BYTES_MAX]
    digest = hashlib.blake2b(client_key.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") % SPLIT_BUCKETS


def buckets_for(weight_percent: float) -> int:
    """How many buckets a weight covers; raises on a weight outside 0–100."""
    if not 0.0 <= weight_percent <= WEIGHT_PERCENT_MAX:
        raise ValueError(f"canary weight must be between 0 and 100 percent, got {weight_percent}")
    return round(weight_percent * SPLIT_BUCKETS / WEIGHT_PERCENT_MAX)


def judged_by_candidate(client_key: str, *, weight_percent: float, salt: str) -> bool:
    """True when the candidate version judges ``client_key`` at ``weight_percent``."""
    covered = buckets_for(weight_percent)
    if covered == 0:
        return False
    if covered == SPLIT_BUCKETS:
        return True
    return bucket(client_key, salt=salt) < covered
