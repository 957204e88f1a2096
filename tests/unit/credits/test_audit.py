"""The audit chain's hashing, Merkle roots and verification, on plain data."""

from __future__ import annotations

import hashlib
import uuid

import orjson
import pytest

from feint.credits import audit

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("22222222-2222-4222-8222-222222222222")


def chain(batches: list[list[dict[str, object]]]) -> list[audit.StoredEntry]:
    entries, previous = [], audit.GENESIS_HASH
    for seq, records in enumerate(batches, start=1):
        batch = uuid.uuid4()
        body = audit.entry_body(
            tenant_id=TENANT, batch_id=batch, at="2030-01-01T00:00:00.000000+00:00", records=records
        )
        previous = audit.chain_hash(previous, body)
        entries.append(audit.StoredEntry(TENANT, seq, batch, previous, body, audit.canonical(records)))
    return entries


def test_canonical_json_is_key_order_independent() -> None:
    """Equal values give equal bytes whatever the key order."""
    assert audit.canonical({"b": 1, "a": [2, {"d": 3, "c": 4}]}) == audit.canonical(
        {"a": [2, {"c": 4, "d": 3}], "b": 1}
    )


def test_merkle_root_and_inclusion_proofs() -> None:
    """Every leaf of trees of 1 to 9 leaves proves its inclusion; a changed leaf does not."""
    assert audit.merkle_root([]) == hashlib.sha256(b"").digest()
    for size in range(1, 10):
        leaves = [audit.leaf_hash({"i": i}) for i in range(size)]
        root = audit.merkle_root(leaves)
        for index, leaf in enumerate(leaves):
            proof = audit.inclusion_proof(leaves, index)
            assert audit.verify_inclusion(leaf, proof, root)
            assert not audit.verify_inclusion(audit.leaf_hash({"i": -1}), proof, root)
    with pytest.raises(IndexError):
        audit.inclusion_proof([audit.leaf_hash(1)], 1)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    """A leaf can never pass for an inner node (RFC 6962 prefixes)."""
    left, right = audit.leaf_hash("a"), audit.leaf_hash("b")
    node = audit.merkle_root([left, right])
    assert node == hashlib.sha256(b"\x01" + left + right).digest()
    assert left == hashlib.sha256(b"\x00" + audit.canonical("a")).digest()


def test_an_intact_chain_verifies() -> None:
    """A chain built by the rules verifies end to end."""
    entries = chain([[{"op": "a"}], [{"op": "b"}, {"op": "c"}], [{"op": "d"}]])
    checked, last, broken = audit.verify_chain(entries)
    assert (checked, broken) == (3, None)
    assert last == entries[-1].hash


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda e: e.__class__(
                e.tenant_id, e.seq, e.batch_id, e.hash, e.body, audit.canonical([{"op": "forged"}, {"op": "c"}])
            ),
            "Merkle root",
        ),
        (lambda e: e.__class__(e.tenant_id, e.seq, e.batch_id, b"\x00" * 32, e.body, e.operations), "hash"),
        (lambda e: e.__class__(e.tenant_id, e.seq + 5, e.batch_id, e.hash, e.body, e.operations), "sequence gap"),
        (lambda e: e.__class__(e.tenant_id, e.seq, uuid.uuid4(), e.hash, e.body, e.operations), "another tenant"),
        (lambda e: e.__class__(e.tenant_id, e.seq, e.batch_id, e.hash, e.body, b"{not json"), "not valid JSON"),
        (lambda e: e.__class__(e.tenant_id, e.seq, e.batch_id, e.hash, e.body, b"{}"), "not a list"),
        (
            lambda e: e.__class__(e.tenant_id, e.seq, e.batch_id, e.hash, e.body, audit.canonical([{"op": "b"}])),
            "counts",
        ),
        (
            lambda e: e.__class__(
                e.tenant_id,
                e.seq,
                e.batch_id,
                e.hash,
                orjson.dumps(orjson.loads(e.body), option=orjson.OPT_INDENT_2),
                e.operations,
            ),
            "canonical",
        ),
    ],
)
def test_tampering_names_the_entry(change: object, reason: str) -> None:
    """Any change to a past entry is found at that entry, with the reason."""
    entries = chain([[{"op": "a"}], [{"op": "b"}, {"op": "c"}], [{"op": "d"}]])
    entries[1] = change(entries[1])  # type: ignore[operator]
    checked, _, broken = audit.verify_chain(entries)
    assert checked == 1
    assert broken is not None
    assert broken.seq == entries[1].seq
    assert reason in broken.reason
