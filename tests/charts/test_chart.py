"""The Helm chart, rendered: lint-clean for every documented option, and the objects it
makes agree with each other and with what the code expects."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pluginguard.webhooks.server import Metrics, VerdictCache
from pluginguard.webhooks.tls import ServingCertificate

from tests.charts.options import OPTIONS, RELEASE_NAMESPACE
from tests.controlplane.chart import (
    CHART,
    REPOSITORY,
    ChartError,
    find,
    helm,
    one,
    render,
)

FULLNAME = "pluginguard"  # the release is called "pluginguard"


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _flag(container: dict[str, Any], name: str) -> list[str]:
    prefix = f"--{name}="
    return [a[len(prefix) :] for a in container["args"] if a.startswith(prefix)]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_chart_lints_clean(option: str) -> None:
    output = helm("lint", str(CHART), "--strict", values=OPTIONS[option])
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_rendered_object_is_named_and_placed(option: str) -> None:
    objects = render(namespace=RELEASE_NAMESPACE, values=OPTIONS[option])
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ClusterKopfPeering",
    }
    material_namespaces = {
        e["namespace"] for e in OPTIONS[option].get("trustMaterial", [])
    }
    for obj in objects:
        metadata = obj["metadata"]
        assert len(metadata["name"]) <= 63, metadata["name"]
        assert metadata["labels"]["app.kubernetes.io/instance"] == "pluginguard"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in metadata, obj["kind"]
        elif metadata["name"].endswith("-trust-material"):
            assert metadata["namespace"] in material_namespaces
        else:
            assert metadata["namespace"] == RELEASE_NAMESPACE, obj["kind"]


def test_chart_crds_are_the_repository_crds() -> None:
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == (REPOSITORY / "crds").resolve()
    rendered = [
        o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"
    ]
    expected = [
        document
        for path in sorted((REPOSITORY / "crds").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]

    def key(crd: dict[str, Any]) -> str:
        return str(crd["metadata"]["name"])

    assert sorted(rendered, key=key) == sorted(expected, key=key)
    assert "clusterkopfpeerings.kopf.dev" in {key(c) for c in rendered}


def test_webhook_runs_restricted_and_highly_available() -> None:
    objects = render()
    deployment = one(objects, "Deployment", f"{FULLNAME}-webhook")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)

    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    term = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert term[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector

    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == selector
    assert budget["spec"]["minAvailable"] == 1
    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector


def test_hard_anti_affinity_never_shares_a_node() -> None:
    deployment = one(
        render(values={"webhook": {"antiAffinity": "hard"}}),
        "Deployment",
        f"{FULLNAME}-webhook",
    )
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_operator_replicas_meet_in_the_peering_object_they_may_patch() -> None:
    objects = render()
    deployment = one(objects, "Deployment", f"{FULLNAME}-operator")
    container = _container(deployment)
    peering = one(objects, "ClusterKopfPeering")

    assert deployment["spec"]["replicas"] == 2
    assert _flag(container, "peering") == [peering["metadata"]["name"]]
    assert "--standalone" not in container["args"]
    assert any(e["name"] == "POD_ID" for e in container["env"])
    role = one(objects, "ClusterRole", f"{FULLNAME}-operator")
    named = [
        r
        for r in role["rules"]
        if "clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"]
    ]
    assert named and named[0]["resourceNames"] == [peering["metadata"]["name"]]


def test_single_operator_replica_runs_standalone() -> None:
    container = _container(
        one(
            render(values={"operator": {"replicas": 1}}),
            "Deployment",
            f"{FULLNAME}-operator",
        )
    )
    assert "--standalone" in container["args"] and not _flag(container, "peering")


def test_admission_sends_only_plugin_pods_and_enforced_namespaces() -> None:
    objects = render()
    validating = one(objects, "ValidatingWebhookConfiguration")
    mutating = one(objects, "MutatingWebhookConfiguration")
    hooks = {w["name"]: w for w in validating["webhooks"] + mutating["webhooks"]}
    exempt = {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", RELEASE_NAMESPACE],
    }

    for hook in hooks.values():
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] <= 10
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert exempt in hook["namespaceSelector"]["matchExpressions"]
        assert hook["clientConfig"]["service"]["name"] == f"{FULLNAME}-webhook"

    plugin_label = {"key": "pluginguard.dev/plugin", "operator": "Exists"}
    pods = hooks["pods.pluginguard.dev"]
    assert pods["objectSelector"]["matchExpressions"] == [plugin_label]
    assert pods["clientConfig"]["service"]["path"] == "/validate/pods"
    resources = {
        (g, r)
        for rule in pods["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert resources == {
        ("", "pods"),
        ("", "pods/ephemeralcontainers"),
        ("", "pods/resize"),
        ("", "replicationcontrollers"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    }

    enforced = hooks["enforced-namespaces.pluginguard.dev"]
    assert {"key": "pluginguard.dev/enforce", "operator": "In", "values": ["true"]} in (
        enforced["namespaceSelector"]["matchExpressions"]
    )
    assert enforced["objectSelector"]["matchExpressions"] == [
        {"key": "pluginguard.dev/plugin", "operator": "DoesNotExist"}
    ]
    assert enforced["rules"] == pods["rules"]

    assert hooks["plugins.pluginguard.dev"]["clientConfig"]["service"]["path"] == (
        "/validate/plugins"
    )
    mutate = hooks["mutate-pods.pluginguard.dev"]
    assert mutate["clientConfig"]["service"]["path"] == "/mutate/pods"
    assert mutate["objectSelector"]["matchExpressions"] == [plugin_label]
    assert mutate["reinvocationPolicy"] == "IfNeeded"


def test_builtin_tls_names_agree_with_the_rbac() -> None:
    objects = render()
    container = _container(one(objects, "Deployment", f"{FULLNAME}-webhook"))
    (secret_name,) = _flag(container, "tls-secret")
    (configuration,) = _flag(container, "webhook-configuration")

    secret = one(objects, "Secret", secret_name)
    assert secret["type"] == "Opaque" and "data" not in secret
    role = one(objects, "Role", f"{FULLNAME}-webhook-tls")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret_name],
            "verbs": ["get", "patch"],
        }
    ]
    assert (
        configuration
        == one(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]
    )
    assert (
        configuration
        == one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
    )
    cluster_role = one(objects, "ClusterRole", f"{FULLNAME}-webhook")
    (registration,) = [
        r
        for r in cluster_role["rules"]
        if r["apiGroups"] == ["admissionregistration.k8s.io"]
    ]
    assert registration["resourceNames"] == [configuration]
    assert registration["verbs"] == ["get", "patch"]
    service = f"{FULLNAME}-webhook.{RELEASE_NAMESPACE}.svc"
    assert service in _flag(container, "tls-san")
    assert not find(objects, "Certificate")


def test_cert_manager_issues_the_mounted_secret_and_injects_its_ca() -> None:
    objects = render(values=OPTIONS["cert-manager"])
    container = _container(one(objects, "Deployment", f"{FULLNAME}-webhook"))
    volumes = one(objects, "Deployment", f"{FULLNAME}-webhook")["spec"]["template"][
        "spec"
    ]["volumes"]
    certificate = one(objects, "Certificate", f"{FULLNAME}-webhook")

    assert not _flag(container, "tls-secret")
    assert _flag(container, "tls-cert") == ["/etc/pluginguard/tls/tls.crt"]
    (tls_volume,) = [v for v in volumes if v["name"] == "tls"]
    assert tls_volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert (
        f"{FULLNAME}-webhook.{RELEASE_NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    )
    wanted = f"{RELEASE_NAMESPACE}/{FULLNAME}-webhook"
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = one(objects, kind)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == wanted
    # The webhook's own CA: its Issuer signs the serving certificate.
    ca_issuer = one(objects, "Issuer", f"{FULLNAME}-ca")
    assert certificate["spec"]["issuerRef"]["name"] == ca_issuer["metadata"]["name"]
    assert (
        ca_issuer["spec"]["ca"]["secretName"]
        == one(objects, "Certificate", f"{FULLNAME}-ca")["spec"]["secretName"]
    )
    assert not find(objects, "Secret") and not find(objects, "Role")
    webhook_role = one(objects, "ClusterRole", f"{FULLNAME}-webhook")
    assert all(
        "admissionregistration.k8s.io" not in r["apiGroups"]
        for r in webhook_role["rules"]
    )


def test_cert_manager_with_an_issuer_of_yours_makes_no_ca() -> None:
    objects = render(values=OPTIONS["cert-manager-own-issuer"])
    certificate = one(objects, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "kind": "ClusterIssuer",
        "name": "internal-ca",
        "group": "cert-manager.io",
    }
    assert not find(objects, "Issuer")


def test_trust_material_is_readable_by_name_only() -> None:
    values = OPTIONS["trust-material"]
    objects = render(values=values)
    roles = find(objects, "Role", f"{FULLNAME}-trust-material")
    by_namespace = {r["metadata"]["namespace"]: r for r in roles}

    expected: dict[str, dict[str, set[str]]] = {}
    for entry in values["trustMaterial"]:
        resource = "secrets" if entry["kind"] == "Secret" else "configmaps"
        expected.setdefault(entry["namespace"], {}).setdefault(resource, set()).add(
            entry["name"]
        )
    assert by_namespace.keys() == expected.keys()
    for namespace, resources in expected.items():
        rules = by_namespace[namespace]["rules"]
        assert {r["resources"][0]: set(r["resourceNames"]) for r in rules} == resources
        assert all(r["verbs"] == ["get", "list", "watch"] for r in rules)
    for binding in find(objects, "RoleBinding", f"{FULLNAME}-trust-material"):
        assert {s["name"] for s in binding["subjects"]} == {
            f"{FULLNAME}-operator",
            f"{FULLNAME}-webhook",
        }
    # No other role may read Secrets at all.
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames"), role["metadata"]["name"]


def test_node_agent_writes_only_its_own_directory() -> None:
    objects = render()
    daemonset = one(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = _container(daemonset)
    (host,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert host["hostPath"]["path"] == "/var/lib/kubelet/seccomp/pluginguard"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == host["name"]]
    (root,) = _flag(container, "root")
    assert mount["mountPath"] == f"{root}/pluginguard"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert _flag(container, "node-name") == ["$(NODE_NAME)"]


def test_security_profiles_operator_delivery_replaces_the_node_agent() -> None:
    objects = render(values=OPTIONS["security-profiles-operator"])
    assert not find(objects, "DaemonSet")
    assert not any(o["metadata"]["name"].endswith("node-agent") for o in objects)
    for deployable in ("operator", "webhook"):  # they must agree on where profiles are
        deployment = next(o for o in find(objects, "Deployment")
                          if o["metadata"]["name"].endswith(deployable))
        assert _flag(_container(deployment), "profile-delivery") == ["security-profiles-operator"]
    role = next(o for o in find(objects, "ClusterRole") if o["metadata"]["name"].endswith("operator"))
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted[("security-profiles-operator.x-k8s.io", "seccompprofiles")] >= {
        "list", "watch", "create", "patch", "delete"}
    assert ("", "configmaps") not in granted  # no profile ConfigMaps to write

    default = render()
    for deployable in ("operator", "webhook"):
        assert _flag(_container(next(o for o in find(default, "Deployment")
                                     if o["metadata"]["name"].endswith(deployable))),
                     "profile-delivery") == ["node-agent"]


def test_a_single_webhook_replica_gets_no_disruption_budget() -> None:
    objects = render(values={"webhook": {"replicas": 1}})
    assert not find(objects, "PodDisruptionBudget")


def test_disabled_parts_render_nothing() -> None:
    objects = render(values=OPTIONS["minimal"])
    assert not find(objects, "DaemonSet") and not find(
        objects, "MutatingWebhookConfiguration"
    )
    assert not find(objects, "PodDisruptionBudget")
    assert not any(o["metadata"]["name"].endswith("node-agent") for o in objects)
    for hook in one(objects, "ValidatingWebhookConfiguration")["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"


def test_alerts_use_metrics_the_webhook_exports() -> None:
    objects = render(values=OPTIONS["monitoring"])
    rule = one(objects, "PrometheusRule")
    metrics = Metrics(VerdictCache())
    # Labelled series exist once they have a child: make one of each.
    metrics.requests.labels("pods", "denied", "UntrustedSigner").inc()
    metrics.errors.labels("pods").inc()
    metrics.latency.labels("pods").observe(0.001)
    registry = metrics.registry
    registry.register(ServingCertificate().collector())
    exported = {s.name for family in registry.collect() for s in family.samples}
    exported |= {family.name for family in registry.collect()}
    alerts = rule["spec"]["groups"][0]["rules"]
    used = {m for a in alerts for m in re.findall(r"\bpluginguard_[a-z_]+", a["expr"])}
    assert used and used <= exported, used - exported
    assert {a["alert"] for a in alerts} >= {
        "PluginGuardVerificationFailures",
        "PluginGuardWebhookErrors",
        "PluginGuardWebhookSlow",
        "PluginGuardCertificateExpiring",
        "PluginGuardWebhookDown",
    }

    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert (
        monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    )


def test_notes_say_how_to_break_glass() -> None:
    notes = helm(
        "install",
        "pluginguard",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        RELEASE_NAMESPACE,
    )
    notes = notes[notes.index("NOTES:") :]
    assert f"kubectl delete validatingwebhookconfiguration {FULLNAME}" in notes
    assert f"kubectl delete mutatingwebhookconfiguration {FULLNAME}" in notes


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"webhook": {"tls": {"mode": "selfsigned"}}}, "/webhook/tls/mode"),
        ({"webhook": {"replica": 3}}, "replica"),
        ({"trustMaterial": [{"kind": "Secret", "name": "key"}]}, "namespace"),
        ({"trustMaterial": [{"kind": "Pod", "namespace": "a", "name": "b"}]}, "kind"),
        ({"webhook": {"timeoutSeconds": 31}}, "timeoutSeconds"),
        ({"image": {"digest": "latest"}}, "digest"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ChartError, match=complaint):
        render(values=values)


def test_dockerfile_installs_every_entry_point_package() -> None:
    """The image's build stage copies each package directory the wheel is built from."""
    dockerfile = (REPOSITORY / "Dockerfile").read_text()
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    directories = set(
        re.findall(r'^"pluginguard[.a-z]*" = "([a-z]+)"', pyproject, re.MULTILINE)
    )
    assert directories == {"pluginguard", "operator", "webhooks"}
    for directory in directories:
        assert f"COPY {directory}/ {directory}/" in dockerfile
    ignore = (REPOSITORY / ".dockerignore").read_text().split()
    assert all(f"!{d}" in ignore for d in directories)
    assert re.search(r"^USER 65532:65532$", dockerfile, re.MULTILINE)
    final_stage = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert not re.search(r"\b(gcc|build-essential|COPY --from=build)\b", final_stage)


def test_the_chart_path_exists() -> None:
    assert Path(CHART, "Chart.yaml").is_file()
