"""create → list → verify → restore round trips on S3 and on a folder, with the ledger intact."""

from __future__ import annotations

import psycopg
import pytest

from feint.backup import pipeline, verify
from feint.backup.drill import DRILL_ACCOUNTS_PER_TENANT, DRILL_TENANTS, LedgerWriter
from feint.backup.keys import BackupKeys
from feint.backup.storage import Storage

pytestmark = pytest.mark.integration
GRANTS = DRILL_TENANTS * DRILL_ACCOUNTS_PER_TENANT  # a grant is a transfer from the tenant's grant account


def test_create_verify_restore(
    storage: Storage, keyset: BackupKeys, filled_ledger: LedgerWriter, clean_db: str
) -> None:
    """A backup of a filled ledger verifies (counts, chain heads, audit) and restores into an empty database."""
    manifest = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    assert manifest.row_counts["public.credit_transfers"] == GRANTS + 40
    assert len(manifest.audit_heads) == 2
    assert manifest.key_id == keyset.info.primary_key_id
    assert manifest.kind == "monthly"  # the first of the month
    found = pipeline.catalog(storage)
    assert [m.id for m in found.manifests] == [manifest.id] and found.incomplete == []
    assert storage.pending_uploads() == []

    report = verify.verify_backup(storage=storage, manifest=manifest, keys=keyset, server_url=clean_db)
    assert report.ok, report.problems
    assert report.tenants == 2 and report.audit_entries > 0 and report.rows == sum(manifest.row_counts.values())

    second = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    assert second.kind == "daily"
    assert pipeline.catalog(storage).find("latest").id == second.id

    target = verify.with_database(clean_db, f"{verify.SCRATCH_PREFIX}restore_{manifest.id[-6:]}")
    verify.create_database(target)
    try:
        pipeline.restore_into(
            storage=storage, manifest=manifest, keys=keyset, target_url=target, clean=False, privileges=True
        )
        with psycopg.connect(target) as conn:
            row = conn.execute("SELECT count(*) FROM credit_transfers").fetchone()
        assert row is not None and row[0] == GRANTS + 40
        assert verify.target_state(target) == (True, len(manifest.row_counts))
    finally:
        with psycopg.connect(verify.with_database(clean_db, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{verify.database_name(target)}" WITH (FORCE)')


def test_verify_finds_a_tampered_count(
    storage: Storage, keyset: BackupKeys, filled_ledger: LedgerWriter, clean_db: str
) -> None:
    """A manifest whose row count disagrees with the restored data fails verification, naming the table."""
    import dataclasses

    manifest = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    wrong = dataclasses.replace(manifest, row_counts={**manifest.row_counts, "public.credit_transfers": GRANTS + 41})
    report = verify.verify_backup(storage=storage, manifest=wrong, keys=keyset, server_url=clean_db)
    assert not report.ok
    assert report.problems == [
        f"table public.credit_transfers: {GRANTS + 40} rows restored, the manifest says {GRANTS + 41}"
    ]
