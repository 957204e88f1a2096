"""What a process shares between its services: settings, the one pool, the cache, the key resolver.

`feint up` builds one `Platform` and hands it to the three service apps it runs, so the process
keeps one connection pool; `feint serve NAME` builds one for its single app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feint.platform.cache import Cache, MemoryCache, MemoryRateLimiter, RateLimiter, RedisBackend
from feint.platform.db import Database
from feint.platform.keys import KeyHasher, KeyResolver
from feint.platform.ratelimit import LeasedRateLimiter
from feint.platform.secrets import derive, load_master_key
from feint.platform.telemetry import configure_tracing, shutdown_tracing
from feint.settings import Settings


@dataclass
class Platform:
    settings: Settings
    database_url: str
    db: Database
    cache: Cache
    limiter: RateLimiter
    keys: KeyResolver
    master_key: bytes = field(repr=False)
    redis: RedisBackend | None = None
    # Domain singletons (e.g. the credits service's keyset) hang here, created on first use.
    extras: dict[str, Any] = field(default_factory=dict)
    _opened: int = 0

    async def open(self) -> None:
        """Open shared resources once, however many apps share this platform."""
        self._opened += 1
        if self._opened == 1:
            await self.db.open()

    async def close(self) -> None:
        self._opened -= 1
        if self._opened == 0:
            await self.limiter.close()
            await self.db.close()
            await self.cache.close()
            shutdown_tracing()


def build(
    settings: Settings,
    *,
    database_url: str,
) -> Platform:
    """Wire the platform for one process from settings and the resolved database URL."""
    master_key = load_master_key(settings)
    configure_tracing(endpoint=settings.otlp_endpoint)
    db = Database(database_url, role=settings.database_role or None, size_max=settings.db_pool_size_max)
    redis: RedisBackend | None = None
    cache: Cache
    limiter: RateLimiter
    if settings.redis_url:
        redis = RedisBackend(settings.redis_url, prefix=settings.redis_key_prefix)
        # Leases of tokens from the shared bucket: no Redis round trip per request.
        cache, limiter = redis, LeasedRateLimiter(redis)
    else:
        cache, limiter = MemoryCache(), MemoryRateLimiter()
    hasher = KeyHasher(derive(master_key, "api-key-hash"))
    return Platform(
        settings=settings,
        database_url=database_url,
        db=db,
        cache=cache,
        limiter=limiter,
        keys=KeyResolver(db, hasher, cache_seconds=settings.auth_cache_seconds),
        master_key=master_key,
        redis=redis,
    )
