{{- define "dnsmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dnsmesh.controller" -}}{{ include "dnsmesh.fullname" . }}-controller{{- end -}}

{{- define "dnsmesh.labels" -}}
app.kubernetes.io/name: dnsmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dnsmesh.selector" -}}
app.kubernetes.io/name: dnsmesh
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dnsmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "dnsmesh.controllerUrl" -}}https://{{ include "dnsmesh.controller" . }}:8053{{- end -}}

{{/* The pod security context of every dnsmesh pod: uid 10001, the image's user. */}}
{{- define "dnsmesh.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dnsmesh.lockedDown" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
