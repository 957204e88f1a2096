"""Bandit state in Redis, shared by replicas, written through to PostgreSQL.

One hash per tenant and band (``<prefix>camouflage:bandit:<tenant>:<band>``) with fields
``<arm>|pulls``, ``<arm>|sum`` and ``<arm>|active``. A session's end is one MULTI of HINCRBY and
HINCRBYFLOAT (atomic; replicas never lose each other's increments); a rotation is a Lua script
that retires an arm only if it is still active, so two replicas deciding at once rotate once.
Every write goes to PostgreSQL too (its own atomic increments), which is where a Redis that lost
its data is seeded from.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from feint.camouflage.engine.bandit import ArmStats
from feint.camouflage.engine.bands import Band
from feint.camouflage.store import PostgresBanditStore
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


class SharedBanditStore:
    """The `BanditStore` of a deployment with Redis: reads from Redis, writes to both."""

    def __init__(self, redis: RedisBackend, durable: PostgresBanditStore) -> None:
        self.redis = redis
        self.durable = durable
        self._rotate = redis.client.register_script(_ROTATE_LUA)

    def _key(self, tenant_id: uuid.UUID, band: Band) -> str:
        return self.redis.key(f"camouflage:bandit:{tenant_id}:{band.value}")

    async def arms(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        raw: dict[bytes, bytes] = await self.redis.call(
            "bandit-read", self.redis.client.hgetall(self._key(tenant_id, band))
        )
        if not raw:
            stats = await self.durable.arms(tenant_id=tenant_id, band=band)
            await self._seed(tenant_id, band, stats)
            return stats
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
            pipe.hsetnx(key, f"{s.arm}|pulls", s.pulls)
            pipe.hsetnx(key, f"{s.arm}|sum", repr(s.reward_sum))
            pipe.hsetnx(key, f"{s.arm}|active", "1" if s.active else "0")
        pipe.expire(key, KEY_TTL_SECONDS)
        await self.redis.call("bandit-seed", pipe.execute())

    async def ensure(self, *, tenant_id: uuid.UUID, band: Band, arms: Sequence[str], active: Sequence[str]) -> None:
        await self.durable.ensure(tenant_id=tenant_id, band=band, arms=arms, active=active)
        await self._seed(tenant_id, band, await self.durable.arms(tenant_id=tenant_id, band=band))

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        await self.durable.record(tenant_id=tenant_id, band=band, arm=arm, reward=reward)
        key = self._key(tenant_id, band)
        pipe = self.redis.client.pipeline(transaction=True)
        pipe.hincrby(key, f"{arm}|pulls", 1)
        pipe.hincrbyfloat(key, f"{arm}|sum", reward)
        pipe.expire(key, KEY_TTL_SECONDS)
        await self.redis.call("bandit-record", pipe.execute())

    async def rotate(self, *, tenant_id: uuid.UUID, band: Band, retire: str, explore: str | None) -> bool:
        done = await self.redis.call(
            "bandit-rotate", self._rotate(keys=[self._key(tenant_id, band)], args=[retire, explore or ""])
        )
        if int(done) != 1:
            return False
        await self.durable.rotate(tenant_id=tenant_id, band=band, retire=retire, explore=explore)
        return True
