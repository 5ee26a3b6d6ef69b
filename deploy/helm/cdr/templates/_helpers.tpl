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
{{- $kafka := $v.kafka.security.sasl.password }}
{{- if or (and $kafka.value (not $kafka.existingSecret)) (and $v.clickhouse.password.value (not $v.clickhouse.password.existingSecret)) (and $v.clickhouse.api.password.value (not $v.clickhouse.api.password.existingSecret)) (and $v.api.tokens.value (not $v.api.tokens.existingSecret)) (and $v.api.tenants.value (not $v.api.tenants.existingSecret)) (and $v.api.cursorSecret.value (not $v.api.cursorSecret.existingSecret)) }}true{{- end }}
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

{{/* How the ingestors authenticate to Kafka: CDR_KAFKA_SECURITY_* / SASL_* / SSL_* settings,
the password by Secret reference, PEM files from the mounted tls Secret (cdr.kafkaTlsVolume). */}}
{{- define "cdr.kafkaSecurityEnv" -}}
{{- $sec := .Values.kafka.security }}
- name: CDR_KAFKA_SECURITY_PROTOCOL
  value: {{ $sec.protocol | quote }}
{{- if hasPrefix "SASL_" $sec.protocol }}
- name: CDR_KAFKA_SASL_MECHANISM
  value: {{ $sec.sasl.mechanism | quote }}
- name: CDR_KAFKA_SASL_USERNAME
  value: {{ required "kafka.security.sasl.username is required for SASL" $sec.sasl.username | quote }}
{{- if not (or $sec.sasl.password.value $sec.sasl.password.existingSecret) }}
{{- fail "kafka.security.sasl.password: give .existingSecret (or .value) for SASL" }}
{{- end }}
- name: CDR_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cdr.secretName" (list $sec.sasl.password .) }}
      key: {{ $sec.sasl.password.key }}
{{- end }}
{{- if has $sec.protocol (list "SSL" "SASL_SSL") }}
- name: CDR_KAFKA_SSL_CHECK_HOSTNAME
  value: {{ $sec.tls.checkHostname | quote }}
{{- with $sec.tls.secretName }}
{{- if $sec.tls.caKey }}
- name: CDR_KAFKA_SSL_CA_FILE
  value: /etc/cdr/kafka-tls/{{ $sec.tls.caKey }}
{{- end }}
{{- if $sec.tls.certKey }}
- name: CDR_KAFKA_SSL_CERT_FILE
  value: /etc/cdr/kafka-tls/{{ $sec.tls.certKey }}
- name: CDR_KAFKA_SSL_KEY_FILE
  value: /etc/cdr/kafka-tls/{{ required "kafka.security.tls.keyKey is required with certKey" $sec.tls.keyKey }}
{{- end }}
{{- end }}
{{- else if or $sec.tls.secretName $sec.tls.certKey }}
{{- fail (printf "kafka.security.tls is set but kafka.security.protocol is %s (use SSL or SASL_SSL)" $sec.protocol) }}
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
