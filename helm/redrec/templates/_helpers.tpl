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
{{ include "redrec.scheme" .root }}://{{ include "redrec.fullname" .root }}-shard-{{ .i }}.{{ include "redrec.headless" .root }}.{{ .root.Release.Namespace }}.svc.cluster.local:{{ .root.Values.shard.port }}
{{- end -}}

{{/* The seed nodes, as id=address (node id = ordinal + 1). */}}
{{- define "redrec.peers" -}}
{{- $root := . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.shard.replication) -}}
{{- $peers = append $peers (printf "%d=%s" (add $i 1) (include "redrec.shardAddr" (dict "root" $root "i" $i))) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* The seed nodes (the first R pods): they form the first groups and hold the meta group. */}}
{{- define "redrec.seeds" -}}
{{- $root := . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.shard.replication) -}}
{{- $addrs = append $addrs (include "redrec.shardAddr" (dict "root" $root "i" $i)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{- define "redrec.voters" -}}
{{- $ids := list -}}
{{- range $i := until (int .Values.shard.replication) -}}
{{- $ids = append $ids (toString (add $i 1)) -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "redrec.groupIds" -}}
{{- $ids := list -}}
{{- range $g := until (int .Values.shard.groups) -}}
{{- $ids = append $ids (toString $g) -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "redrec.scheme" -}}
{{ ternary "https" "http" .Values.tls.enabled }}
{{- end -}}

{{- define "redrec.tlsVolume" -}}
{{- if .Values.tls.enabled }}
volumes:
  - name: tls
    secret:
      secretName: {{ required "tls.secretName names the Secret with tls.crt, tls.key and ca.crt" .Values.tls.secretName }}
{{- end }}
{{- end -}}

{{- define "redrec.tlsMount" -}}
- name: tls
  mountPath: /etc/redrec/tls
  readOnly: true
{{- end -}}

{{- define "redrec.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if .Values.tls.enabled }}
- name: REDREC_TLS_CERT
  value: /etc/redrec/tls/tls.crt
- name: REDREC_TLS_KEY
  value: /etc/redrec/tls/tls.key
- name: REDREC_TLS_CA
  value: /etc/redrec/tls/ca.crt
{{- end }}
{{- if .Values.auth.enabled }}
- name: REDREC_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "redrec.fullname" . }}-auth
      key: cluster-token
{{- end }}
{{- end -}}

{{- define "redrec.routerAuthEnv" -}}
{{- if .Values.auth.enabled }}
- name: REDREC_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "redrec.fullname" . }}-auth
      key: api-keys
{{- if .Values.auth.openMetrics }}
- name: REDREC_OPEN_METRICS
  value: "true"
{{- end }}
{{- if .Values.auth.rateLimitPerKey }}
- name: REDREC_RATE_LIMIT_PER_KEY
  value: {{ .Values.auth.rateLimitPerKey | quote }}
{{- end }}
{{- end }}
{{- end -}}
