{{- define "chaos-training.name" -}}{{ .Release.Name }}-chaos-operator{{- end -}}
{{- define "chaos-training.labels" -}}
app.kubernetes.io/name: chaos-training
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "chaos-training.selector" -}}
app.kubernetes.io/name: chaos-training
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- /* labels and annotations of a ServiceMonitor/PodMonitor: the chart's plus the user's
(e.g. release: <name>, which kube-prometheus-stack selects monitors by). Call with (list . monitorValues). */ -}}
{{- define "chaos-training.monitorMeta" -}}
{{- $root := index . 0 -}}
{{- $monitor := index . 1 -}}
labels:
  {{- include "chaos-training.labels" $root | nindent 2 }}
  {{- with $monitor.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $monitor.annotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
