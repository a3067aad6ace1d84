{{/* The release's object names: the release name if it holds the chart's, else <release>-<chart>. */}}
{{- define "xtrain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* app.kubernetes.io/name is the chart's name: the ServiceMonitor's jobLabel, so the scrape job is
     "xtrain" as deploy/prometheus/xtrain-alerts.yaml expects. */}}
{{- define "xtrain.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "xtrain.labels" -}}
{{ include "xtrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Refuses value sets that cannot work, with what to change. */}}
{{- define "xtrain.validate" -}}
{{- $kind := .Values.store.kind -}}
{{- if not (has $kind (list "sqlite" "postgresql")) -}}
{{- fail (printf "store.kind must be sqlite or postgresql, not %q" $kind) -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be 1 or more" -}}
{{- end -}}
{{- if and (eq $kind "sqlite") (ne (int .Values.replicas) 1) -}}
{{- fail (printf "store.kind=sqlite keeps the job store in one file on one pod's volume, so replicas must be 1 (got %d): for several replicas set store.kind=postgresql and store.postgresql.secretName" (int .Values.replicas)) -}}
{{- end -}}
{{- if eq $kind "postgresql" -}}
{{- $_ := required "store.kind=postgresql needs store.postgresql.secretName: a Secret holding the URL postgresql://user:pass@host:5432/db" .Values.store.postgresql.secretName -}}
{{- end -}}
{{- range $name, $volume := dict "checkpoints" .Values.persistence.checkpoints "data" .Values.persistence.data -}}
{{- if and (gt (int $.Values.replicas) 1) (eq $volume.accessMode "ReadWriteOnce") -}}
{{- fail (printf "persistence.%s.accessMode=ReadWriteOnce cannot be shared by %d replicas: leave it empty (ReadWriteMany) or use 1 replica" $name (int $.Values.replicas)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.clientCaSecretName (not .Values.tls.secretName) -}}
{{- fail "tls.clientCaSecretName needs tls.secretName (the server's own certificate and key)" -}}
{{- end -}}
{{- if .Values.devices -}}
{{- $cuda := 0 -}}
{{- range .Values.devices -}}
{{- if hasPrefix "cuda:" . -}}{{- $cuda = add1 $cuda -}}{{- end -}}
{{- end -}}
{{- if ne (int $cuda) (int .Values.gpu.count) -}}
{{- fail (printf "devices names %d cuda devices but gpu.count is %d: give one --device per GPU the pod gets" (int $cuda) (int .Values.gpu.count)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* --device specs, comma-separated (XTRAIN_DEVICES); empty for the server's default. */}}
{{- define "xtrain.devices" -}}
{{- if .Values.devices -}}
{{- join "," .Values.devices -}}
{{- else if gt (int .Values.gpu.count) 0 -}}
{{- $specs := list -}}
{{- range $i := until (int .Values.gpu.count) -}}
{{- $specs = append $specs (printf "cuda:%d:capacity=%s:slots=%d" $i $.Values.gpu.capacity (int $.Values.gpu.slots)) -}}
{{- end -}}
{{- join "," $specs -}}
{{- end -}}
{{- end -}}

{{/* A volume's access mode: as given, else ReadWriteOnce for 1 replica and ReadWriteMany for more. */}}
{{- define "xtrain.accessMode" -}}
{{- if .volume.accessMode -}}
{{- .volume.accessMode -}}
{{- else if gt (int .replicas) 1 -}}
ReadWriteMany
{{- else -}}
ReadWriteOnce
{{- end -}}
{{- end -}}
