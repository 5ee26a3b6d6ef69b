"""`cdr create-topics`: the call-ended and dead-letter topics, replicated as the brokers expect.

A replication factor below the brokers' ``min.insync.replicas`` makes a topic no acks=all
producer can write to: the dead-letter producer (acks=all) would fail every send and ingest
would stop committing. So the default is the brokers' own ``default.replication.factor``.
aiokafka speaks CreateTopics v0-v3 only, which cannot ask for "the broker's default" (-1,
KIP-464 needs v4), so the default is read from the controller's configuration instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cdr.settings import KafkaSettings, SettingsError

log = logging.getLogger(__name__)

_SETTING = "CDR_KAFKA_REPLICATION_FACTOR"
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class BrokerDefaults:
    """What the brokers say about replication (None: not readable, e.g. no DescribeConfigs ACL)."""

    brokers: int
    default_replication_factor: int | None
    min_insync_replicas: int | None


def replication_factor(wanted: int, brokers: BrokerDefaults) -> int:
    """The replication factor to create the topics with: ``wanted``, or the brokers' default
    for -1. SettingsError (naming the setting) when it cannot work: more replicas than
    brokers, or fewer than ``min.insync.replicas`` (every acks=all send would fail)."""
    if wanted == -1:
        if brokers.default_replication_factor is None:
            unknown = (
                "the brokers' default.replication.factor cannot be read (DescribeConfigs on the cluster);"
                " set the replication factor explicitly"
            )
            raise SettingsError(f"{_SETTING}: {unknown}", [{"setting": _SETTING, "value": "-1", "error": unknown}])
        factor = brokers.default_replication_factor
    else:
        factor = wanted
    problem: str | None = None
    if factor > brokers.brokers:
        problem = f"replication factor {factor} is more than the {brokers.brokers} broker(s) of the cluster"
    elif brokers.min_insync_replicas is not None and factor < brokers.min_insync_replicas:
        problem = (
            f"replication factor {factor} is below the brokers' min.insync.replicas={brokers.min_insync_replicas}:"
            " every acks=all send (the dead-letter producer) to these topics would fail"
        )
    if problem is not None:
        raise SettingsError(f"{_SETTING}: {problem}", [{"setting": _SETTING, "value": str(wanted), "error": problem}])
    return factor


async def _broker_defaults(admin: Any) -> BrokerDefaults:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    cluster = await admin.describe_cluster()
    wanted = {"default.replication.factor": None, "min.insync.replicas": None}
    resource = ConfigResource(ConfigResourceType.BROKER, str(cluster["controller_id"]), wanted)
    values: dict[str, int] = {}
    for response in await admin.describe_configs([resource]):
        for found in response.to_object()["resources"]:
            if found["error_code"] != 0:
                log.warning(
                    "cannot read the brokers' replication defaults",
                    extra={"error_code": found["error_code"], "error": found["error_message"]},
                )
                continue
            for entry in found["config_entries"]:
                values[entry["config_names"]] = int(entry["config_value"])
    return BrokerDefaults(
        brokers=len(cluster["brokers"]),
        default_replication_factor=values.get("default.replication.factor"),
        min_insync_replicas=values.get("min.insync.replicas"),
    )


async def create_topics(kafka: KafkaSettings) -> list[str]:
    """Create the call-ended and dead-letter topics that do not exist yet; the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from cdr.kafka_security import check_kafka_access, kafka_client_options

    security = kafka_client_options(kafka)
    await check_kafka_access(kafka, security)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.kafka_bootstrap_servers, **security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in (kafka.kafka_topic, kafka.kafka_dlq_topic) if t not in existing]
        if not wanted:
            return []
        factor = replication_factor(kafka.kafka_replication_factor, await _broker_defaults(admin))
        response = await admin.create_topics(
            [NewTopic(t, num_partitions=kafka.kafka_partitions, replication_factor=factor) for t in wanted]
        )
        # Another process may create them at the same moment; that is fine. Anything else is not.
        failed = [
            f"{topic}: {message or code}"
            for topic, code, message in response.topic_errors
            if code not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if failed:
            raise SettingsError(
                "CDR_KAFKA_TOPIC / CDR_KAFKA_DLQ_TOPIC: the brokers refused to create " + "; ".join(failed)
            )
        log.info("topics created", extra={"topics": wanted, "replication_factor": factor})
        return wanted
    finally:
        await admin.close()
