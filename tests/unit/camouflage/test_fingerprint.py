"""The fh1 head fingerprint and the client key."""

from __future__ import annotations

import pytest

from feint.camouflage.engine.fingerprint import CLIENT_KEY_HEX, client_key, fingerprint

pytestmark = pytest.mark.unit


def test_same_shape_same_fingerprint() -> None:
    """Two heads with the same names in the same order match whatever their values."""
    a = [(b"Host", b"a.example"), (b"User-Agent", b"x"), (b"Accept", b"*/*")]
    b = [(b"Host", b"b.example"), (b"User-Agent", b"y"), (b"Accept", b"text/html")]
    assert fingerprint(a, b"HTTP/1.1") == fingerprint(b, b"HTTP/1.1")


def test_order_case_and_version_change_it() -> None:
    """Order, the spelling of names and the version each change the fingerprint."""
    a = [(b"Host", b"x"), (b"Accept", b"*/*")]
    assert fingerprint(a, b"HTTP/1.1") != fingerprint(list(reversed(a)), b"HTTP/1.1")
    assert fingerprint(a, b"HTTP/1.1") != fingerprint([(b"host", b"x"), (b"accept", b"*/*")], b"HTTP/1.1")
    assert fingerprint(a, b"HTTP/1.1") != fingerprint(a, b"HTTP/1.0")


def test_format() -> None:
    """fh1_<version>_<case>_<12 hex>."""
    assert fingerprint([(b"host", b"x")], b"HTTP/1.1").startswith("fh1_11_l_")
    assert fingerprint([(b"Host", b"x")], b"HTTP/1.0").startswith("fh1_10_t_")
    assert fingerprint([(b"Host", b"x"), (b"x-a", b"")], None).startswith("fh1_09_m_")
    assert fingerprint([], b"HTTP/2.0").startswith("fh1_xx_n_")
    assert len(fingerprint([], b"HTTP/1.1").rsplit("_", 1)[1]) == 12


def test_client_key() -> None:
    """The key is hex of fixed length and depends on address, agent and fingerprint."""
    key = client_key(ip="192.0.2.1", user_agent=b"ua", head_fingerprint="fh1_11_t_0")
    assert len(key) == CLIENT_KEY_HEX and int(key, 16) >= 0
    assert key != client_key(ip="192.0.2.2", user_agent=b"ua", head_fingerprint="fh1_11_t_0")
    assert key != client_key(ip="192.0.2.1", user_agent=None, head_fingerprint="fh1_11_t_0")
    assert key != client_key(ip="192.0.2.1", user_agent=b"ua", head_fingerprint="fh1_11_t_1")
