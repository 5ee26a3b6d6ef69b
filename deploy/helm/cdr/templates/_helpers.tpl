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
- name: CDR_PHONE_REGION
  value: {{ .Values.phoneRegion | quote }}
- name: CDR_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* ClickHouse URL, password and TLS files: (list <url+password values> root [secret name]).
The API may read with a user of its own (clickhouse.api), granted SELECT only; the rest use
clickhouse. The migration Job names its hook Secret (the third item) for an inline password. */}}
{{- define "cdr.clickhouseEnv" -}}
{{- $ch := index . 0 }}{{- $root := index . 1 }}
- name: CDR_CLICKHOUSE_URL
  value: {{ required "clickhouse.url is required" $ch.url | quote }}
{{- if or $ch.password.value $ch.password.existingSecret }}
- name: CDR_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ if and (gt (len .) 2) (not $ch.password.existingSecret) }}{{ index . 2 }}{{ else }}{{ include "cdr.secretName" (list $ch.password $root) }}{{ end }}
      key: {{ $ch.password.key }}
{{- end }}
{{- $tls := $root.Values.clickhouse.tls }}
{{- if $tls.secretName }}
{{- if $tls.caKey }}
- name: CDR_CLICKHOUSE_CA_FILE
  value: /etc/cdr/clickhouse-tls/{{ $tls.caKey }}
{{- end }}
{{- if $tls.certKey }}
- name: CDR_CLICKHOUSE_CLIENT_CERT_FILE
  value: /etc/cdr/clickhouse-tls/{{ $tls.certKey }}
{{- with $tls.keyKey }}
- name: CDR_CLICKHOUSE_CLIENT_KEY_FILE
  value: /etc/cdr/clickhouse-tls/{{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $tls.verify }}
- name: CDR_CLICKHOUSE_VERIFY
  value: "false"
{{- end }}
{{- end }}

{{/* The ClickHouse TLS Secret: a volume and its mount, in every pod that talks to ClickHouse. */}}
{{- define "cdr.clickhouseTlsVolume" -}}
{{- with .Values.clickhouse.tls.secretName }}
- name: clickhouse-tls
  secret: {secretName: {{ . | quote }}, defaultMode: 0440}
{{- end }}
{{- end }}
{{- define "cdr.clickhouseTlsMount" -}}
{{- if .Values.clickhouse.tls.secretName }}
- {name: clickhouse-tls, mountPath: /etc/cdr/clickhouse-tls, readOnly: true}
{{- end }}
{{- end }}

{{/* Scheduling of a pod: (list <workload values> root <component>); topology spread of the
component's pods over topologySpread.topologyKeys. */}}
{{- define "cdr.scheduling" -}}
{{- $w := index . 0 }}{{- $root := index . 1 }}{{- $component := index . 2 }}
{{- with $w.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.topologySpread }}
{{- if .topologyKeys }}
topologySpreadConstraints:
  {{- range .topologyKeys }}
  - topologyKey: {{ . }}
    maxSkew: {{ $w.topologySpread.maxSkew }}
    whenUnsatisfiable: {{ $w.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "cdr.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
  {{- end }}
{{- end }}
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

{{/* A probe: the chart's path on the ops port, the operator's timings. */}}
{{- define "cdr.probe" -}}
httpGet:
  path: {{ .path }}
  port: ops
{{- with .timings }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Render-time checks: a value the pods cannot start without fails `helm install`, naming
it, instead of a pod stuck in CreateContainerConfigError. */}}
{{- define "cdr.checks" -}}
{{- $api := .Values.api }}
{{- if not (or $api.cursorSecret.value $api.cursorSecret.existingSecret) }}
{{- fail "api.cursorSecret is required: give .existingSecret (or .value, at least 32 characters)" }}
{{- end }}
{{- if and $api.cursorSecret.value (not $api.cursorSecret.existingSecret) (lt (len $api.cursorSecret.value) 32) }}
{{- fail "api.cursorSecret.value must be at least 32 characters" }}
{{- end }}
{{- if not (or $api.tokens.value $api.tokens.existingSecret $api.tenants.value $api.tenants.existingSecret) }}
{{- fail "api.tokens is required: give .existingSecret (or .value), or the tenant directory api.tenants" }}
{{- end }}
{{- $tls := .Values.clickhouse.tls }}
{{- if and $tls.secretName (not (or (hasPrefix "https://" .Values.clickhouse.url) (hasPrefix "https://" .Values.clickhouse.api.url))) }}
{{- fail "clickhouse.tls.secretName is set but no clickhouse URL is https://" }}
{{- end }}
{{- if and (or $tls.certKey $tls.keyKey) (not $tls.secretName) }}
{{- fail "clickhouse.tls.certKey/keyKey need clickhouse.tls.secretName (the Secret holding them)" }}
{{- end }}
{{- if and $api.preStopSleepSeconds (le (int $api.terminationGracePeriodSeconds) (int $api.preStopSleepSeconds)) }}
{{- fail "api.terminationGracePeriodSeconds must exceed api.preStopSleepSeconds (the sleep counts against it)" }}
{{- end }}
{{- end }}

{{/* Whether the API mounts a token file (tokens may come from the tenant directory alone). */}}
{{- define "cdr.apiTokens" -}}
{{- if or .Values.api.tokens.value .Values.api.tokens.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether the migration Job reads an inline ClickHouse password (from its hook Secret). */}}
{{- define "cdr.migrateSecret" -}}
{{- $pw := .Values.clickhouse.password }}
{{- if and .Values.migrations.enabled $pw.value (not $pw.existingSecret) }}true{{ end }}
{{- end }}

{{- define "cdr.migrateServiceAccountName" -}}
{{- $sa := .Values.migrations.serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-migrate" (include "cdr.fullname" .)) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* Ports a list of host:port addresses (or URLs) name, for egress rules. */}}
{{- define "cdr.clickhousePorts" -}}
{{- $ports := list }}
{{- range (list .Values.clickhouse.url .Values.clickhouse.api.url) }}
{{- if . }}
{{- $u := urlParse . }}
{{- $hostport := splitList ":" $u.host }}
{{- if gt (len $hostport) 1 }}
{{- $ports = append $ports (last $hostport | int) }}
{{- else }}
{{- $ports = append $ports (ternary 443 80 (eq $u.scheme "https")) }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}
{{- define "cdr.kafkaPorts" -}}
{{- $ports := list }}
{{- range splitList "," .Values.kafka.bootstrapServers }}
{{- $ports = append $ports (last (splitList ":" (trim .)) | int) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* Egress every pod needs: DNS, ClickHouse on the ports of its URLs, the operator's extra rules. */}}
{{- define "cdr.egressCommon" -}}
{{- $np := .Values.networkPolicy }}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with $np.egress.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    {{- range (include "cdr.clickhousePorts" . | fromJsonArray) }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with $np.egress.clickhouseTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $np.egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* checksum/secret of a pod: the hash of the inline secret values it reads (list of
{value, existingSecret, key} entries), so changing one component's secret restarts only it. */}}
{{- define "cdr.secretChecksum" -}}
{{- $inline := list }}
{{- range . }}{{ if and .value (not .existingSecret) }}{{ $inline = append $inline (list .key .value) }}{{ end }}{{ end }}
{{- toJson $inline | sha256sum }}
{{- end }}

{{/* Resources of an ingestor: ingest.resources when given, else the sizing rule fitted to
bench/sizing.py's peaks (bench/RESULTS.md, "Issue 26 item 2"; README, "Sizing the ingestors"):
  memory = 480 MiB + 2,700 bytes x batchSize x 2 batches held, + 25 %,
the batches held being the one validating (on a thread of the consumer) and the one being
written. Request and limit are equal: a first install catches up on the topic's whole
retention at full speed, i.e. at its peak, for as long as that takes; a request below it
would be the first evicted under node pressure. CPU: one core requested for the consumer's
event loop, no limit: the validation thread and the embedded engine's insert take spare cores. */}}
{{- define "cdr.ingestResources" -}}
{{- $ingest := .Values.ingest }}
{{- if $ingest.resources }}
{{- toYaml $ingest.resources }}
{{- else }}
{{- $base := 480 }}{{/* MiB: the consumer and what a batch costs whatever its size */}}
{{- $rowBytes := 2700 }}{{/* bytes per event of a batch held, over all its copies */}}
{{- $headroom := 25 }}{{/* percent above the fitted peak, then rounded up to 64Mi */}}
{{- $held := 2 }}{{/* batches: the one validating (on a thread), the one being written */}}
{{- $rows := mul (int $ingest.batchSize) $held }}
{{- $peak := add $base (div (mul $rows $rowBytes) 1048576) }}
{{- $memory := mul (div (add (div (mul $peak (add 100 $headroom)) 100) 63) 64) 64 }}
requests:
  cpu: "1"
  memory: {{ $memory }}Mi
limits:
  memory: {{ $memory }}Mi
{{- end }}
{{- end }}
