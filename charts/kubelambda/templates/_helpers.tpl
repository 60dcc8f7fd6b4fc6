{{/* Common labels; component is set per object (operator | gateway | invoker | queue). */}}
{{- define "kubelambda.labels" -}}
app.kubernetes.io/name: kubelambda
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubelambda.selector" -}}
app.kubernetes.io/name: kubelambda
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubelambda.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Runtime name -> image reference (JSON), for the operator. */}}
{{- define "kubelambda.runtimeImages" -}}
{{- $images := dict -}}
{{- range $runtime, $repository := .Values.runtimeImages -}}
{{- $_ := set $images $runtime (ternary $repository (printf "%s:%s" $repository $.Values.image.tag) (contains ":" $repository)) -}}
{{- end -}}
{{- toJson $images -}}
{{- end -}}

{{/* Where the gateway and the invoker reach NATS: nats.url, else the chart's own. */}}
{{- define "kubelambda.natsUrl" -}}
{{- .Values.nats.url | default (printf "nats://%s-nats.%s.svc:4222" .Release.Name .Release.Namespace) -}}
{{- end -}}

{{/* Stream replicas: nats.streamReplicas, else 3 on a JetStream cluster, 1 on one server. */}}
{{- define "kubelambda.streamReplicas" -}}
{{- $nats := .Values.nats -}}
{{- $nats.streamReplicas | default (ternary (min (int $nats.replicas) 3) 1 (and $nats.enabled (gt (int $nats.replicas) 1))) -}}
{{- end -}}

{{/* The platform pods' PriorityClass: priorityClass.name, else the chart's own (if created). */}}
{{- define "kubelambda.priorityClassName" -}}
{{- if .Values.priorityClass.name -}}
{{ .Values.priorityClass.name }}
{{- else if .Values.priorityClass.create -}}
{{ .Release.Name }}-platform
{{- end -}}
{{- end -}}
