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

