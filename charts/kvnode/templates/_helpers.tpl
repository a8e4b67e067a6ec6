{{- define "kvnode.name" -}}kvnode{{- end -}}

{{- define "kvnode.labels" -}}
app.kubernetes.io/name: {{ include "kvnode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "kvnode.kvdriverSelector" -}}
app.kubernetes.io/name: {{ include "kvnode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kvdriver
{{- end -}}

{{- define "kvnode.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kvnode.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/csi-secrets-store
{{- end -}}

{{- define "kvnode.nmiSelector" -}}
app.kubernetes.io/name: {{ include "kvnode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nmi
{{- end -}}

{{- define "kvnode.nmiImage" -}}
{{ .Values.nmi.image.repository }}:{{ .Values.nmi.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* nmi's node-only listener, where kvdriver asks for pod-identity tokens. */}}
{{- define "kvnode.nmiHostAddr" -}}
127.0.0.1:{{ .Values.nmi.hostPort }}
{{- end -}}

{{/*
The CSI sidecars' container security context: they talk to kvdriver and
kubelet over unix sockets in root-owned hostPath directories, as root (the
sockets' owner), and need no capability and no writable root filesystem.
*/}}
{{- define "kvnode.sidecarSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
