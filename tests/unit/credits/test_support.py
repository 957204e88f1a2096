"""Small pieces around the rules: stored errors, cursors, settings, the in-process cache, keysets."""

from __future__ import annotations

import uuid

import pytest
import tink
from tink import aead

from feint.credits.cache import CachedAccount, MemoryBalanceCache, NoCache
from feint.credits.config import CreditsSettings, load_credits_settings
from feint.credits.errors import InsufficientFunds, error_from_stored, stored_problem
from feint.credits.service import _int_cursor, _uuid_cursor, decode_cursor, encode_cursor
from feint.errors import ConfigError, IdempotencyKeyReused, ValidationFailed
from feint.platform import crypto

pytestmark = pytest.mark.unit


def test_stored_errors_come_back_as_the_same_class() -> None:
    """A failure replayed from an idempotency record has the original slug, status and data."""
    original = InsufficientFunds(account_id=uuid.uuid4(), available=3, amount=9)
    again = error_from_stored(stored_problem(original))
    assert type(again) is InsufficientFunds
    assert (again.status, again.slug, again.detail, again.extensions) == (
        409,
        "insufficient-funds",
        original.detail,
        original.extensions,
    )
    reused = error_from_stored({"slug": "idempotency-key-reused", "detail": "x", "extensions": {}})
    assert type(reused) is IdempotencyKeyReused
    unknown = error_from_stored({"slug": "never-heard-of-it", "detail": "d"})
    assert unknown.status == 409


def test_cursors_round_trip_and_reject_garbage() -> None:
    """Cursors are opaque and a forged one is a 422 naming the parameter."""
    some = uuid.uuid4()
    assert _uuid_cursor(encode_cursor(str(some))) == some
    assert _int_cursor(encode_cursor("42")) == 42
    assert _uuid_cursor(None) is None and _int_cursor(None) is None
    for bad in ("!!!", encode_cursor("nope")):
        with pytest.raises(ValidationFailed):
            _uuid_cursor(bad)
    with pytest.raises(ValidationFailed):
        _int_cursor(encode_cursor("-1"))
    with pytest.raises(ValidationFailed):
        decode_cursor("\udcff")


def test_settings_keep_idempotency_keys_a_day_at_least(monkeypatch: pytest.MonkeyPatch) -> None:
    """FEINT_CREDITS_IDEMPOTENCY_RETENTION_SECONDS below 24 h stops start-up naming the variable."""
    assert CreditsSettings().idempotency_retention_seconds == 86_400
    monkeypatch.setenv("FEINT_CREDITS_IDEMPOTENCY_RETENTION_SECONDS", "60")
    with pytest.raises(ConfigError) as caught:
        load_credits_settings()
    assert caught.value.variable == "FEINT_CREDITS_IDEMPOTENCY_RETENTION_SECONDS"
    monkeypatch.setenv("FEINT_CREDITS_IDEMPOTENCY_RETENTION_SECONDS", "172800")
    assert load_credits_settings().idempotency_retention_seconds == 172_800


async def test_memory_cache_keeps_the_newest_version_and_honours_until() -> None:
    """An older version never replaces a newer one; an entry past its until is a miss."""
    import time

    cache = MemoryBalanceCache(ttl_seconds=30)
    tenant, account = uuid.uuid4(), uuid.uuid4()
    await cache.put([CachedAccount(tenant, account, 2, None, b"v2")])
    await cache.put([CachedAccount(tenant, account, 1, None, b"v1")])
    assert (await cache.get(tenant, account)).body == b"v2"  # type: ignore[union-attr]
    await cache.put([CachedAccount(tenant, account, 3, time.time() + 0.5, b"v3")])
    assert await cache.get(tenant, account) is None  # within the clock-skew margin of its until
    assert await cache.get(uuid.uuid4(), account) is None
    small = MemoryBalanceCache(ttl_seconds=30, entries_max=1)
    await small.put([CachedAccount(tenant, account, 1, None, b"a"), CachedAccount(tenant, uuid.uuid4(), 1, None, b"b")])
    assert await small.get(tenant, account) is None
    await small.close()
    none = NoCache()
    await none.put([])
    assert await none.get(tenant, account) is None
    await none.close()


async def test_memory_cache_tombstones() -> None:
    """A tombstone hides an entry until an answer of its version or newer arrives."""
    cache = MemoryBalanceCache(ttl_seconds=30)
    tenant, account = uuid.uuid4(), uuid.uuid4()
    await cache.put([CachedAccount(tenant, account, 1, None, b"one"), CachedAccount(tenant, account, 2, None, b"")])
    assert await cache.get(tenant, account) is None
    await cache.put([CachedAccount(tenant, account, 2, None, b"two")])
    assert (await cache.get(tenant, account)).body == b"two"  # type: ignore[union-attr]


def test_cached_account_encoding() -> None:
    """Version and until travel with the body and come back unchanged."""
    tenant, account = uuid.uuid4(), uuid.uuid4()
    for until in (None, 1893456000.123456):
        entry = CachedAccount(tenant, account, 7, until, b'{"posted":1}\n')
        assert CachedAccount.decode(tenant, account, entry.encode()) == entry
    tombstone = CachedAccount(tenant, account, 8, None, b"")
    assert CachedAccount.decode(tenant, account, tombstone.encode()) == tombstone
    assert not tombstone.fresh(0)
    assert CachedAccount(tenant, account, 1, None, b"{}").fresh(0)


def test_keyset_rotation_keeps_old_ciphertexts_readable() -> None:
    """A rotated keyset encrypts with the new primary and still decrypts what the old one made."""
    provider = crypto.LocalMasterKey(b"m" * 32)
    handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
    sealed = crypto.seal_keyset(handle, provider, "k")
    ring = crypto.Keyring("k", crypto.open_keyset(sealed, provider, "k"))
    old = ring.encrypt(b"secret", associated_data=b"ad")
    rotated = crypto.Keyring("k", crypto.add_primary_key(crypto.open_keyset(sealed, provider, "k")))
    assert rotated.info.primary_key_id != ring.info.primary_key_id
    assert rotated.decrypt(old, associated_data=b"ad") == b"secret"
    assert not rotated.is_current(old) and rotated.is_current(rotated.encrypt(b"x", associated_data=b""))
    assert rotated.key_id_of(b"\x00short") is None
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_keyset(sealed, crypto.LocalMasterKey(b"n" * 32), "k")
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_keyset(sealed, provider, "another-name")
