{{- define "redrec.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "redrec.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "redrec.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "redrec.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "redrec.headless" -}}
{{ include "redrec.fullname" . }}-shard-headless
{{- end -}}

{{/* Address of shard node i (0-based ordinal) through the headless service. */}}
{{- define "redrec.shardAddr" -}}
http://{{ include "redrec.fullname" .root }}-shard-{{ .i }}.{{ include "redrec.headless" .root }}.{{ .root.Release.Namespace }}.svc.cluster.local:{{ .root.Values.shard.port }}
{{- end -}}

{{/* Every shard node, as id=address (node id = ordinal + 1). */}}
{{- define "redrec.peers" -}}
{{- $root := . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.shard.replicas) -}}
{{- $peers = append $peers (printf "%d=%s" (add $i 1) (include "redrec.shardAddr" (dict "root" $root "i" $i))) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* The router's groups: every group is replicated on every shard node. */}}
{{- define "redrec.groups" -}}
{{- $root := . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.shard.replicas) -}}
{{- $addrs = append $addrs (include "redrec.shardAddr" (dict "root" $root "i" $i)) -}}
{{- end -}}
{{- $groups := list -}}
{{- range $g := until (int .Values.shard.groups) -}}
{{- $groups = append $groups (join "," $addrs) -}}
{{- end -}}
{{- join ";" $groups -}}
{{- end -}}

{{- define "redrec.groupIds" -}}
{{- $ids := list -}}
{{- range $g := until (int .Values.shard.groups) -}}
{{- $ids = append $ids (toString $g) -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "redrec.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if .Values.apiKeys }}
- name: REDREC_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "redrec.fullname" . }}-api-keys
      key: keys
{{- end }}
{{- end -}}
