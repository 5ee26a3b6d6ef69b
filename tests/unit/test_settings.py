from __future__ import annotations

from pathlib import Path

import pytest

from cdr.api.auth import token_digest
from cdr.settings import SettingsError, load_settings, parse_token_entries


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CDR_CLICKHOUSE_URL", "CDR_KAFKA_TOPIC", "CDR_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.kafka_topic == "pbx.call-ended"
    assert s.kafka_dlq_topic == "pbx.call-ended.dlq"
    assert s.kafka_group_id == "cdr-ingest"
    assert s.embedded and s.timezone == "Asia/Ho_Chi_Minh"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDR_BATCH_SIZE", "500")
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", "http://ch:8123")
    s = load_settings()
    assert s.batch_size == 500 and not s.embedded
    assert s.clickhouse_dsn == "http://ch:8123"


def test_one_setting_chooses_the_transport(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDR_CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("CDR_DATA_DIR", str(tmp_path / "store"))
    assert load_settings().clickhouse_dsn == f"chdb://{tmp_path / 'store'}"
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", f"chdb://{tmp_path}/elsewhere")
    s = load_settings()
    assert s.embedded and s.clickhouse_dsn == f"chdb://{tmp_path}/elsewhere"
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", "")
    assert load_settings().clickhouse_dsn == f"chdb://{tmp_path / 'store'}"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("CDR_BATCH_SIZE", "lots", "CDR_BATCH_SIZE"),
        ("CDR_BATCH_SIZE", "0", "CDR_BATCH_SIZE"),
        ("CDR_TIMEZONE", "Mars/Olympus", "CDR_TIMEZONE"),
        ("CDR_CLICKHOUSE_DATABASE", "cdr; DROP TABLE x", "CDR_CLICKHOUSE_DATABASE"),
        ("CDR_API_TOKENS", "tenant-without-digest", "CDR_API_TOKENS"),
        ("CDR_KAFKA_AUTO_OFFSET_RESET", "middle", "CDR_KAFKA_AUTO_OFFSET_RESET"),
        ("CDR_CLICKHOUSE_URL", "ch:8123", "CDR_CLICKHOUSE_URL"),
        ("CDR_CLICKHOUSE_URL", "chdb://relative/dir", "CDR_CLICKHOUSE_URL"),
        ("CDR_CLICKHOUSE_POOL_SIZE", "0", "CDR_CLICKHOUSE_POOL_SIZE"),
        ("CDR_CLICKHOUSE_DATABASE", "cdr\n", "CDR_CLICKHOUSE_DATABASE"),
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "", "CDR_KAFKA_BOOTSTRAP_SERVERS"),
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092,kafka2", "CDR_KAFKA_BOOTSTRAP_SERVERS"),
        ("CDR_KAFKA_BOOTSTRAP_SERVERS", "kafka:99999", "CDR_KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDR_CURSOR_SECRET", "short-secret")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "short-secret" not in str(info.value)
    assert "CDR_CURSOR_SECRET" in str(info.value)


def test_token_entries() -> None:
    digest = token_digest("s3cret")
    assert parse_token_entries(f"# comment\n\nacme.vn:{digest}\n") == {digest: "acme.vn"}
    with pytest.raises(ValueError, match="entry 1"):
        parse_token_entries("acme.vn:nothex")
    assert parse_token_entries(f"acme.vn:{digest}\nacme.vn:{digest}\n") == {digest: "acme.vn"}
    with pytest.raises(ValueError, match="is not a tenant id"):
        parse_token_entries(f"acme\u200b.vn:{digest}")
    with pytest.raises(ValueError, match=r"'acme\.vn' and 'other\.vn'"):
        parse_token_entries(f"acme.vn:{digest}\nother.vn:{digest}\n")


def test_token_file_is_added(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tokens"
    path.write_text(f"b.vn:{token_digest('b')}\n")
    monkeypatch.setenv("CDR_API_TOKENS", f"a.vn:{token_digest('a')}")
    monkeypatch.setenv("CDR_API_TOKENS_FILE", str(path))
    assert set(load_settings().token_digests().values()) == {"a.vn", "b.vn"}
