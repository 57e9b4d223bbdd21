{{/* The chart name, or nameOverride. */}}
{{- define "agentmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, or the release name when it
contains the chart name (the README's `helm install agentmesh`), or
<release>-<chart>. Kept to 40 characters so that <fullname>-leader-election
and friends stay valid names.
*/}}
{{- define "agentmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name and version as used by the chart label. */}}
{{- define "agentmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "agentmesh.labels" -}}
helm.sh/chart: {{ include "agentmesh.chart" . }}
{{ include "agentmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: agentmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's Pods. */}}
{{- define "agentmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "agentmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The MutatingWebhookConfiguration and ValidatingWebhookConfiguration: the
manager's --webhook-config-name and the resourceNames of its ClusterRole.
*/}}
{{- define "agentmesh.webhookConfigName" -}}
{{- include "agentmesh.fullname" . }}
{{- end }}

{{/* The Service the API server calls the webhooks through (--webhook-service). */}}
{{- define "agentmesh.webhookServiceName" -}}
{{- printf "%s-webhook" (include "agentmesh.fullname" .) }}
{{- end }}

{{/*
The Lease the elected replica holds: the manager's LeaderElectionID
(cmd/manager/main.go), which no flag changes.
*/}}
{{- define "agentmesh.leaderElectionID" -}}
agentmesh-manager.mtls.agentmesh.dev
{{- end }}
