{{/* Names, labels and the pieces every workload shares. */}}

{{- define "pluginguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's prefix for every object; 40 characters leave room for suffixes. */}}
{{- define "pluginguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "pluginguard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "pluginguard.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pluginguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pluginguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (list $ "webhook"). */}}
{{- define "pluginguard.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "pluginguard.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "pluginguard.componentLabels" -}}
{{ include "pluginguard.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "pluginguard.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "pluginguard.webhookName" -}}{{ include "pluginguard.fullname" . }}-webhook{{- end -}}
{{- define "pluginguard.operatorName" -}}{{ include "pluginguard.fullname" . }}-operator{{- end -}}
{{- define "pluginguard.nodeAgentName" -}}{{ include "pluginguard.fullname" . }}-node-agent{{- end -}}
{{- define "pluginguard.tlsSecretName" -}}{{ include "pluginguard.fullname" . }}-webhook-tls{{- end -}}
{{- define "pluginguard.peeringName" -}}{{ default (include "pluginguard.fullname" .) .Values.operator.peering }}{{- end -}}

{{/* The names the webhook's certificate must hold: its Service's DNS names. */}}
{{- define "pluginguard.webhookDnsNames" -}}
{{- $service := include "pluginguard.webhookName" . -}}
- {{ $service }}
- {{ $service }}.{{ .Release.Namespace }}
- {{ $service }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* Namespaces the API server never sends to the webhook. */}}
{{- define "pluginguard.exemptNamespaces" -}}
{{- $names := concat (list "kube-system" .Release.Namespace) .Values.webhook.exemptNamespaces | uniq -}}
{{- toJson $names -}}
{{- end -}}

{{/* Pod-level security settings shared by the operator and the webhook. */}}
{{- define "pluginguard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pluginguard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The trust material entries, grouped by namespace: {ns: {Secret: [..], ConfigMap: [..]}}. */}}
{{- define "pluginguard.trustMaterialByNamespace" -}}
{{- $byNamespace := dict -}}
{{- range .Values.trustMaterial -}}
{{- $entry := get $byNamespace .namespace | default (dict "Secret" (list) "ConfigMap" (list)) -}}
{{- $_ := set $entry .kind (append (get $entry .kind) .name | uniq) -}}
{{- $_ := set $byNamespace .namespace $entry -}}
{{- end -}}
{{- toJson $byNamespace -}}
{{- end -}}

{{/* What every webhook entry shares: call with (list $ "/path"). */}}
{{- define "pluginguard.webhookCommon" -}}
{{- $root := index . 0 -}}
clientConfig:
  service:
    name: {{ include "pluginguard.webhookName" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: {{ index . 1 }}
    port: 443
admissionReviewVersions: [v1]
sideEffects: NoneOnDryRun
failurePolicy: {{ $root.Values.webhook.failurePolicy }}
matchPolicy: Equivalent
timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
{{- end -}}
