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
