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
https://kilowatt-etcd.{{ .Release.Namespace }}.svc:2379
{{- else -}}
{{- $endpoints := required "etcd.endpoints must list your etcd's client URLs when etcd.mode is external" (join "," .Values.etcd.endpoints) -}}
{{- if .Values.etcd.tls.secretName -}}
{{- range .Values.etcd.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.tls.secretName is set, so every etcd endpoint must be https://, not %s" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{ $endpoints }}
{{- end -}}
{{- end }}

{{/* Whether the operator and the agents speak TLS to etcd: always to the internal etcd, to an external
one when etcd.tls.secretName is set. */}}
{{- define "kilowatt.etcdTls" -}}
{{- if or (eq .Values.etcd.mode "internal") .Values.etcd.tls.secretName -}}true{{- end -}}
{{- end }}

{{/* Whether the operator and the agents present a client certificate to etcd (external etcd only: the
internal one authenticates clients by password, over TLS). */}}
{{- define "kilowatt.etcdClientCertificate" -}}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.tls.secretName .Values.etcd.tls.clientCertificate -}}true{{- end -}}
{{- end }}

{{/* The etcd TLS flags of both binaries, one list item each (the files are mounted at /etc/kilowatt/etcd-tls). */}}
{{- define "kilowatt.etcdTlsArgs" -}}
{{- if include "kilowatt.etcdTls" . }}
- --etcd-ca-file=/etc/kilowatt/etcd-tls/ca.crt
{{- if include "kilowatt.etcdClientCertificate" . }}
- --etcd-cert-file=/etc/kilowatt/etcd-tls/tls.crt
- --etcd-key-file=/etc/kilowatt/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- end }}

{{/* The etcd TLS volume of the operator and the agents. With the internal etcd only its CA: etcd's key
stays in etcd's pod. */}}
{{- define "kilowatt.etcdTlsVolume" -}}
{{- if include "kilowatt.etcdTls" . }}
- name: etcd-tls
  secret:
    {{- if eq .Values.etcd.mode "internal" }}
    secretName: kilowatt-etcd-tls
    items: [{key: ca.crt, path: ca.crt}]
    {{- else }}
    secretName: {{ .Values.etcd.tls.secretName }}
    {{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the operator's HTTPS certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "kilowatt.operatorTlsSecret" -}}
{{ .Values.operator.tls.secretName | default "kilowatt-operator-tls" }}
{{- end }}

{{/* The Secret holding the etcd root password (key `password`). */}}
{{- define "kilowatt.etcdRootSecret" -}}
{{- if eq .Values.etcd.mode "internal" -}}
{{ .Values.etcd.auth.rootPasswordSecret | default "kilowatt-etcd-root" }}
{{- else -}}
{{ required "etcd.auth.rootPasswordSecret must name a Secret with the etcd root password when etcd.mode is external and etcd.auth.enabled" .Values.etcd.auth.rootPasswordSecret }}
{{- end -}}
{{- end }}
