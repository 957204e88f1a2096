"""`feint backup …` end to end in-process: keygen, create, list --json, verify, restore guard, prune, lifecycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feint.backup.cli import lifecycle_rules
from feint.backup.seaweed import LocalS3
from feint.backup.storage import S3Storage
from feint.cli import app
from feint.settings import get_settings
from tests.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def env(clean_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "FEINT_ENV": "test",
        "FEINT_DATABASE_URL": clean_db,
        "FEINT_MASTER_KEY": TEST_MASTER_KEY,
        "FEINT_BACKUP_URL": (tmp_path / "backups").as_uri(),
        "FEINT_BACKUP_KEYSET": str(tmp_path / "keyset"),
        "FEINT_HOME": str(tmp_path / "home"),
        "FEINT_LOG_LEVEL": "warning",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["backup", *args])
    return result.exit_code, result.stdout, result.stderr


def test_commands_end_to_end(env: dict[str, str]) -> None:
    """keygen, create, list --json, verify latest, restore guard, prune --dry-run, rotate-key all behave."""
    assert run("keygen", "--out", env["FEINT_BACKUP_KEYSET"])[0] == 0
    code, _, err = run("keygen", "--out", env["FEINT_BACKUP_KEYSET"])
    assert code == 1 and "refusing to overwrite" in err
    code, out, err = run("create")
    assert code == 0, err
    backup_id = out.strip()
    code, out, _ = run("list", "--json")
    listed = json.loads(out)
    assert code == 0 and [b["id"] for b in listed["backups"]] == [backup_id]
    code, _, err = run("verify", "latest")
    assert code == 0 and f"verified {backup_id}" in err
    code, _, err = run("restore", backup_id)
    assert code == 1 and "pass --force" in err
    assert run("create")[0] == 0
    code, out, _ = run("prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0", "--dry-run")
    assert code == 0 and out.count("would delete") == 1 and backup_id in out
    assert len(json.loads(run("list", "--json")[1])["backups"]) == 2
    assert run("rotate-key")[0] == 0
    assert run("verify", backup_id)[0] == 0
    code, _, err = run("verify", "20200101T000000Z-000000")
    assert code == 1 and "no backup" in err


def test_missing_settings_are_named(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FEINT_BACKUP_KEYSET, create stops with a configuration error naming it."""
    monkeypatch.delenv("FEINT_BACKUP_KEYSET")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["backup", "create"])
    assert result.exit_code != 0
    assert "FEINT_BACKUP_KEYSET" in str(result.exception)


def test_lifecycle_applied_to_a_real_bucket(
    env: dict[str, str], s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lifecycle` puts the rules on the bucket under the prefix; the server gives them back."""
    monkeypatch.setenv("FEINT_BACKUP_URL", "s3://feint-lifecycle/prod")
    monkeypatch.setenv("FEINT_S3_ENDPOINT_URL", s3_server.endpoint)
    get_settings.cache_clear()
    storage = S3Storage(bucket="feint-lifecycle", prefix="prod", endpoint_url=s3_server.endpoint)
    storage.ensure_bucket()
    code, _, err = run("lifecycle")
    assert code == 1 and "NotImplemented" in err and "--no-transition" in err  # SeaweedFS has no storage classes
    code, _, err = run("lifecycle", "--no-transition")
    assert code == 0, err
    rules = storage.client.get_bucket_lifecycle_configuration(Bucket="feint-lifecycle")["Rules"]
    by_id = {r["ID"]: r for r in rules}
    assert by_id["feint-daily-30-days"]["Expiration"]["Days"] == 30
    assert by_id["feint-daily-30-days"]["Filter"]["Prefix"] == "prod/daily/"
    assert by_id["feint-monthly-7-years"]["Expiration"]["Days"] >= 7 * 365
    assert len(rules) == len(lifecycle_rules()["Rules"])
    printed = json.loads(CliRunner().invoke(app, ["backup", "lifecycle", "--print"]).stdout)
    assert printed["Rules"][1]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER_IR"}]


def test_restore_force_and_prune(env: dict[str, str], clean_db: str) -> None:
    """restore creates a missing target, refuses it once filled, replaces it with --force; prune deletes."""
    import psycopg

    from feint.backup import verify

    assert run("keygen", "--out", env["FEINT_BACKUP_KEYSET"])[0] == 0
    first = run("create")[1].strip()
    assert run("create")[0] == 0
    target = verify.with_database(clean_db, "feint_verify_cli_restore")
    try:
        code, _, err = run("restore", first, "--target", target)
        assert code == 0, err
        assert verify.target_state(target)[1] > 0
        assert run("restore", first, "--target", target)[0] == 1
        code, _, err = run("restore", "latest", "--target", target, "--force")
        assert code == 0, err
    finally:
        with psycopg.connect(verify.with_database(clean_db, "postgres"), autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "feint_verify_cli_restore" WITH (FORCE)')
    code, out, _ = run("prune", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0")
    assert code == 0 and f"delete monthly/{first}" in out
    listed = json.loads(run("list", "--json")[1])
    assert len(listed["backups"]) == 1 and first not in out.split("delete")[0]


def test_failed_create_posts_the_alert(
    env: dict[str, str], receiver: tuple[str, list[tuple[str, str, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable S3 endpoint: exit 1, the error printed, and backup.failed POSTed to the webhook."""
    from tests.conftest import free_port

    url, seen = receiver
    monkeypatch.setenv("FEINT_BACKUP_URL", "s3://nowhere/x")
    monkeypatch.setenv("FEINT_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FEINT_BACKUP_WEBHOOK_URL", url + "/hook")
    get_settings.cache_clear()
    assert run("keygen", "--out", env["FEINT_BACKUP_KEYSET"])[0] == 0
    code, _, err = run("create")
    assert code == 1 and "cannot reach the S3 endpoint" in err
    assert len(seen) == 1 and seen[0][1] == "/hook"
    body = json.loads(seen[0][2])
    assert body["event"] == "backup.failed" and "cannot reach" in body["data"]["error"]
