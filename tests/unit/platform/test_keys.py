"""Scopes, key shape and tenant names."""

from __future__ import annotations

import uuid

import pytest

from feint.errors import ConfigError, ValidationFailed
from feint.platform.keys import KEY_PREFIX, KeyHasher, Principal, new_key, validate_tenant_name

pytestmark = pytest.mark.unit


def _p(scope: str) -> Principal:
    return Principal(
        key_id=uuid.uuid4(), tenant_id=None if scope == "operator" else uuid.uuid4(), tenant_name=None, scope=scope
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("has", "needs", "ok"),
    [
        ("read", "read", True),
        ("read", "write", False),
        ("write", "read", True),
        ("write", "admin", False),
        ("admin", "write", True),
        ("admin", "operator", False),
        ("operator", "operator", True),
        ("operator", "admin", True),
    ],
)
def test_scope_order(has: str, needs: str, ok: bool) -> None:
    """read ⊂ write ⊂ admin within a tenant; only operator keys reach operator routes."""
    assert _p(has).allows(needs) is ok  # type: ignore[arg-type]


def test_keys_are_random_and_long() -> None:
    """A key carries ≥ 128 bits of randomness and its hash depends on the server secret."""
    a, b = new_key(), new_key()
    assert a != b and a.startswith(KEY_PREFIX)
    assert len(a) - len(KEY_PREFIX) >= 32
    assert KeyHasher(b"x" * 32).hash(a) != KeyHasher(b"y" * 32).hash(a)
    with pytest.raises(ConfigError):
        KeyHasher(b"short")


@pytest.mark.parametrize("name", ["", "Acme", "-x", "a" * 64, "a b", "ü"])
def test_bad_tenant_names(name: str) -> None:
    """Tenant names are short lower-case slugs."""
    with pytest.raises(ValidationFailed):
        validate_tenant_name(name)


def test_good_tenant_name() -> None:
    """A slug passes unchanged."""
    assert validate_tenant_name("acme-eu.1_x") == "acme-eu.1_x"
