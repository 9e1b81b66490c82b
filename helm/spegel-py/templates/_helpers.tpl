{{/*
Names, labels and the few computed values every template shares.
*/}}

{{/* Chart name, overridable. */}}
{{- define "spegel-py.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. Truncated to 50 characters (not 63) so that suffixed names
such as "<fullname>-cleanup-wait" (13 more) still fit a DNS label.
*/}}
{{- define "spegel-py.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spegel-py.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spegel-py.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's pods; never change them between versions. */}}
{{- define "spegel-py.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spegel-py.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "spegel-py.labels" -}}
helm.sh/chart: {{ include "spegel-py.chart" . }}
{{ include "spegel-py.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spegel-py.serviceAccountName" -}}
{{- default (include "spegel-py.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Image reference: a digest pins it, else the tag (default: appVersion). */}}
{{- define "spegel-py.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Cluster domain with exactly one trailing dot (an absolute DNS name skips search domains). */}}
{{- define "spegel-py.clusterDomain" -}}
{{- printf "%s." (trimSuffix "." .Values.clusterDomain) }}
{{- end }}

{{/* FQDN of the headless bootstrap Service: every pod, ready or not. */}}
{{- define "spegel-py.bootstrapDomain" -}}
{{- default (printf "%s-bootstrap.%s.svc.%s" (include "spegel-py.fullname" .) (include "spegel-py.namespace" .) (include "spegel-py.clusterDomain" .)) .Values.bootstrap.dns.domain }}
{{- end }}

{{/* Label selector string the kubernetes bootstrap lists peer pods with. */}}
{{- define "spegel-py.kubernetesSelector" -}}
{{- if .Values.bootstrap.kubernetes.labelSelector }}
{{- .Values.bootstrap.kubernetes.labelSelector }}
{{- else }}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=registry" (include "spegel-py.name" .) .Release.Name }}
{{- end }}
{{- end }}

{{/* The container's view of the node's IP (containerd reaches the mirror there). */}}
{{- define "spegel-py.nodeIPEnv" -}}
- name: NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}

{{/*
Values whose range the schema cannot express, checked here so that a bad one fails the install
instead of every pod: the same rules as the CLI's parsers (spegel_py/settings.py). The schema has
already checked the syntax. Numbers are parsed as floats: a leading 0 is not octal, as in Python.
*/}}

{{/* Bytes in a size the schema has checked (as parse_size reads it), as a float. */}}
{{- define "spegel-py.bytes" -}}
{{- $units := dict "" 1 "b" 1 "k" 1024 "kb" 1000 "kib" 1024 "m" 1048576 "mb" 1000000 "mib" 1048576 "g" 1073741824 "gb" 1000000000 "gib" 1073741824 }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $unit := regexReplaceAll "^[0-9]+\\s*" . "" | lower }}
{{- mulf $number (get $units $unit) }}
{{- end }}

{{/* spegel.relayBufferSize, at least 64KiB (parse_buffer_size). */}}
{{- define "spegel-py.relayBufferSize" -}}
{{- $value := .Values.spegel.relayBufferSize }}
{{- if lt (include "spegel-py.bytes" $value | float64) 65536.0 }}
{{- fail (printf "spegel.relayBufferSize must be at least 64KiB: %q" $value) }}
{{- end }}
{{- $value }}
{{- end }}

{{/* Seconds in a Go duration the schema has checked (as parse_duration reads it), as a float. */}}
{{- define "spegel-py.seconds" -}}
{{- $units := dict "ns" 1e-9 "us" 1e-6 "µs" 1e-6 "ms" 1e-3 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $seconds := 0.0 }}
{{- range regexFindAll "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h)" . -1 }}
{{- $unit := regexFind "[a-zµ]+$" . }}
{{- $seconds = addf $seconds (mulf (trimSuffix $unit .) (get $units $unit)) }}
{{- end }}
{{- $seconds }}
{{- end }}

{{/*
spegel.reprovideInterval, above 0 and below the 19m a provider record is valid
(parse_reprovide_interval).
*/}}
{{- define "spegel-py.reprovideInterval" -}}
{{- $value := .Values.spegel.reprovideInterval }}
{{- $seconds := include "spegel-py.seconds" $value | float64 }}
{{- if not (and (gt $seconds 0.0) (lt $seconds 1140.0)) }}
{{- fail (printf "spegel.reprovideInterval must be above 0 and below 19m (the record lifetime): %q" $value) }}
{{- end }}
{{- $value }}
{{- end }}

{{/*
A server timeout of spegel.<name>, above 0 like the CLI requires (--header-timeout and its
siblings). Called with (list $ "<name>").
*/}}
{{- define "spegel-py.positiveDuration" -}}
{{- $name := index . 1 }}
{{- $value := get (index . 0).Values.spegel $name }}
{{- if not (gt (include "spegel-py.seconds" $value | float64) 0.0) }}
{{- fail (printf "spegel.%s must be above 0: %q" $name $value) }}
{{- end }}
{{- $value }}
{{- end }}

{{/*
spegel.mirrorThroughputWindow, above 0 while spegel.mirrorMinThroughput is (the CLI's rule for
--mirror-throughput-window).
*/}}
{{- define "spegel-py.mirrorThroughputWindow" -}}
{{- $value := .Values.spegel.mirrorThroughputWindow }}
{{- $floor := include "spegel-py.bytes" .Values.spegel.mirrorMinThroughput | float64 }}
{{- if and (gt $floor 0.0) (not (gt (include "spegel-py.seconds" $value | float64) 0.0)) }}
{{- fail (printf "spegel.mirrorThroughputWindow must be above 0 while spegel.mirrorMinThroughput is: %q" $value) }}
{{- end }}
{{- $value }}
{{- end }}
