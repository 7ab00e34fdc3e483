{{/*
Values written for the Go original's chart (ska-ser-k8s-spookd, docs/migrating.md):
its keys take effect here as they did there, or rendering fails naming the key to rename.
*/}}

{{/* logLevel, or the original's daemon.logLevel in its place. */}}
{{- define "spookd.logLevel" -}}
{{- $level := .Values.logLevel -}}
{{- if and .Values.daemon (hasKey .Values.daemon "logLevel") -}}
{{- $old := .Values.daemon.logLevel | toString | lower -}}
{{- $new := get (dict "warn" "warning" "fatal" "critical" "panic" "critical") $old | default $old -}}
{{- if not (has $new (list "trace" "debug" "info" "success" "warning" "error" "critical")) -}}
{{- fail (printf "daemon.logLevel %q is no level of this chart: rename daemon.logLevel to logLevel, one of trace, debug, info, success, warning, error, critical (docs/migrating.md)" $old) -}}
{{- end -}}
{{- if and (ne $level "info") (ne $level $new) -}}
{{- fail (printf "daemon.logLevel (%s) and logLevel (%s) disagree: rename daemon.logLevel to logLevel and keep one (docs/migrating.md)" $old $level) -}}
{{- end -}}
{{- $level = $new -}}
{{- end -}}
{{- $level -}}
{{- end -}}

{{/* The kubelet's root: the original's kubeletPath, else where pluginDir lies. */}}
{{- define "spookd.kubeletDir" -}}
{{- if .Values.kubeletPath -}}
{{- .Values.kubeletPath | trimSuffix "/" -}}
{{- else -}}
/var/lib/kubelet
{{- end -}}
{{- end -}}

{{/* pluginDir, or <kubeletPath>/device-plugins for the original's kubeletPath. */}}
{{- define "spookd.pluginDir" -}}
{{- if .Values.kubeletPath -}}
{{- $dir := printf "%s/device-plugins" (include "spookd.kubeletDir" .) -}}
{{- if and (ne .Values.pluginDir "/var/lib/kubelet/device-plugins") (ne .Values.pluginDir $dir) -}}
{{- fail (printf "kubeletPath (%s) and pluginDir (%s) disagree: rename kubeletPath to pluginDir: %s and keep one (docs/migrating.md)" .Values.kubeletPath .Values.pluginDir $dir) -}}
{{- end -}}
{{- $dir -}}
{{- else -}}
{{- .Values.pluginDir -}}
{{- end -}}
{{- end -}}

{{/* Fails for the original's image, which takes other arguments than Spookd's. */}}
{{- define "spookd.checkImage" -}}
{{- if contains "ska-ser-k8s-spookd" .Values.image.repository -}}
{{- fail (printf "image.repository %s is the Go original's image, which does not run Spookd: remove image.repository and image.tag from your values (this chart's default image is ghcr.io/spookd/spookd), or name a Spookd image (docs/migrating.md)" .Values.image.repository) -}}
{{- end -}}
{{- end -}}
