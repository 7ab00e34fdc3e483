{{/* The chart name, overridable. */}}
{{- define "spookd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of every object: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "spookd.fullname" -}}
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

{{- define "spookd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spookd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spookd.labels" -}}
{{ include "spookd.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spookd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spookd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap Spookd watches: the rendered one, or one the operator manages. */}}
{{- define "spookd.configMapName" -}}
{{- default (printf "%s-config" (include "spookd.fullname" .)) .Values.configMap.existingName }}
{{- end }}

{{- define "spookd.image" -}}
{{- include "spookd.checkImage" . -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* DRA mode refuses the device-plugin options it would silently ignore. */}}
{{- define "spookd.checkDra" -}}
{{- if .Values.dra.enabled -}}
{{- range $key := list "exclusive" "cleanupStaleResources" "nodeLabels" -}}
{{- if get $.Values.rbac $key -}}
{{- fail (printf "rbac.%s is a device-plugin option with no effect in DRA mode (dra.enabled: true): unset rbac.%s (docs/dra.md, \"Install DRA mode with Helm\")" $key $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The publisher's name and ServiceAccount (DRA mode): its own, so the nodes' cannot write slices. */}}
{{- define "spookd.publisherName" -}}
{{- printf "%s-publisher" (include "spookd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Another app.kubernetes.io/name: the DaemonSet's (immutable) selector must not match the publisher. */}}
{{- define "spookd.publisherSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-publisher" (include "spookd.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: publisher
{{- end }}

{{- define "spookd.publisherServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- include "spookd.publisherName" . }}
{{- else }}
{{- default "default" .Values.dra.publisher.serviceAccountName }}
{{- end }}
{{- end }}

{{/* DRA mode: the kubelet's root on the host; default the directory above pluginDir
(so a microk8s pluginDir carries over). */}}
{{- define "spookd.draKubeletDir" -}}
{{- default (dir (include "spookd.pluginDir" .)) .Values.dra.kubeletDir | trimSuffix "/" -}}
{{- end -}}
