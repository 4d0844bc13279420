{{/* Common labels. */}}
{{- define "kilowatt.labels" -}}
app.kubernetes.io/part-of: kilowatt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The kilowatt image. */}}
{{- define "kilowatt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Comma-separated etcd client URLs. */}}
{{- define "kilowatt.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "internal" -}}
http://kilowatt-etcd.{{ .Release.Namespace }}.svc:2379
{{- else -}}
{{- required "etcd.endpoints must list your etcd's client URLs when etcd.mode is external" (join "," .Values.etcd.endpoints) -}}
{{- end -}}
{{- end }}

{{/* The Secret holding the etcd root password (key `password`). */}}
{{- define "kilowatt.etcdRootSecret" -}}
{{- if eq .Values.etcd.mode "internal" -}}
{{ .Values.etcd.auth.rootPasswordSecret | default "kilowatt-etcd-root" }}
{{- else -}}
{{ required "etcd.auth.rootPasswordSecret must name a Secret with the etcd root password when etcd.mode is external and etcd.auth.enabled" .Values.etcd.auth.rootPasswordSecret }}
{{- end -}}
{{- end }}
