"""Settings are validated at start and a bad value names its variable."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from feint.errors import ConfigError
from feint.platform.secrets import derive, load_master_key
from feint.settings import Settings, decode_master_key, get_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEINT_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()


def test_defaults() -> None:
    """With nothing set the documented defaults hold."""
    s = get_settings()
    assert (s.credits_port, s.shadow_port, s.camouflage_port, s.gateway_port) == (5004, 5005, 5006, 8080)
    assert s.database_url is None and s.redis_url is None
    assert s.home_dir == Path("~/.local/share/feint").expanduser()
    assert not s.tls_enabled


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FEINT_CREDITS_PORT", "abc", "integer port"),
        ("FEINT_GATEWAY_PORT", "70000", "integer port"),
        ("FEINT_DATABASE_URL", "mysql://x", "postgresql://"),
        ("FEINT_REDIS_URL", "http://x", "redis://"),
        ("FEINT_UPSTREAM_URL", "ftp://x", "http(s)://"),
        ("FEINT_LOG_LEVEL", "loud", "debug, info"),
        ("FEINT_MASTER_KEY", "not-base64!", "base64 of 32"),
        ("FEINT_MASTER_KEY", base64.b64encode(b"short").decode(), "base64 of 32"),
        ("FEINT_DATABASE_ROLE", "Robert'); DROP", "role name"),
    ],
)
def test_bad_value_names_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str) -> None:
    """Each malformed variable raises ConfigError naming it and the expected form."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        get_settings()
    assert caught.value.variable == variable
    assert expected in caught.value.expected
    if variable == "FEINT_MASTER_KEY":
        assert value not in str(caught.value)  # a secret is never echoed


def test_tls_needs_both_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A certificate without its key is refused."""
    monkeypatch.setenv("FEINT_TLS_CERT_FILE", str(tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="FEINT_TLS_CERT_FILE"):
        get_settings()


def test_generated_master_key_is_private(tmp_path: Path) -> None:
    """Without a key, development generates one with mode 0600 and reuses it."""
    s = Settings(home=tmp_path)
    first = load_master_key(s)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(s) == first
    assert len(first) == 32


def test_production_refuses_without_key(tmp_path: Path) -> None:
    """FEINT_ENV=production without a master key stops start-up."""
    with pytest.raises(ConfigError, match="FEINT_MASTER_KEY"):
        load_master_key(Settings(env="production", home=tmp_path))
    assert not (tmp_path / "master.key").exists()


def test_master_key_file(tmp_path: Path) -> None:
    """The key is read from FEINT_MASTER_KEY_FILE; a bad file is named."""
    raw = bytes(range(32))
    good = tmp_path / "k"
    good.write_text(base64.b64encode(raw).decode() + "\n")
    assert load_master_key(Settings(master_key_file=good)) == raw
    bad = tmp_path / "bad"
    bad.write_text("nope")
    with pytest.raises(ConfigError, match="FEINT_MASTER_KEY_FILE"):
        load_master_key(Settings(master_key_file=bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_master_key(Settings(master_key_file=tmp_path / "missing"))


def test_master_key_env_wins() -> None:
    """FEINT_MASTER_KEY decodes to the same 32 bytes."""
    raw = b"\x01" * 32
    assert load_master_key(Settings(master_key=base64.b64encode(raw).decode())) == raw
    assert decode_master_key(base64.b64encode(raw).decode()) == raw


def test_derive_separates_purposes() -> None:
    """Subkeys differ by purpose and are stable (HKDF)."""
    k = b"\x02" * 32
    assert derive(k, "a") == derive(k, "a")
    assert derive(k, "a") != derive(k, "b")
    assert len(derive(k, "a")) == 32
