"""The chart's documented options, each as the values that turn it on; the chart's tests
render, lint and apply every one."""

from __future__ import annotations

from typing import Any

RELEASE_NAMESPACE = "pluginguard-system"

CERT_MANAGER: dict[str, Any] = {"webhook": {"tls": {"mode": "certManager"}}}
MONITORING: dict[str, Any] = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
}

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": CERT_MANAGER,
    "cert-manager-own-issuer": {
        "webhook": {
            "tls": {
                "mode": "certManager",
                "certManager": {
                    "issuerRef": {
                        "kind": "ClusterIssuer",
                        "name": "internal-ca",
                        "group": "cert-manager.io",
                    }
                },
            }
        }
    },
    "monitoring": MONITORING,
    "cert-manager-and-monitoring": {**CERT_MANAGER, **MONITORING},
    "trust-material": {
        "trustMaterial": [
            {"kind": "Secret", "namespace": "chart-security", "name": "release-key"},
            {
                "kind": "ConfigMap",
                "namespace": "chart-security",
                "name": "vendor-roots",
            },
            {"kind": "Secret", "namespace": "chart-security", "name": "second-key"},
            {"kind": "ConfigMap", "namespace": "chart-vendors", "name": "crl"},
        ]
    },
    "minimal": {
        "operator": {"replicas": 1},
        "webhook": {
            "replicas": 1,
            "failurePolicy": "Ignore",
            "mutating": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
            "antiAffinity": "hard",
        },
        "nodeAgent": {"enabled": False},
    },
    "security-profiles-operator": {"profileDelivery": "security-profiles-operator"},
    "pinned-image": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "registry"}],
        "logFormat": "text",
        "webhook": {"exemptNamespaces": ["monitoring"]},
    },
}
