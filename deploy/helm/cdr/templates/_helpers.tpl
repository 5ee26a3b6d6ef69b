{{/* Chart name. */}}
{{- define "cdr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "cdr.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cdr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Stable selector labels; a component label is added per workload. */}}
{{- define "cdr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cdr.labels" -}}
helm.sh/chart: {{ include "cdr.chart" . }}
{{ include "cdr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cdr
{{- end }}

{{- define "cdr.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "cdr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cdr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding a secret value: the user's existing one, or the chart's. */}}
{{- define "cdr.secretName" -}}
{{- $ref := index . 0 }}{{- $root := index . 1 }}
{{- $ref.existingSecret | default (printf "%s-secrets" (include "cdr.fullname" $root)) }}
{{- end }}

{{/* Whether the chart must create its own Secret. */}}
{{- define "cdr.ownSecret" -}}
{{- $v := .Values }}
{{- if or (and $v.clickhouse.password.value (not $v.clickhouse.password.existingSecret)) (and $v.clickhouse.api.password.value (not $v.clickhouse.api.password.existingSecret)) (and $v.api.tokens.value (not $v.api.tokens.existingSecret)) (and $v.api.cursorSecret.value (not $v.api.cursorSecret.existingSecret)) }}true{{- end }}
{{- end }}

{{/* Environment shared by every container: non-secret settings inline, secrets by reference. */}}
{{- define "cdr.commonEnv" -}}
- name: CDR_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: CDR_KAFKA_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: CDR_KAFKA_DLQ_TOPIC
  value: {{ .Values.kafka.dlqTopic | quote }}
- name: CDR_KAFKA_GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: CDR_CLICKHOUSE_DATABASE
  value: {{ .Values.clickhouse.database | quote }}
- name: CDR_CLICKHOUSE_POOL_SIZE
  value: {{ .Values.clickhouse.poolSize | quote }}
{{- with .Values.clickhouse.cluster }}
- name: CDR_CLICKHOUSE_CLUSTER
  value: {{ . | quote }}
{{- end }}
- name: CDR_TIMEZONE
  value: {{ .Values.timezone | quote }}
- name: CDR_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* ClickHouse URL and password: (list <url+password values> root). The API may read
with a user of its own (clickhouse.api), granted SELECT only; the rest use clickhouse. */}}
{{- define "cdr.clickhouseEnv" -}}
{{- $ch := index . 0 }}{{- $root := index . 1 }}
- name: CDR_CLICKHOUSE_URL
  value: {{ required "clickhouse.url is required" $ch.url | quote }}
{{- if or $ch.password.value $ch.password.existingSecret }}
- name: CDR_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cdr.secretName" (list $ch.password $root) }}
      key: {{ $ch.password.key }}
{{- end }}
{{- end }}

{{/* The API's ClickHouse credentials: clickhouse.api when its url is set. */}}
{{- define "cdr.apiClickhouse" -}}
{{- if .Values.clickhouse.api.url }}{{ toJson .Values.clickhouse.api }}{{ else }}{{ toJson .Values.clickhouse }}{{ end }}
{{- end }}

{{- define "cdr.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .period | default 10 }}
timeoutSeconds: 3
failureThreshold: {{ .failures | default 3 }}
{{- end }}
