from __future__ import annotations

from pathlib import Path

import pytest

from cdr.api.auth import token_digest
from cdr.settings import GROUPS, ClickHouseSettings, Settings, SettingsError, load_settings, parse_token_entries


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CDR_CLICKHOUSE_URL", "CDR_KAFKA_TOPIC", "CDR_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.kafka.kafka_topic == "pbx.call-ended"
    assert s.kafka.kafka_dlq_topic == "pbx.call-ended.dlq"
    assert s.kafka.kafka_group_id == "cdr-ingest"
    assert s.clickhouse.embedded and s.common.timezone == "Asia/Ho_Chi_Minh"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDR_BATCH_SIZE", "500")
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", "http://ch:8123")
    s = load_settings()
    assert s.ingest.batch_size == 500 and not s.clickhouse.embedded
    assert s.clickhouse.clickhouse_dsn == "http://ch:8123"


def test_one_setting_chooses_the_transport(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDR_CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("CDR_DATA_DIR", str(tmp_path / "store"))
    assert load_settings().clickhouse.clickhouse_dsn == f"chdb://{tmp_path / 'store'}"
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", f"chdb://{tmp_path}/elsewhere")
    s = load_settings()
    assert s.clickhouse.embedded and s.clickhouse.clickhouse_dsn == f"chdb://{tmp_path}/elsewhere"
    monkeypatch.setenv("CDR_CLICKHOUSE_URL", "")
    assert load_settings().clickhouse.clickhouse_dsn == f"chdb://{tmp_path / 'store'}"


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
        ("CDR_KAFKA_DLQ_TOPIC", "bad topic!", "CDR_KAFKA_DLQ_TOPIC: 'bad topic!' is not a Kafka topic name"),
        ("CDR_KAFKA_TOPIC", "..", "CDR_KAFKA_TOPIC: '..' is not a Kafka topic name"),
        ("CDR_KAFKA_TOPIC", "", "CDR_KAFKA_TOPIC"),
        ("CDR_KAFKA_TOPIC", "x" * 250, "CDR_KAFKA_TOPIC"),
        ("CDR_KAFKA_TOPIC", "calls\n", "CDR_KAFKA_TOPIC"),
        ("CDR_KAFKA_TOPIC", "appels-é", "CDR_KAFKA_TOPIC"),
        ("CDR_KAFKA_ISOLATION_LEVEL", "read_some", "CDR_KAFKA_ISOLATION_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_kafka_topic_names_as_kafka_defines_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "x" * 249, "pbx_calls.v2-eu", "..."):
        monkeypatch.setenv("CDR_KAFKA_DLQ_TOPIC", name)
        assert load_settings().kafka.kafka_dlq_topic == name


def test_transactions_are_read_committed_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDR_KAFKA_ISOLATION_LEVEL", raising=False)
    assert load_settings().kafka.kafka_isolation_level == "read_committed"
    monkeypatch.setenv("CDR_KAFKA_ISOLATION_LEVEL", "read_uncommitted")
    assert load_settings().kafka.kafka_isolation_level == "read_uncommitted"


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
    assert set(load_settings().api.token_digests().values()) == {"a.vn", "b.vn"}


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "CDR_KAFKA_SASL_USERNAME is required"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "exactly one of CDR_KAFKA_SASL_PASSWORD"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
                "kafka_sasl_password_file": "/run/secrets/p",
            },
            "exactly one of CDR_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_ssl_ca_file": "/etc/ca.pem"}, "need CDR_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_key_file": "/k.pem"}, "needs CDR_KAFKA_SSL_CERT_FILE"),
        ({"kafka_security_protocol": "TLS"}, "CDR_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "OAUTHBEARER"}, "CDR_KAFKA_SASL_MECHANISM"),
        ({"clickhouse_url": "https://cdr:s3cret@ch:8443"}, "must not carry a password"),
    ],
)
def test_security_settings_that_cannot_work(settings: dict[str, object], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle) as info:
        load_settings(**settings)
    assert "s3cret" not in str(info.value)


def test_kafka_security_options(tmp_path: Path) -> None:
    from cdr.kafka_security import kafka_client_options

    assert kafka_client_options(load_settings().kafka) == {}
    password = tmp_path / "password"
    password.write_text("from-a-file\n")
    sasl = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="pbx",
        kafka_sasl_password_file=password,
    )
    options = kafka_client_options(sasl.kafka)
    assert options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_mechanism"] == "PLAIN"
    assert options["sasl_plain_username"] == "pbx" and options["sasl_plain_password"] == "from-a-file"
    tls = kafka_client_options(load_settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False).kafka)
    assert tls["security_protocol"] == "SSL" and tls["ssl_context"].check_hostname is False


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"kafka_ssl_ca_file": "/no/such/ca.pem"}, "CDR_KAFKA_SSL_CA_FILE"),
        ({"kafka_ssl_cert_file": "/no/such/cert.pem"}, "CDR_KAFKA_SSL_CERT_FILE"),
    ],
)
def test_unreadable_kafka_tls_files_name_their_setting(settings: dict[str, object], setting: str) -> None:
    from cdr.kafka_security import kafka_security

    with pytest.raises(SettingsError, match=setting):
        kafka_security(load_settings(kafka_security_protocol="SSL", **settings).kafka)


def test_an_unreadable_sasl_password_file_names_its_setting(tmp_path: Path) -> None:
    from cdr.kafka_security import kafka_security

    settings = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password_file=tmp_path / "none"
    )
    with pytest.raises(SettingsError, match="CDR_KAFKA_SASL_PASSWORD_FILE"):
        kafka_security(settings.kafka)


def test_the_groups_partition_the_settings() -> None:
    """Every variable is in exactly one group, read under its old name: CDR_ and the field's
    name (no group renames one through an alias or a prefix of its own)."""
    names = [group.env(field) for group in GROUPS.values() for field in group.model_fields]
    assert len(names) == len(set(names))
    assert list(Settings.model_fields) == list(GROUPS)
    for group in GROUPS.values():
        assert group.model_config.get("env_prefix") == "CDR_" and not group.model_config.get("env_nested_delimiter")
        assert all(info.alias is None and info.validation_alias is None for info in group.model_fields.values())


@pytest.mark.parametrize(
    ("variable", "value", "group", "field", "expected"),
    [
        ("CDR_LOG_LEVEL", "debug", "common", "log_level", "DEBUG"),
        ("CDR_KAFKA_TOPIC", "calls.v2", "kafka", "kafka_topic", "calls.v2"),
        ("CDR_KAFKA_PARTITIONS", "12", "kafka", "kafka_partitions", 12),
        ("CDR_DATA_DIR", "/var/lib/cdr", "clickhouse", "data_dir", Path("/var/lib/cdr")),
        ("CDR_EXPORT_READERS", "3", "clickhouse", "export_readers", 3),
        ("CDR_QUERY_TIMEOUT_MS", "2500", "clickhouse", "query_timeout_ms", 2_500),
        ("CDR_BATCH_SIZE", "500", "ingest", "batch_size", 500),
        ("CDR_SHUTDOWN_TIMEOUT_MS", "5000", "ingest", "shutdown_timeout_ms", 5_000),
        ("CDR_WEBHOOK_BATCH_SIZE", "7", "notify", "webhook_batch_size", 7),
        ("CDR_FEED_HEARTBEAT_S", "2.5", "api", "feed_heartbeat_s", 2.5),
        ("CDR_MAX_LIMIT", "50", "api", "max_limit", 50),
    ],
)
def test_a_variable_reaches_its_group(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, group: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert getattr(getattr(settings, group), field) == expected
    assert all(field not in GROUPS[other].model_fields for other in GROUPS if other != group)


def test_an_override_reaches_its_group_and_an_unknown_one_is_refused() -> None:
    settings = load_settings(batch_size=123, webhook_batch_size=9)
    assert settings.ingest.batch_size == 123 and settings.notify.webhook_batch_size == 9
    copy = settings.replaced(max_limit=77, kafka_topic="other")
    assert copy.api.max_limit == 77 and copy.kafka.kafka_topic == "other" and copy.ingest.batch_size == 123
    assert settings.api.max_limit != 77, "the original is left as it was"
    with pytest.raises(TypeError, match="CDR_NO_SUCH_SETTING"):
        load_settings(no_such_setting=1)


def test_bad_values_of_several_groups_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """One SettingsError lists each bad variable of every group, and the checks across fields."""
    monkeypatch.setenv("CDR_BATCH_SIZE", "0")
    monkeypatch.setenv("CDR_KAFKA_TOPIC", "bad topic!")
    monkeypatch.setenv("CDR_CLICKHOUSE_POOL_SIZE", "0")
    monkeypatch.setenv("CDR_WEBHOOK_BATCH_SIZE", "0")
    monkeypatch.setenv("CDR_KAFKA_SASL_MECHANISM", "NOPE")
    monkeypatch.setenv("CDR_DEFAULT_LIMIT", "50")
    monkeypatch.setenv("CDR_MAX_LIMIT", "20")
    with pytest.raises(SettingsError) as info:
        load_settings()
    named = {problem.get("setting") for problem in info.value.problems}
    assert named >= {
        "CDR_BATCH_SIZE",
        "CDR_KAFKA_TOPIC",
        "CDR_CLICKHOUSE_POOL_SIZE",
        "CDR_WEBHOOK_BATCH_SIZE",
        "CDR_KAFKA_SASL_MECHANISM",
    }
    assert "CDR_DEFAULT_LIMIT must not exceed CDR_MAX_LIMIT" in str(info.value)


def test_a_group_names_its_variables() -> None:
    assert ClickHouseSettings.env("clickhouse_url") == "CDR_CLICKHOUSE_URL"
    assert ClickHouseSettings.env("data_dir") == "CDR_DATA_DIR"
    with pytest.raises(KeyError):
        ClickHouseSettings.env("batch_size")  # another group's
