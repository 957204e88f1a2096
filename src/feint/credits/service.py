"""The credits service: what each route asks of the ledger, the balance cache and the keyring.

One `Credits` object per process (in ``platform.extras``), started and stopped with the app. A
mutating call becomes a `Job` (its operations, idempotency key and how to render the answer),
committed by the engine, micro-batched when it is a single operation; a balance read is served
from the cache when fresh, else from one database statement that then refills the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from feint.credits import book as book_rules
from feint.credits import schemas
from feint.credits.batcher import MicroBatcher
from feint.credits.book import Book
from feint.credits.cache import (
    WRITE_THROUGH_ANSWERS_MAX,
    BalanceCache,
    CachedAccount,
    MemoryBalanceCache,
    NoCache,
    RedisBalanceCache,
)
from feint.credits.config import CreditsSettings
from feint.credits.engine import Engine, Idempotency, Job, Outcome, Rendered, Results
from feint.credits.errors import AccountNotFound, HoldNotFound, PaymentMethodNotFound
from feint.credits.models import (
    GRANTS_SHOWN_MAX,
    Account,
    AccountKey,
    Applied,
    BatchMode,
    CreateAccount,
    Grant,
    Hold,
    HoldState,
    Operation,
    PaymentMethod,
    RecordPaymentMethod,
    Transfer,
    TransferColumns,
)
from feint.credits.payments import CardDetails, associated_data, brand, fingerprint, seal, unseal_json
from feint.credits.store import reads
from feint.credits.store.ledger import PAYMENT_KEYSET, Loaded
from feint.credits.sweeper import sweep_forever
from feint.errors import ValidationFailed
from feint.platform.cache import CircuitBreaker
from feint.platform.crypto import KeyringCache, LocalMasterKey, MasterKeyProvider
from feint.platform.reads import decode_cursor, encode_cursor
from feint.platform.runtime import Platform
from feint.platform.secrets import derive

log = structlog.get_logger(component="feint.credits")
EXTRAS_KEY = "credits"
MASTER_KEY_PROVIDER_KEY = "master_key_provider"  # platform.extras hook for a KMS/Vault provider


class Reply:
    """A rendered answer and whether it was replayed from an idempotency record."""

    __slots__ = ("body", "replayed", "status")

    def __init__(self, rendered: Rendered, *, replayed: bool = False) -> None:
        self.status = rendered.status
        self.body = rendered.body
        self.replayed = replayed


def _reply(outcome: Outcome) -> Reply:
    return Reply(outcome.unwrap(), replayed=outcome.replayed)


def build_cache(platform: Platform, settings: CreditsSettings) -> BalanceCache:
    mode = settings.cache
    if mode == "auto":
        mode = "redis" if platform.settings.redis_url else "off"
    if mode == "memory":
        return MemoryBalanceCache(ttl_seconds=settings.cache_ttl_seconds)
    if mode == "redis" and platform.settings.redis_url:
        breaker = platform.redis.breaker if platform.redis is not None else CircuitBreaker("redis")
        return RedisBalanceCache(
            platform.settings.redis_url,
            prefix=platform.settings.redis_key_prefix,
            ttl_seconds=settings.cache_ttl_seconds,
            breaker=breaker,
        )
    return NoCache()


# --- rendering ------------------------------------------------------------------------------


def _created(applied: Applied) -> int:
    return 201 if applied.created else 200


def _only(results: Results) -> Applied:
    first = results[0]
    if not isinstance(first, Applied):  # pragma: no cover - single-operation failures never render
        raise first
    return first


def shown_grants(grants: Sequence[Grant], now: datetime) -> list[Grant]:
    """Grants with credits left or held, in burn order (expired ones last), at most GRANTS_SHOWN_MAX."""
    order = {g.id: i for i, g in enumerate(book_rules.burn_order(grants, now))}
    visible = [g for g in grants if g.remaining > 0 or g.held > 0]
    visible.sort(key=lambda g: (g.id not in order, order.get(g.id, 0), g.created_at, g.id))
    return visible[:GRANTS_SHOWN_MAX]


def account_entry(
    account: Account,
    grants: Sequence[Grant],
    now: datetime,
    *,
    next_hold: datetime | None,
    expired_holds: Sequence[Hold] = (),
) -> CachedAccount:
    """The cached (and answered) form of an account at ``now``, valid until its next scheduled change."""
    balance = book_rules.balance(account, grants, now, expired_holds=expired_holds)
    body = schemas.dumps(schemas.account_body(account, balance, shown_grants(grants, now)))
    moments = [g.expires_at for g in grants if g.remaining > 0 and g.expires_at is not None and g.expires_at > now]
    if next_hold is not None:
        moments.append(next_hold)
    until = min(moments).timestamp() if moments else None
    return CachedAccount(account.tenant_id, account.id, account.version, until, body)


def _render_account(results: Results, book: Book) -> Rendered:
    applied = _only(results)
    account = applied.value
    if not isinstance(account, Account):  # pragma: no cover - the rule returns an account
        raise TypeError("account expected")
    grants = book.grants.get(account.key, [])
    body = schemas.account_body(account, book_rules.balance(account, grants, book.now), shown_grants(grants, book.now))
    return Rendered(_created(applied), schemas.dumps(body))


def _render_value(value: Any) -> dict[str, Any]:
    if isinstance(value, Transfer):
        return schemas.transfer_body(value)
    if isinstance(value, Hold):
        return schemas.hold_body(value)
    if isinstance(value, tuple):
        return schemas.grant_issued_body(*value)
    if isinstance(value, PaymentMethod):
        return schemas.payment_method_body(value)
    raise TypeError(f"cannot render {type(value).__name__}")  # pragma: no cover


def _status(applied: Applied) -> int:
    """201 for something new, 200 for an existing object or a resolved hold."""
    if isinstance(applied.value, Hold) and applied.value.state is not HoldState.PENDING:
        return 200
    return _created(applied)


def _render_one(results: Results, book: Book) -> Rendered:
    applied = _only(results)
    return Rendered(_status(applied), schemas.dumps(_render_value(applied.value)))


def _render_batch(mode: BatchMode, *, everything: bool) -> Any:
    """The batch answer: every result, or (the default) only the failures, each with its index."""

    def render(results: Results, book: Book) -> Rendered:
        items = []
        failed = 0
        for index, result in enumerate(results):
            if isinstance(result, Applied):
                if everything:
                    items.append({"index": index, "status": _status(result), "result": _render_value(result.value)})
            else:
                failed += 1
                items.append({"index": index, "status": result.status, "error": schemas.problem_body(result)})
        body = {"mode": mode.value, "operations": len(results), "failed": failed, "results": items}
        return Rendered(200, schemas.dumps(body))

    return render


def _render_nothing(results: Results, book: Book) -> Rendered:
    return Rendered(204, b"")


# --- the service ----------------------------------------------------------------------------


class Credits:
    def __init__(self, platform: Platform, settings: CreditsSettings, *, cache: BalanceCache | None = None) -> None:
        self.platform = platform
        self.db = platform.db
        self.settings = settings
        self.engine = Engine(
            platform.db,
            retention_seconds=settings.idempotency_retention_seconds,
            post_in_database=settings.post_in_database,
        )
        self.cache = cache if cache is not None else build_cache(platform, settings)
        self.batcher = MicroBatcher(
            self._run, operations_max=settings.micro_batch_operations_max, workers=settings.micro_batch_workers
        )
        provider: MasterKeyProvider = platform.extras.get(MASTER_KEY_PROVIDER_KEY) or LocalMasterKey(
            platform.master_key
        )
        self.keyrings = KeyringCache(platform.db, provider)
        self.request_key = derive(platform.master_key, "credits-idempotency-request")
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.batcher.start()
        if self.settings.sweeper_interval_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(sweep_forever(self), name="credits-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.batcher.stop()
        await self.cache.close()

    # --- committing ---

    async def _run(self, jobs: Sequence[Job]) -> list[Outcome]:
        committed = await self.engine.run(jobs)
        if committed.book.changed_accounts or committed.book.new_accounts:
            try:
                await self.cache.put(self._entries(committed.book, committed.loaded))
            except Exception:  # committed already: the answer must not fail, nor the jobs run again
                log.exception("cache_write_through_failed")
                self.cache.forget()
        return committed.outcomes

    def _entries(self, book: Book, loaded: Loaded | None) -> list[CachedAccount]:
        next_hold: dict[AccountKey, datetime] = dict(loaded.next_hold_expiry) if loaded else {}
        for hold in book.holds.values():
            if hold.state is HoldState.PENDING and hold.expires_at > book.now:
                key = (hold.tenant_id, hold.debit_account_id)
                next_hold[key] = min(next_hold.get(key, hold.expires_at), hold.expires_at)
        changed = {**book.changed_accounts, **{a.key: a for a in book.new_accounts}}
        if len(changed) > WRITE_THROUGH_ANSWERS_MAX:
            # A large batch invalidates (a tombstone per account, at its new version) rather than
            # render thousands of answers nobody may read; the next read fills the entry.
            return [CachedAccount(a.tenant_id, a.id, a.version, None, b"") for a in changed.values()]
        return [
            account_entry(a, book.grants.get(k, []), book.now, next_hold=next_hold.get(k)) for k, a in changed.items()
        ]

    async def submit(self, job: Job) -> Outcome:
        if self.batcher.running and len(job.operations) == 1:
            return await self.batcher.submit(job)
        return (await self._run([job]))[0]

    async def one(self, op: Operation, *, idempotency: Idempotency | None) -> Reply:
        """Commit a single operation (micro-batched) and answer with what it made."""
        render = _render_account if isinstance(op, CreateAccount) else _render_one
        job = Job(
            tenant_id=op.tenant_id, operations=[op], mode=BatchMode.ATOMIC, render=render, idempotency=idempotency
        )
        return _reply(await self.submit(job))

    async def batch(
        self,
        ops: Sequence[Operation],
        *,
        tenant_id: UUID,
        mode: BatchMode,
        idempotency: Idempotency | None,
        everything: bool = False,
    ) -> Reply:
        book_rules.validate_batch(ops, tenant_id=tenant_id)
        job = Job(
            tenant_id=tenant_id,
            operations=ops if isinstance(ops, TransferColumns) else list(ops),  # columns stay columns
            mode=mode,
            render=_render_batch(mode, everything=everything),
            idempotency=idempotency,
            batch=True,
            everything=everything,
        )
        return _reply((await self._run([job]))[0])

    async def run_quietly(self, ops: Sequence[Operation]) -> int:
        """Commit operations that answer nobody (the sweeper's); returns how many changed something."""
        jobs = [
            Job(tenant_id=op.tenant_id, operations=[op], mode=BatchMode.ATOMIC, render=_render_nothing) for op in ops
        ]
        outcomes = await self._run(jobs)
        return sum(o.error is None for o in outcomes)

    # --- reads ---

    async def account(self, *, tenant_id: UUID, account_id: UUID) -> bytes:
        cached = await self.cache.get(tenant_id, account_id)
        if cached is not None:
            return cached.body
        async with self.db.connection() as conn:
            snapshot = await reads.account_snapshot(conn, tenant_id=tenant_id, account_id=account_id)
        if snapshot is None:
            raise AccountNotFound(account_id=account_id, field="id")
        entry = account_entry(
            snapshot.account,
            snapshot.grants,
            snapshot.now,
            next_hold=snapshot.next_hold_expiry,
            expired_holds=snapshot.expired_holds,
        )
        await self.cache.put([entry])
        return entry.body

    async def accounts(
        self, *, tenant_id: UUID, kind: str | None, code: str | None, cursor: str | None, limit: int
    ) -> bytes:
        after = _uuid_cursor(cursor)
        async with self.db.connection() as conn:
            found = await reads.list_accounts(conn, tenant_id=tenant_id, kind=kind, code=code, after=after, limit=limit)
            snapshots = [await reads.account_snapshot(conn, tenant_id=tenant_id, account_id=a.id) for a in found]
        bodies = [
            schemas.account_body(
                s.account,
                book_rules.balance(s.account, s.grants, s.now, expired_holds=s.expired_holds),
                shown_grants(s.grants, s.now),
            )
            for s in snapshots
            if s is not None
        ]
        next_cursor = encode_cursor(str(found[-1].id)) if len(found) == limit else None
        return schemas.dumps({"accounts": bodies, "next_cursor": next_cursor})

    async def entries(
        self, *, tenant_id: UUID, account_id: UUID, cursor: str | None, limit: int, as_of: datetime | None
    ) -> bytes:
        before = _int_cursor(cursor)
        async with self.db.connection() as conn:
            snapshot = await reads.account_snapshot(conn, tenant_id=tenant_id, account_id=account_id)
            if snapshot is None:
                raise AccountNotFound(account_id=account_id, field="id")
            rows = await reads.entries(
                conn, tenant_id=tenant_id, account_id=account_id, before_seq=before, limit=limit, as_of=as_of
            )
            balance = snapshot.account.posted
            if as_of is not None:
                balance = await reads.balance_at(conn, tenant_id=tenant_id, account_id=account_id, as_of=as_of)
        next_cursor = encode_cursor(str(rows[-1][0])) if len(rows) == limit else None
        return schemas.dumps(
            {
                "account_id": account_id,
                "as_of": as_of,
                "balance": balance,
                "entries": [schemas.entry_body(account_id, t) for _, t in rows],
                "next_cursor": next_cursor,
            }
        )

    async def hold(self, *, tenant_id: UUID, hold_id: UUID) -> bytes:
        async with self.db.connection() as conn:
            found = await reads.hold(conn, tenant_id=tenant_id, hold_id=hold_id)
        if found is None:
            raise HoldNotFound(hold_id=hold_id)
        return schemas.dumps(schemas.hold_body(found))

    # --- payment methods ---

    async def add_payment_method(
        self, *, tenant_id: UUID, card_number: str, details: CardDetails, idempotency: Idempotency | None
    ) -> Reply:
        method_id = uuid.uuid4()
        keyring = await self.keyrings.get(PAYMENT_KEYSET)
        op = RecordPaymentMethod(
            tenant_id=tenant_id,
            id=method_id,
            last4=card_number[-4:],
            brand=brand(card_number),
            fingerprint=fingerprint(self.platform.master_key, tenant_id=tenant_id, number=card_number),
            sealed=seal(keyring, details, tenant_id=tenant_id, method_id=method_id),
        )
        return await self.one(op, idempotency=idempotency)

    async def payment_method(self, *, tenant_id: UUID, method_id: UUID) -> bytes:
        async with self.db.connection() as conn:
            method = await reads.payment_method(conn, tenant_id=tenant_id, method_id=method_id)
        if method is None:
            raise PaymentMethodNotFound(payment_method_id=method_id)
        plaintext = await self.keyrings.decrypt(
            PAYMENT_KEYSET, method.sealed, associated_data=associated_data(tenant_id=tenant_id, method_id=method_id)
        )
        return schemas.dumps(schemas.payment_method_body(method, unseal_json(plaintext)))


def _uuid_cursor(cursor: str | None) -> UUID | None:
    if cursor is None:
        return None
    try:
        return UUID(decode_cursor(cursor))
    except ValueError:
        raise ValidationFailed(
            "cursor is not one this API gave", errors=[{"field": "query.cursor", "problem": "invalid"}]
        ) from None


def _int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    text = decode_cursor(cursor)
    if not text.isdigit():
        raise ValidationFailed(
            "cursor is not one this API gave", errors=[{"field": "query.cursor", "problem": "invalid"}]
        )
    return int(text)


def service_of(platform: Platform) -> Credits:
    found = platform.extras.get(EXTRAS_KEY)
    if not isinstance(found, Credits):  # pragma: no cover - the app factory sets it
        raise TypeError("credits service not created")
    return found
