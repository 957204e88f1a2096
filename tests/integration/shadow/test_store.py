"""The shadow tables on a real database: the app role's rights, immutability, one production version."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from feint.errors import InvariantViolated
from feint.platform.runtime import Platform
from feint.shadow import repository, store
from feint.shadow.versions import Document, compile_version
from tests.integration.shadow import sigma

pytestmark = pytest.mark.integration


@pytest.fixture
async def version(platform: Platform, api_key: Callable[..., str]) -> tuple[uuid.UUID, uuid.UUID]:
    """(tenant id, rule set id) of rule set web with one draft version."""
    api_key(tenant="acme", scope="read")
    async with platform.db.connection() as conn:
        tenant_id = await store.tenant_id_by_name(conn, "acme")
    assert tenant_id is not None
    ruleset = await repository.create_ruleset(platform.db, tenant_id=tenant_id, name="web", description="", actor="t")
    compiled = compile_version([Document(name="a.yml", yaml=sigma.SQLI)])
    await repository.add_version(
        platform.db, tenant_id=tenant_id, ref="web", compiled=compiled, message="m", author="a", actor="t"
    )
    return tenant_id, ruleset.id


@pytest.fixture
def as_app(clean_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection with the services' role, feint_app."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("SET ROLE feint_app")
        yield conn


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE shadow_versions SET message = 'rewritten'",
        "UPDATE shadow_versions SET content_hash = repeat('0', 64)",
        "UPDATE shadow_version_documents SET yaml = ''",
        "UPDATE shadow_version_rules SET weight = 0",
        "DELETE FROM shadow_versions",
        "DELETE FROM shadow_history",
        "UPDATE shadow_history SET reason = 'nothing happened'",
        "UPDATE shadow_rulesets SET name = 'other'",
        "DELETE FROM shadow_evaluations",
        "UPDATE shadow_evaluations SET request = '{}'",
    ],
)
def test_app_role_cannot_rewrite_versions_or_history(
    version: tuple[uuid.UUID, uuid.UUID], as_app: psycopg.Connection[tuple[object, ...]], statement: str
) -> None:
    """A version's content, the history and rule set names are beyond the services' rights."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_app.execute(statement)


def test_app_role_moves_states_only(
    version: tuple[uuid.UUID, uuid.UUID], as_app: psycopg.Connection[tuple[object, ...]]
) -> None:
    """feint_app may change a version's state (and nothing else of it)."""
    as_app.execute("UPDATE shadow_versions SET state = 'shadow', state_changed_at = now()")


def test_history_is_append_only_even_for_the_owner(version: tuple[uuid.UUID, uuid.UUID], clean_db: str) -> None:
    """The owner's UPDATE or DELETE on the history is refused by a trigger."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for statement in ("UPDATE shadow_history SET reason = 'x'", "DELETE FROM shadow_history"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


async def test_one_production_version_per_rule_set(platform: Platform, version: tuple[uuid.UUID, uuid.UUID]) -> None:
    """The partial unique index stops a second production version; the store reports it as an invariant."""
    tenant_id, ruleset_id = version
    compiled = compile_version([Document(name="b.yml", yaml=sigma.SCANNER)])
    await repository.add_version(
        platform.db, tenant_id=tenant_id, ref="web", compiled=compiled, message="m", author="a", actor="t"
    )
    async with platform.db.transaction() as conn:
        await store.set_state(
            conn, tenant_id=tenant_id, ruleset_id=ruleset_id, number=1, from_state="draft", to_state="production"
        )
    with pytest.raises(InvariantViolated, match="second production"):
        async with platform.db.transaction() as conn:
            await store.set_state(
                conn, tenant_id=tenant_id, ruleset_id=ruleset_id, number=2, from_state="draft", to_state="production"
            )
    with pytest.raises(InvariantViolated, match="not in state canary"):
        async with platform.db.transaction() as conn:
            await store.set_state(
                conn, tenant_id=tenant_id, ruleset_id=ruleset_id, number=2, from_state="canary", to_state="retired"
            )


async def test_store_invariants(platform: Platform, version: tuple[uuid.UUID, uuid.UUID]) -> None:
    """A vanished rule set or tenant is an invariant violation, never a silent default."""
    tenant_id, _ = version
    async with platform.db.transaction() as conn:
        with pytest.raises(InvariantViolated, match="vanished"):
            await store.next_version_number(conn, tenant_id=tenant_id, ruleset_id=uuid.uuid4())
    async with platform.db.connection() as conn:
        with pytest.raises(InvariantViolated, match="does not exist"):
            await store.tenant_name(conn, uuid.uuid4())
        assert await store.tenant_name(conn, tenant_id) == "acme"
        assert await store.get_dataset(conn, tenant_id=tenant_id, dataset_id=uuid.uuid4()) is None
        assert await store.list_datasets(conn, tenant_id=tenant_id, limit=10) == []
