{{/*
Expand the name of the chart.
*/}}
{{- define "imgflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "imgflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's objects: <fullname>-<component>. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "imgflow.componentName" -}}
{{- $prefix := include "imgflow.fullname" .ctx | trunc (int (sub 62 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .component }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "imgflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "imgflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imgflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels of one component's objects. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "imgflow.labels" -}}
helm.sh/chart: {{ include "imgflow.chart" .ctx }}
{{ include "imgflow.selectorLabels" . }}
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: {{ include "imgflow.name" .ctx }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Image reference of an imgflow component: repository:tag[@digest]. Call with (dict "ctx" $ "image" .Values.api.image).
*/}}
{{- define "imgflow.image" -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{/*
Pod securityContext meeting the "restricted" Pod Security Standard.
*/}}
{{- define "imgflow.podSecurityContext" -}}
runAsNonRoot: true
{{- /* A key set to null is dropped by Helm: read them with index, which tolerates that. */}}
{{- range $key := list "runAsUser" "runAsGroup" "fsGroup" }}
{{- $id := index $.Values.podSecurity $key }}
{{- if not (kindIs "invalid" $id) }}
{{ $key }}: {{ $id | int64 }}
{{- end }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container securityContext meeting the "restricted" Pod Security Standard, with a read-only root.
*/}}
{{- define "imgflow.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Whether the in-cluster dev Redis / MongoDB is deployed: "true" or "".
*/}}
{{- define "imgflow.redis.inCluster" -}}
{{- if and .Values.redis.enabled (not .Values.externalRedis.url) (not .Values.existingSecret.name) }}true{{ end }}
{{- end }}
{{- define "imgflow.mongodb.inCluster" -}}
{{- if and .Values.mongodb.enabled (not .Values.externalMongodb.url) (not .Values.existingSecret.name) }}true{{ end }}
{{- end }}
{{- define "imgflow.seaweedfs.inCluster" -}}
{{- if and .Values.seaweedfs.enabled (eq .Values.config.storageBackend "s3") (not .Values.config.s3Endpoint) }}true{{ end }}
{{- end }}

{{/*
The data volume of a dev database (dict "ctx" . "component" "redis" | "mongodb"): the claim of its
`persistence` (templates/dev-data-claims.yaml), or an emptyDir.
*/}}
{{- define "imgflow.devDataVolume" -}}
{{- if (index .ctx.Values .component).persistence.enabled -}}
persistentVolumeClaim:
  claimName: {{ include "imgflow.componentName" . }}-data
{{- else -}}
emptyDir: {}
{{- end }}
{{- end }}

{{/*
The endpoint the pods reach S3 at: `config.s3Endpoint`, or the dev SeaweedFS's Service.
*/}}
{{- define "imgflow.s3Endpoint" -}}
{{- if include "imgflow.seaweedfs.inCluster" . -}}
http://{{ include "imgflow.componentName" (dict "ctx" . "component" "seaweedfs") }}:8333
{{- else -}}
{{- .Values.config.s3Endpoint -}}
{{- end -}}
{{- end }}

{{/*
Name of the Secret holding the S3 credentials: `s3Credentials.existingSecret`, else the connection Secret.
*/}}
{{- define "imgflow.s3SecretName" -}}
{{- .Values.s3Credentials.existingSecret | default (include "imgflow.secretName" .) }}
{{- end }}

{{/*
Name of the Secret holding IMGFLOW_REDIS_URL, IMGFLOW_MONGODB_URL and, optionally, IMGFLOW_ADMIN_KEY.
*/}}
{{- define "imgflow.secretName" -}}
{{- .Values.existingSecret.name | default (include "imgflow.componentName" (dict "ctx" . "component" "connections")) }}
{{- end }}

{{- define "imgflow.configMapName" -}}
{{- include "imgflow.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{- define "imgflow.workerName" -}}
{{- include "imgflow.componentName" (dict "ctx" . "component" "worker") }}
{{- end }}

{{- define "imgflow.apiName" -}}
{{- include "imgflow.componentName" (dict "ctx" . "component" "api") }}
{{- end }}

{{- define "imgflow.operatorName" -}}
{{- include "imgflow.componentName" (dict "ctx" . "component" "operator") }}
{{- end }}

{{/*
Grace period of a worker pod: longer than the worker's own drain timeout.
*/}}
{{- define "imgflow.workerTerminationGracePeriod" -}}
{{- $drain := .Values.config.gracefulTimeoutS | float64 | ceil | int -}}
{{- $grace := index .Values.worker "terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" $grace -}}
{{- add $drain 15 -}}
{{- else -}}
{{- $grace | int -}}
{{- end -}}
{{- end }}

{{/*
Checks across values that the JSON schema cannot express; fails rendering with a readable message.
*/}}
{{- define "imgflow.validate" -}}
{{- $a := .Values.worker.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "worker.autoscaling.minReplicas (%d) must not exceed worker.autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if and (eq (int $a.minReplicas) 0) (not $a.scaleToZero) -}}
{{- fail "worker.autoscaling.minReplicas=0 needs worker.autoscaling.scaleToZero=true" -}}
{{- end -}}
{{- $grace := index .Values.worker "terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" $grace) -}}
{{- if le (float64 $grace) (float64 .Values.config.gracefulTimeoutS) -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must exceed config.gracefulTimeoutS (%v), or in-flight jobs are killed before they drain" $grace .Values.config.gracefulTimeoutS) -}}
{{- end -}}
{{- end -}}
{{- $limit := include "imgflow.mebibytes" (dig "limits" "memory" "" .Values.worker.resources) -}}
{{- $needed := add (int .Values.config.workerMemoryMb) 256 -}}
{{- if and $limit (lt (int $limit) (int $needed)) -}}
{{- fail (printf "worker.resources.limits.memory (%s) must be at least config.workerMemoryMb + 256 MiB for the process (%d Mi), or a worker holding its whole memory budget is OOM-killed" .Values.worker.resources.limits.memory $needed) -}}
{{- end -}}
{{- if not (or .Values.externalRedis.url .Values.existingSecret.name .Values.redis.enabled) -}}
{{- fail "no Redis: set externalRedis.url, existingSecret.name, or redis.enabled=true (dev only)" -}}
{{- end -}}
{{- if not (or .Values.externalMongodb.url .Values.existingSecret.name .Values.mongodb.enabled) -}}
{{- fail "no MongoDB: set externalMongodb.url, existingSecret.name, or mongodb.enabled=true (dev only)" -}}
{{- end -}}
{{- if and .Values.existingSecret.name (or .Values.externalRedis.url .Values.externalMongodb.url) -}}
{{- fail "existingSecret.name and externalRedis.url/externalMongodb.url exclude each other: put the URLs in the Secret" -}}
{{- end -}}
{{- $s3 := .Values.s3Credentials -}}
{{- if ne (not $s3.accessKeyId) (not $s3.secretAccessKey) -}}
{{- fail "s3Credentials.accessKeyId and s3Credentials.secretAccessKey go together" -}}
{{- end -}}
{{- if and $s3.accessKeyId (or .Values.existingSecret.name $s3.existingSecret) -}}
{{- fail "s3Credentials.accessKeyId is stored in the chart's Secret, which existingSecret.name or s3Credentials.existingSecret replaces: put the credentials in that Secret" -}}
{{- end -}}
{{- if and .Values.config.s3Presign (ne .Values.config.storageBackend "s3") -}}
{{- fail "config.s3Presign needs config.storageBackend=s3" -}}
{{- end -}}
{{- if eq .Values.config.storageBackend "local" -}}
{{- if not .Values.storageVolume -}}
{{- fail "config.storageBackend=local needs storageVolume (a volume shared by the API, worker and operator pods, e.g. a ReadWriteMany PVC)" -}}
{{- end -}}
{{- if not (isAbs .Values.config.storageDir) -}}
{{- fail (printf "config.storageDir must be an absolute path (the mount point of storageVolume), not %q" .Values.config.storageDir) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
A Kubernetes memory quantity ("1Gi", "768Mi", "1G", "1073741824") in whole MiB; empty when unset.
*/}}
{{- define "imgflow.mebibytes" -}}
{{- $q := toString . -}}
{{- if $q -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $number := regexFind "^[0-9.]+" $q -}}
{{- $unit := trimPrefix $number $q -}}
{{- $factor := 1 -}}
{{- if $unit -}}
{{- $factor = required (printf "unknown memory unit in %q" $q) (get $units $unit) -}}
{{- end -}}
{{- div (mulf (float64 $number) (float64 $factor) | int64) 1048576 -}}
{{- end -}}
{{- end }}

{{/*
Environment shared by the imgflow containers: the ConfigMap plus the two URLs (and the S3
credentials) from the Secrets. The admin key and the webhook secret are the API's alone
(api-deployment.yaml): the workers parse untrusted images, the operator acts on ImageJobs.
*/}}
{{- define "imgflow.envFrom" -}}
- configMapRef:
    name: {{ include "imgflow.configMapName" . }}
{{- end }}
{{- define "imgflow.connectionEnv" -}}
- name: IMGFLOW_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "imgflow.secretName" . }}
      key: {{ .Values.existingSecret.redisUrlKey }}
- name: IMGFLOW_MONGODB_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "imgflow.secretName" . }}
      key: {{ .Values.existingSecret.mongodbUrlKey }}
{{- if eq .Values.config.storageBackend "s3" }}
{{- /* optional: without them botocore uses the pod's own identity (IRSA, web identity); not for the
dev SeaweedFS, which knows only its own pair, so a Secret lacking it stops the pod with its name */}}
{{- $optional := not (include "imgflow.seaweedfs.inCluster" .) }}
- name: IMGFLOW_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "imgflow.s3SecretName" . }}
      key: {{ .Values.s3Credentials.accessKeyIdKey }}
      optional: {{ $optional }}
- name: IMGFLOW_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "imgflow.s3SecretName" . }}
      key: {{ .Values.s3Credentials.secretAccessKeyKey }}
      optional: {{ $optional }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when the configuration or the connection Secret changes.
*/}}
{{- define "imgflow.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.existingSecret.name }}
{{- /* the URLs and S3 credentials only: the generated admin key is not known before the Secret exists */}}
checksum/connections: {{ printf "%s|%s|%s|%s" .Values.externalRedis.url .Values.externalMongodb.url .Values.s3Credentials.accessKeyId .Values.s3Credentials.secretAccessKey | sha256sum }}
{{- end }}
{{- end }}

{{/*
Volumes and mounts every imgflow pod has: a writable /tmp, the local storage volume if used, and
the component's extraVolumes / extraVolumeMounts.
Call with (dict "ctx" $ "component" .Values.api "sizeLimit" "1Gi").
*/}}
{{- define "imgflow.volumes" -}}
- name: tmp
  emptyDir:
    {{- with .sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if eq .ctx.Values.config.storageBackend "local" }}
- name: storage
  {{- toYaml .ctx.Values.storageVolume | nindent 2 }}
{{- end }}
{{- with .component.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- define "imgflow.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .ctx.Values.config.storageBackend "local" }}
- name: storage
  mountPath: {{ .ctx.Values.config.storageDir }}
{{- end }}
{{- with .component.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one alert: its severity and prometheusRule.alertLabels. Call with (dict "ctx" $ "severity" "warning").
*/}}
{{- define "imgflow.alertLabels" -}}
severity: {{ .severity }}
{{- with .ctx.Values.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy rules shared by the worker and the operator: Prometheus may scrape their metrics
port; they may ask the cluster DNS and reach the chart's own Redis, MongoDB and SeaweedFS (when it
runs them) and networkPolicy.extraEgress (external ones). devBackendPorts: the port each of those
serves on (`include ... | fromYaml`), for these rules and the backends' own ingress policies.
*/}}
{{- define "imgflow.devBackendPorts" -}}
redis: 6379
mongodb: 27017
seaweedfs: 8333
{{- end }}
{{- define "imgflow.networkPolicy.metricsIngress" -}}
{{- with .Values.networkPolicy.metricsFrom -}}
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: metrics
      protocol: TCP
{{- end }}
{{- end }}
{{- define "imgflow.networkPolicy.backendEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
    # the DNS pods' ports as CoreDNS names them: policies see the pod's port, not the Service's, and
    # a CoreDNS that runs as non-root listens on another (the local node's: 1053)
    - port: dns
      protocol: UDP
    - port: dns-tcp
      protocol: TCP
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- range $component, $port := include "imgflow.devBackendPorts" . | fromYaml }}
{{- if include (printf "imgflow.%s.inCluster" $component) $ }}
- to:
    - podSelector:
        matchLabels:
          {{- include "imgflow.selectorLabels" (dict "ctx" $ "component" $component) | nindent 10 }}
  ports:
    - port: {{ $port }}
      protocol: TCP
{{- end }}
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
