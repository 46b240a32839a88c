{{/* The chart label every object carries. */}}
{{- define "telemetry-operator.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}
