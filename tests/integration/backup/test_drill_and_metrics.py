"""The drill passes end to end and reports its figures; metrics reach a Pushgateway-shaped HTTP receiver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from feint.backup import drill
from feint.backup.notify import push_metrics
from feint.settings import Settings

pytestmark = pytest.mark.integration


def test_drill_restores_and_measures(database_url: str, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Backup, destroy, restore, verify: no problems; the writes after the backup are the ones lost."""
    settings = make_settings(database_url=database_url, backup_url=(tmp_path / "b").as_uri())
    said: list[str] = []
    result = drill.run_drill(settings=settings, server_url=database_url, transfers=30, say=said.append)
    assert result.problems == []
    assert result.transfers_before_backup == 30 and result.transfers_lost == 3
    assert result.rto_seconds > 0 and result.loss_window_seconds > 0
    assert any("destroyed" in line for line in said)


def test_metrics_pushed_per_operation(receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    """create's success is POSTed to /metrics/job/feint-backup/instance/<db>/operation/create with its gauges."""
    url, seen = receiver
    assert push_metrics(url, operation="create", database="feint", succeeded=True, duration_seconds=1.5,
                        stored_bytes=10, database_bytes=20) is None  # fmt: skip
    method, path, body = seen[0]
    assert method == "POST" and path == "/metrics/job/feint-backup/instance/feint/operation/create"
    text = body.decode()
    assert 'feint_backup_last_success_timestamp_seconds{operation="create"}' in text
    assert "feint_backup_last_stored_bytes 10.0" in text
    assert push_metrics(None, operation="verify", database="x", succeeded=False, duration_seconds=1) is None
    from tests.conftest import free_port

    problem = push_metrics(f"http://127.0.0.1:{free_port()}", operation="verify", database="x", succeeded=False,
                           duration_seconds=1.0)  # fmt: skip
    assert problem is not None
