{{/*
Names, labels and the pieces shared by the scheduler, the importers and the migration Job.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, else <release>-<name>, or just <release>
when it already contains the name. Kept to 40 characters so that suffixes such as
"-importer-metrics" stay within the 63-character limit.
*/}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ferry.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version for the helm.sh/chart label. */}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "ferry.selectorLabels" (list . "importer") */}}
{{- define "ferry.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ferry.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of a component's resources: include "ferry.componentLabels" (list . "importer") */}}
{{- define "ferry.componentLabels" -}}
{{ include "ferry.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Resource names. */}}
{{- define "ferry.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "ferry.fullname" .) -}}
{{- end -}}

{{- define "ferry.importer.fullname" -}}
{{- printf "%s-importer" (include "ferry.fullname" .) -}}
{{- end -}}

{{/* The importers' headless Service: the name the scheduler resolves. */}}
{{- define "ferry.importer.headlessName" -}}
{{- include "ferry.importer.fullname" . -}}
{{- end -}}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Fully qualified DNS names of the two Services the services dial. */}}
{{- define "ferry.scheduler.fqdn" -}}
{{- printf "%s.%s.svc.%s" (include "ferry.scheduler.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "ferry.importer.fqdn" -}}
{{- printf "%s.%s.svc.%s" (include "ferry.importer.headlessName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* FERRY_IMPORTERS: every address of the headless Service, re-resolved by the scheduler. */}}
{{- define "ferry.importersUrl" -}}
{{- printf "dns://%s:%d" (include "ferry.importer.fqdn" .) (int .Values.importer.ports.grpc) -}}
{{- end -}}

{{/* FERRY_SCHEDULER_URL of the importers: https when TLS is on. */}}
{{- define "ferry.schedulerUrl" -}}
{{- printf "%s://%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "ferry.scheduler.fqdn" .) (int .Values.scheduler.ports.grpc) -}}
{{- end -}}

{{/* An image reference: include "ferry.image" (list . .Values.importer.image) */}}
{{- define "ferry.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repository := $image.repository -}}
{{- with $root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The importers' termination grace period: set, or FERRY_SHUTDOWN_GRACE_SECS + 20. */}}
{{- define "ferry.importer.terminationGracePeriodSeconds" -}}
{{- $shutdown := int (default 25 .Values.importer.config.FERRY_SHUTDOWN_GRACE_SECS) -}}
{{- $grace := .Values.importer.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $grace -}}
{{- add $shutdown 20 -}}
{{- else if le (int $grace) $shutdown -}}
{{- fail (printf "importer.terminationGracePeriodSeconds (%d) must be larger than importer.config.FERRY_SHUTDOWN_GRACE_SECS (%d): importers drain on SIGTERM" (int $grace) $shutdown) -}}
{{- else -}}
{{- int $grace -}}
{{- end -}}
{{- end -}}

{{/*
Checks of values that would otherwise render a broken release. Included by the templates that
depend on them.
*/}}
{{- define "ferry.validate" -}}
{{- $owned := list "FERRY_LISTEN_ADDR" "FERRY_METRICS_ADDR" "FERRY_HEALTH_ADDR" "FERRY_REGISTRY_ADDR" "FERRY_STORAGE_URL" "FERRY_IMPORTERS" "FERRY_SCHEDULER_URL" "FERRY_DATABASE_URL" "FERRY_METADATA_DATABASE_URL" "FERRY_REDIS_URL" "FERRY_TLS_CERT_FILE" "FERRY_TLS_KEY_FILE" "FERRY_TLS_CA_FILE" "FERRY_TLS_RELOAD_SECS" "FERRY_AUTH_TOKENS_FILE" "FERRY_AUTH_TOKEN" "FERRY_REQUEST_TIMEOUT_SECS" "FERRY_MAX_CONCURRENT_REQUESTS" "FERRY_MAX_REQUEST_BYTES" -}}
{{- range $component := list "scheduler" "importer" -}}
{{- range $key, $_ := (index $.Values $component).config -}}
{{- if has $key $owned -}}
{{- fail (printf "%s.config.%s is set by the chart; use the dedicated value instead (docs/deploy.md)" $component $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt)" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.tokensSecret) -}}
{{- fail "auth.enabled needs auth.tokensSecret (a Secret holding the tokens file)" -}}
{{- end -}}
{{- range $name, $ref := .Values.secrets -}}
{{- if not (and $ref.name $ref.key) -}}
{{- fail (printf "secrets.%s needs a name and a key" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.importer.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "importer.autoscaling.enabled and keda.enabled would both scale the importers (KEDA creates its own HorizontalPodAutoscaler): set importer.autoscaling.enabled=false to scale with KEDA" -}}
{{- end -}}
{{- end -}}

{{/* The importers' replica bounds, shared by the HorizontalPodAutoscaler and the ScaledObject. */}}
{{- define "ferry.importer.autoscalingBounds" -}}
{{- with .Values.importer.autoscaling -}}
{{- if gt (int .minReplicas) (int .maxReplicas) -}}
{{- fail (printf "importer.autoscaling.minReplicas (%d) must not exceed maxReplicas (%d)" (int .minReplicas) (int .maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
importer.autoscaling.targetSlotUtilization as a quantity in thousandths (0.75: "750m"), the
HorizontalPodAutoscaler's averageValue for the per-pod utilisation metric.
*/}}
{{- define "ferry.importer.slotTargetQuantity" -}}
{{- $target := float64 .Values.importer.autoscaling.targetSlotUtilization -}}
{{- printf "%dm" (int64 (round (mulf $target 1000) 0)) | quote -}}
{{- end -}}

{{/*
The PromQL of the KEDA trigger: keda.query, else the cluster-wide slot utilisation of this
release's importers, selected by the labels the chart's ServiceMonitor gives their series
(namespace, and service: the importers' metrics Service).
*/}}
{{- define "ferry.keda.query" -}}
{{- if .Values.keda.query -}}
{{- .Values.keda.query -}}
{{- else -}}
{{- $selector := printf "namespace=%q,service=%q" .Release.Namespace (printf "%s-metrics" (include "ferry.importer.fullname" .)) -}}
{{- printf "sum(ferry_importer_slots{state=\"busy\",%s}) / sum(ferry_importer_slots{state=\"total\",%s})" $selector $selector -}}
{{- end -}}
{{- end -}}

{{/*
Settings shared by both services' ConfigMaps: storage, TLS, auth, limits and the three
listen addresses. include "ferry.commonConfig" (list . .Values.importer.ports)
*/}}
{{- define "ferry.commonConfig" -}}
{{- $root := index . 0 -}}
{{- $ports := index . 1 -}}
{{- $v := $root.Values -}}
FERRY_LISTEN_ADDR: {{ printf "0.0.0.0:%d" (int $ports.grpc) | quote }}
FERRY_METRICS_ADDR: {{ printf "0.0.0.0:%d" (int $ports.metrics) | quote }}
FERRY_HEALTH_ADDR: {{ printf "0.0.0.0:%d" (int $ports.health) | quote }}
# Two glibc malloc arenas instead of up to 8 per core: a third less peak memory, same speed (as
# the images set it; here too for images built otherwise).
MALLOC_ARENA_MAX: "2"
{{- with $v.storage.url }}
FERRY_STORAGE_URL: {{ . | quote }}
{{- end }}
{{- if $v.tls.enabled }}
FERRY_TLS_CERT_FILE: /etc/ferry/tls/tls.crt
FERRY_TLS_KEY_FILE: /etc/ferry/tls/tls.key
FERRY_TLS_CA_FILE: /etc/ferry/tls/ca.crt
{{- end }}
{{- if $v.auth.enabled }}
FERRY_AUTH_TOKENS_FILE: /etc/ferry/auth/tokens
{{- end }}
{{- if and (or $v.tls.enabled $v.auth.enabled) (include "ferry.envValue" $v.tls.reloadSecs) }}
FERRY_TLS_RELOAD_SECS: {{ include "ferry.envValue" $v.tls.reloadSecs | quote }}
{{- end }}
{{- include "ferry.componentConfig" (dict
      "FERRY_REQUEST_TIMEOUT_SECS" $v.limits.requestTimeoutSecs
      "FERRY_MAX_CONCURRENT_REQUESTS" $v.limits.maxConcurrentRequests
      "FERRY_MAX_REQUEST_BYTES" $v.limits.maxRequestBytes) }}
{{- include "ferry.componentConfig" (dict
      "FERRY_STORAGE_READ_RATE" $v.storageBudget.readRate
      "FERRY_STORAGE_WRITE_RATE" $v.storageBudget.writeRate
      "FERRY_STORAGE_MAX_READ_RATE" $v.storageBudget.maxReadRate
      "FERRY_STORAGE_MAX_WRITE_RATE" $v.storageBudget.maxWriteRate
      "FERRY_STORAGE_RAMP_SECS" $v.storageBudget.rampSecs) }}
{{- with $v.gcs.credentials.secretName }}
GOOGLE_APPLICATION_CREDENTIALS: {{ printf "/etc/ferry/gcs/%s" $v.gcs.credentials.key | quote }}
{{- end }}
{{- end -}}

{{/*
A setting as a string; null is empty. Helm reads numbers in values as floats, which toString
would print as 1e+06: whole numbers are printed as integers.
*/}}
{{- define "ferry.envValue" -}}
{{- if kindIs "invalid" . -}}
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* A component's own settings (values.<component>.config), empty values left out. */}}
{{- define "ferry.componentConfig" -}}
{{- range $key, $value := . }}
{{- $text := include "ferry.envValue" $value }}
{{- if $text }}
{{ $key }}: {{ $text | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment variables read from Secrets, and the client token. */}}
{{- define "ferry.secretEnv" -}}
{{- $name := index . 0 -}}
{{- $ref := index . 1 -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end -}}

{{- define "ferry.clientTokenEnv" -}}
{{- with .Values.auth.clientToken.secretName -}}
- name: FERRY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.auth.clientToken.key }}
{{- end -}}
{{- end -}}

{{/* Volumes shared by both Deployments: /tmp, TLS, tokens, GCS credentials. */}}
{{- define "ferry.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.tokensKey }}
        path: tokens
{{- end }}
{{- with .Values.gcs.credentials.secretName }}
- name: gcs
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.gcs.credentials.key }}
        path: {{ $.Values.gcs.credentials.key }}
{{- end }}
{{- end -}}

{{/*
Their mounts. Whole-directory mounts (no subPath), so that renewed Secrets reach the files and
the services reload them.
*/}}
{{- define "ferry.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/ferry/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/ferry/auth
  readOnly: true
{{- end }}
{{- if .Values.gcs.credentials.secretName }}
- name: gcs
  mountPath: /etc/ferry/gcs
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The three gRPC probes on the health port (a number: gRPC probes take no port names).
include "ferry.probes" (list . .Values.importer.ports)
*/}}
{{- define "ferry.probes" -}}
{{- $root := index . 0 -}}
{{- $ports := index . 1 -}}
{{- $p := $root.Values.probes -}}
{{- range $i, $kind := list "startup" "liveness" "readiness" }}
{{- if $i }}{{ "\n" }}{{ end -}}
{{ $kind }}Probe:
  grpc:
    port: {{ $ports.health }}
    {{- with $p.service }}
    service: {{ . | quote }}
    {{- end }}
  {{- toYaml (index $p $kind) | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Egress rules when networkPolicy.egress is set: DNS, the other Ferry component's gRPC port, then
the configured rules. include "ferry.networkPolicy.egress" (list . "<the component dialled>")
*/}}
{{- define "ferry.networkPolicy.egress" -}}
{{- $root := index . 0 -}}
{{- $peer := index . 1 -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    - podSelector:
        matchLabels:
          {{- include "ferry.selectorLabels" (list $root $peer) | nindent 10 }}
  ports:
    - port: {{ (index $root.Values $peer).ports.grpc }}
      protocol: TCP
{{- with $root.Values.networkPolicy.egress }}
{{ toYaml . }}
{{- end }}
{{- end -}}
