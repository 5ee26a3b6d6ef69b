"""The replication factor `cdr create-topics` asks for (cdr.topics.replication_factor)."""

from __future__ import annotations

import pytest

from cdr.settings import SettingsError, load_settings
from cdr.topics import BrokerDefaults, replication_factor

THREE = BrokerDefaults(brokers=3, default_replication_factor=3, min_insync_replicas=2)


def test_minus_one_takes_the_brokers_default() -> None:
    assert replication_factor(-1, THREE) == 3


def test_an_explicit_factor_is_kept() -> None:
    assert replication_factor(2, THREE) == 2


def test_below_min_insync_replicas_is_refused_because_acks_all_would_fail() -> None:
    with pytest.raises(SettingsError, match="CDR_KAFKA_REPLICATION_FACTOR: replication factor 1 is below") as caught:
        replication_factor(1, THREE)
    assert "min.insync.replicas=2" in str(caught.value)
    assert caught.value.problems[0]["setting"] == "CDR_KAFKA_REPLICATION_FACTOR"


def test_a_default_below_min_insync_replicas_is_refused_too() -> None:
    with pytest.raises(SettingsError, match=r"below the brokers' min\.insync\.replicas=2"):
        replication_factor(-1, BrokerDefaults(brokers=3, default_replication_factor=1, min_insync_replicas=2))


def test_more_replicas_than_brokers_is_refused() -> None:
    with pytest.raises(SettingsError, match="replication factor 4 is more than the 3 broker"):
        replication_factor(4, THREE)


def test_an_unreadable_default_asks_for_an_explicit_factor() -> None:
    unknown = BrokerDefaults(brokers=3, default_replication_factor=None, min_insync_replicas=None)
    with pytest.raises(SettingsError, match=r"default\.replication\.factor cannot be read"):
        replication_factor(-1, unknown)
    assert replication_factor(3, unknown) == 3


def test_zero_is_not_a_replication_factor() -> None:
    with pytest.raises(SettingsError, match="CDR_KAFKA_REPLICATION_FACTOR"):
        load_settings(kafka_replication_factor=0)
