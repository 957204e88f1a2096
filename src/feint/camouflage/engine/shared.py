"""Bandit state in Redis, shared by replicas, written through to PostgreSQL.

One hash per tenant and band (``<prefix>camouflage:bandit:<tenant>:<band>``) with fields
``<arm>|pulls``, ``<arm>|sum`` and ``<arm>|active``. A session's end is one MULTI of HINCRBY and
HINCRBYFLOAT (atomic; replicas never lose each other's increments); a rotation is a Lua script
that retires an arm only if it is still active, so two replicas deciding at once rotate once.
Every write goes to PostgreSQL first (its own atomic increments): PostgreSQL is the truth, Redis
the shared fast copy, seeded from PostgreSQL when its hash is missing.

Redis down never stops decoy selection: every Redis call goes through the platform's circuit
breaker (`feint.platform.cache.RedisBackend`), and a failed or refused call falls back to
PostgreSQL (counted in ``feint_camouflage_bandit_redis_fallbacks_total`` and logged). A band whose
Redis write was missed is marked stale in this process; the next time Redis answers, its hash is
rebuilt from PostgreSQL (``feint_camouflage_bandit_redis_resyncs_total``) before it is read or
incremented again, so the two copies agree again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

import structlog
from prometheus_client import Counter

from feint.camouflage.engine.bandit import ArmStats
from feint.camouflage.engine.bands import Band
from feint.camouflage.store import PostgresBanditStore
from feint.errors import DependencyUnavailable
from feint.platform.cache import RedisBackend

KEY_TTL_SECONDS: Final = 30 * 24 * 3600  # refreshed on every write; PostgreSQL keeps the history
_ROTATE_LUA: Final = """
if redis.call('HGET', KEYS[1], ARGV[1] .. '|active') ~= '1' then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1] .. '|active', '0')
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[2] .. '|active', '1')
end
return 1
"""

REDIS_FALLBACKS = Counter(
    "feint_camouflage_bandit_redis_fallbacks_total",
    "Bandit operations served by PostgreSQL alone because Redis failed or its circuit was open.",
    ["op"],
)
REDIS_RESYNCS = Counter(
    "feint_camouflage_bandit_redis_resyncs_total",
    "Bandit hashes rebuilt in Redis from PostgreSQL after Redis missed writes.",
)

log = structlog.get_logger(component="feint.camouflage.bandit")


class SharedBanditStore:
    """The `BanditStore` of a deployment with Redis: reads from Redis, writes to both; PostgreSQL
    alone while Redis is unavailable."""

    def __init__(self, redis: RedisBackend, durable: PostgresBanditStore) -> None:
        self.redis = redis
        self.durable = durable
        self._rotate = redis.client.register_script(_ROTATE_LUA)
        # Bands whose Redis hash missed a write of this process (rebuilt when Redis answers again).
        self.stale: set[tuple[uuid.UUID, Band]] = set()

    def _key(self, tenant_id: uuid.UUID, band: Band) -> str:
        return self.redis.key(f"camouflage:bandit:{tenant_id}:{band.value}")

    def _fell_back(self, op: str, tenant_id: uuid.UUID, band: Band, exc: DependencyUnavailable) -> None:
        self.stale.add((tenant_id, band))
        REDIS_FALLBACKS.labels(op).inc()
        log.warning("bandit_redis_unavailable", op=op, tenant=str(tenant_id), band=band.value, error=str(exc))

    async def _resync(self, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        """Replace the band's Redis hash by PostgreSQL's rows (one MULTI); the rows."""
        stats = await self.durable.arms(tenant_id=tenant_id, band=band)
        key = self._key(tenant_id, band)
        pipe = self.redis.client.pipeline(transaction=True)
        pipe.delete(key)
        for s in stats:
            for name, value in _fields(s).items():
                pipe.hset(key, name, value)
        pipe.expire(key, KEY_TTL_SECONDS)
        await self.redis.call("bandit-resync", pipe.execute())
        self.stale.discard((tenant_id, band))
        REDIS_RESYNCS.inc()
        log.info("bandit_redis_resynced", tenant=str(tenant_id), band=band.value, arms=len(stats))
        return stats

    async def arms(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        try:
            if (tenant_id, band) in self.stale:
                return await self._resync(tenant_id, band)
            raw: dict[bytes, bytes] = await self.redis.call(
                "bandit-read", self.redis.client.hgetall(self._key(tenant_id, band))
            )
            if not raw:
                stats = await self.durable.arms(tenant_id=tenant_id, band=band)
                await self._seed(tenant_id, band, stats)
                return stats
        except DependencyUnavailable as exc:
            self._fell_back("read", tenant_id, band, exc)
            return await self.durable.arms(tenant_id=tenant_id, band=band)
        fields: dict[str, dict[str, str]] = {}
        for name, value in raw.items():
            arm, _, what = name.decode().rpartition("|")
            fields.setdefault(arm, {})[what] = value.decode()
        return [
            ArmStats(
                arm=arm,
                band=band,
                pulls=int(f.get("pulls", "0")),
                reward_sum=float(f.get("sum", "0")),
                active=f.get("active") == "1",
            )
            for arm, f in sorted(fields.items())
        ]

    async def _seed(self, tenant_id: uuid.UUID, band: Band, stats: Sequence[ArmStats]) -> None:
        if not stats:
            return
        key = self._key(tenant_id, band)
        pipe = self.redis.client.pipeline(transaction=True)
        for s in stats:
            for name, value in _fields(s).items():
                pipe.hsetnx(key, name, value)
        pipe.expire(key, KEY_TTL_SECONDS)
        await self.redis.call("bandit-seed", pipe.execute())

    async def ensure(self, *, tenant_id: uuid.UUID, band: Band, arms: Sequence[str], active: Sequence[str]) -> None:
        await self.durable.ensure(tenant_id=tenant_id, band=band, arms=arms, active=active)
        stats = await self.durable.arms(tenant_id=tenant_id, band=band)
        try:
            if (tenant_id, band) in self.stale:
                await self._resync(tenant_id, band)
            else:
                await self._seed(tenant_id, band, stats)
        except DependencyUnavailable as exc:
            self._fell_back("ensure", tenant_id, band, exc)

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        await self.durable.record(tenant_id=tenant_id, band=band, arm=arm, reward=reward)
        try:
            if (tenant_id, band) in self.stale:  # the rebuilt hash includes this session
                await self._resync(tenant_id, band)
                return
            key = self._key(tenant_id, band)
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.hincrby(key, f"{arm}|pulls", 1)
            pipe.hincrbyfloat(key, f"{arm}|sum", reward)
            pipe.hsetnx(key, f"{arm}|active", "1")  # as PostgreSQL inserts an arm with no row
            pipe.expire(key, KEY_TTL_SECONDS)
            await self.redis.call("bandit-record", pipe.execute())
        except DependencyUnavailable as exc:
            self._fell_back("record", tenant_id, band, exc)

    async def rotate(self, *, tenant_id: uuid.UUID, band: Band, retire: str, explore: str | None) -> bool:
        try:
            if (tenant_id, band) in self.stale:
                await self._resync(tenant_id, band)
            done = await self.redis.call(
                "bandit-rotate", self._rotate(keys=[self._key(tenant_id, band)], args=[retire, explore or ""])
            )
        except DependencyUnavailable as exc:
            # PostgreSQL's rotation is conditional too (only while ``retire`` is active): once.
            self._fell_back("rotate", tenant_id, band, exc)
            return await self.durable.rotate(tenant_id=tenant_id, band=band, retire=retire, explore=explore)
        if int(done) != 1:
            return False
        await self.durable.rotate(tenant_id=tenant_id, band=band, retire=retire, explore=explore)
        return True


def _fields(s: ArmStats) -> dict[str, str | int]:
    """The hash fields of one arm."""
    return {f"{s.arm}|pulls": s.pulls, f"{s.arm}|sum": repr(s.reward_sum), f"{s.arm}|active": "1" if s.active else "0"}
