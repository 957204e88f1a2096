"""The audit chain: canonical encoding, Merkle roots and verification (pure).

Each committed transaction appends one entry per tenant it touched. The entry's ``operations``
are the canonical JSON records of every state change, in the order they were applied; its
``body`` is the canonical JSON of ``{v, tenant, batch, at, count, root}`` where ``root`` is the
Merkle root of the operations; its ``hash`` is ``sha256(previous entry's hash || body)``, the
first entry's previous hash being 32 zero bytes. The database computes that last hash while it
updates the tenant's chain head, so the head's row lock is held only for the final statements
of a transaction, never across a round trip to the application (see docs/credits.md).

Verification recomputes, for every entry in order: the leaf hashes and the Merkle root from the
stored operations, the body's root and count, and the chained hash; the first entry where any
of these differ is named. Leaves are ``sha256(0x00 || record)`` and inner nodes
``sha256(0x01 || left || right)`` (RFC 6962 domain separation, so a leaf can never pass for a node).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

GENESIS_HASH = b"\x00" * 32
ENTRY_VERSION = 1


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 (equal values give equal bytes)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def leaf_hash(record: Any) -> bytes:
    return hashlib.sha256(b"\x00" + canonical(record)).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over leaf hashes; an odd node is carried up unchanged; no leaves: sha256 of nothing."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[tuple[str, bytes]]:
    """The sibling path proving leaf ``index`` is under the root: [(side, hash), ...] bottom-up."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    path: list[tuple[str, bytes]] = []
    level = list(leaves)
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):
            path.append(("left" if sibling < position else "right", level[sibling]))
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        position //= 2
    return path


def verify_inclusion(leaf: bytes, path: Iterable[tuple[str, bytes]], root: bytes) -> bool:
    node = leaf
    for side, sibling in path:
        node = hashlib.sha256(b"\x01" + (sibling + node if side == "left" else node + sibling)).digest()
    return node == root


def entry_body(*, tenant_id: UUID, batch_id: UUID, at: str, records: Sequence[Any]) -> bytes:
    root = merkle_root([leaf_hash(r) for r in records])
    return canonical(
        {
            "v": ENTRY_VERSION,
            "tenant": str(tenant_id),
            "batch": str(batch_id),
            "at": at,
            "count": len(records),
            "root": root.hex(),
        }
    )


def chain_hash(previous: bytes, body: bytes) -> bytes:
    return hashlib.sha256(previous + body).digest()


@dataclass(frozen=True)
class StoredEntry:
    tenant_id: UUID
    seq: int
    batch_id: UUID
    hash: bytes
    body: bytes
    operations: bytes
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class Break:
    """The first entry of a chain that does not verify, and why."""

    tenant_id: UUID
    seq: int
    reason: str


def check_entry(entry: StoredEntry, *, previous: bytes, expected_seq: int) -> str | None:
    """Why ``entry`` breaks the chain after ``previous``, or None when it verifies."""
    if entry.seq != expected_seq:
        return f"sequence gap: expected entry {expected_seq}, found {entry.seq}"
    try:
        records = orjson.loads(entry.operations)
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return "operations or body are not valid JSON"
    if not isinstance(records, list) or not isinstance(body, dict):
        return "operations is not a list or body is not an object"
    if body.get("tenant") != str(entry.tenant_id) or body.get("batch") != str(entry.batch_id):
        return "body names another tenant or batch"
    if body.get("count") != len(records):
        return f"body counts {body.get('count')} operations, {len(records)} stored"
    if body.get("root") != merkle_root([leaf_hash(r) for r in records]).hex():
        return "Merkle root does not match the stored operations"
    if canonical(body) != entry.body:
        return "body is not in canonical form"
    if chain_hash(previous, entry.body) != entry.hash:
        return "hash does not match sha256(previous hash || body)"
    return None


def verify_chain(
    entries: Iterable[StoredEntry], *, previous: bytes = GENESIS_HASH, first_seq: int = 1
) -> tuple[int, bytes, Break | None]:
    """Walk one tenant's entries in sequence order; returns (entries checked, last hash, first break)."""
    checked = 0
    expected = first_seq
    for entry in entries:
        reason = check_entry(entry, previous=previous, expected_seq=expected)
        if reason is not None:
            return checked, previous, Break(tenant_id=entry.tenant_id, seq=entry.seq, reason=reason)
        previous = entry.hash
        expected += 1
        checked += 1
    return checked, previous, None
