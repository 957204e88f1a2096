"""The express-4 decoy answers the whole probe corpus as the real Express 4 on Node does (>= 95% identical)."""

from __future__ import annotations

import pytest

from tests.external.camouflage.real_express import real_express  # noqa: F401 (fixture)
from tests.external.camouflage.test_fidelity import IDENTICAL_SHARE_MIN, _score, www  # noqa: F401 (fixture)

pytestmark = pytest.mark.external


async def test_express_decoy_matches_real_express(real_express: tuple[int, str]) -> None:  # noqa: F811
    """At least 95% of the probes get the same bytes and close behaviour from the Express decoy."""
    assert await _score(*real_express) >= IDENTICAL_SHARE_MIN
