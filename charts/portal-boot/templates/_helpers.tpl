{{/* Names and labels. Every object is named after the release (fullnameOverride wins). */}}
{{- define "portal-boot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portal-boot.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portal-boot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portal-boot.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portal-boot.labels" -}}
{{ include "portal-boot.selectorLabels" . }}
app.kubernetes.io/version: {{ include "portal-boot.tag" .root | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "portal-boot.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "portal-boot.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "portal-boot.tag" .) -}}
{{- if .Values.image.digest -}}{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "portal-boot.wheelsFromVolume" -}}
{{- if eq .Values.wheels.source "pvc" }}true{{ end -}}
{{- end -}}

{{/*
The plugin set: what the pods load. A change of it re-runs the migration Job and rolls the
pods. The enabled list is sorted: "a,b" and "b,a" select the same plugins.
*/}}
{{- define "portal-boot.pluginSet" -}}
{{- dict "image" (include "portal-boot.image" .) "enabled" (sortAlpha .Values.plugins.enabled) "revision" (toString .Values.plugins.revision) "wheels" .Values.wheels.source | toJson -}}
{{- end -}}

{{- define "portal-boot.pluginSetHash" -}}
{{- include "portal-boot.pluginSet" . | sha256sum | trunc 10 -}}
{{- end -}}

{{/*
The migration Job's name: <fullname>-migrate-<hash of the plugin set and of the Job's own
pod spec>. A Job's pod template cannot be changed once created, so any change of it must
come with a new name too; a change of anything else (replicas, the backend's resources,
probes, the ConfigMap's timeouts) leaves the name, and so the finished Job, alone.
*/}}
{{- define "portal-boot.migrationJobName" -}}
{{- $hash := printf "%s\n%s" (include "portal-boot.pluginSet" .) (include "portal-boot.jobPodTemplate" .) | sha256sum | trunc 10 -}}
{{- printf "%s-migrate-%s" (include "portal-boot.fullname" . | trunc 43 | trimSuffix "-") $hash -}}
{{- end -}}

{{- define "portal-boot.databaseSecret" -}}
{{- if .Values.database.url -}}
{{- printf "%s-database" (include "portal-boot.fullname" .) -}}
{{- else -}}
{{- required "database.existingSecret (a Secret holding the database URL) or database.url is required" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "portal-boot.migrationUrlKey" -}}
{{- if .Values.database.url -}}
{{- if .Values.database.migrationUrl }}migration-database-url{{ end -}}
{{- else -}}
{{- .Values.database.migrationUrlKey -}}
{{- end -}}
{{- end -}}

{{/* Seconds: the startup probe's budget, the pods' wait for the Job, the rollout deadline. */}}
{{- define "portal-boot.replicaWait" -}}
{{- if eq .Values.migrations "job" }}{{ int .Values.migrationJob.deadlineSeconds }}{{ else }}0{{ end -}}
{{- end -}}

{{- define "portal-boot.startupBudget" -}}
{{- add (int .Values.appStartSeconds) (mul 2 (int (include "portal-boot.replicaWait" .))) -}}
{{- end -}}

{{- define "portal-boot.startupFailureThreshold" -}}
{{- $period := int .Values.probes.startup.periodSeconds -}}
{{- div (add (int (include "portal-boot.startupBudget" .)) $period -1) $period -}}
{{- end -}}

{{- define "portal-boot.progressDeadline" -}}
{{- $init := 0 -}}
{{- if eq .Values.migrations "initContainer" -}}
{{- $init = add (int .Values.database.timeout) (int .Values.database.lockTimeout) -}}
{{- end -}}
{{- max 600 (add (int (include "portal-boot.startupBudget" .)) $init 60) -}}
{{- end -}}

{{- define "portal-boot.healthPath" -}}
{{- default "/health" .Values.healthPath -}}
{{- end -}}

{{/* Security: as k8s/. OpenShift mode leaves the UID, GID and fsGroup to the SCC. */}}
{{- define "portal-boot.podSecurityContext" -}}
runAsNonRoot: true
{{- if not .Values.openshift }}
{{ toYaml .Values.podSecurityContext }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "portal-boot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The pod-level settings every pod of the chart shares. */}}
{{- define "portal-boot.podCommon" -}}
# Service links would put FOO_PORT=tcp://... variables in the environment, among them
# PORTAL_BOOT_PORT for a Service named portal-boot.
enableServiceLinks: false
automountServiceAccountToken: false
securityContext:
  {{- include "portal-boot.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "portal-boot.volumes" -}}
{{- if include "portal-boot.wheelsFromVolume" . }}
- name: wheels
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-plugin-wheels" (include "portal-boot.fullname" .)) .Values.wheels.pvc.existingClaim }}
    readOnly: true
- name: trusted-keys
  {{- if .Values.trustedKeys.keys }}
  configMap:
    name: {{ include "portal-boot.fullname" . }}-trusted-keys
  {{- else if .Values.trustedKeys.existingSecret }}
  secret:
    secretName: {{ .Values.trustedKeys.existingSecret }}
  {{- else }}
  configMap:
    name: {{ required "trustedKeys: existingConfigMap, existingSecret or keys is required to verify the wheels" .Values.trustedKeys.existingConfigMap }}
  {{- end }}
# The parent of the target: /var/lib/portal-boot/plugins is a symlink to a generation
# folder beside it.
- name: state
  emptyDir:
    sizeLimit: {{ .Values.stateSizeLimit }}
{{- end }}
- name: database
  secret:
    secretName: {{ include "portal-boot.databaseSecret" . }}
    defaultMode: 0440
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* env of a container: .root, .step (install, migrate, serve) */}}
{{- define "portal-boot.env" -}}
{{- $v := .root.Values -}}
{{- if ne .step "install" }}
- name: DATABASE_URL_FILE
  value: {{ $v.database.mountPath }}/{{ $v.database.urlKey }}
{{- end }}
{{- $migrationKey := include "portal-boot.migrationUrlKey" .root -}}
{{- if and (eq .step "migrate") $migrationKey }}
# A direct connection for the migrations, past the pooler.
- name: PORTAL_BOOT_MIGRATION_DATABASE_URL_FILE
  value: {{ $v.database.mountPath }}/{{ $migrationKey }}
{{- end }}
{{- if and (eq .step "serve") (eq $v.migrations "job") }}
# How long a replica waits for the migration Job to bring the database to the heads.
- name: PORTAL_BOOT_DB_TIMEOUT
  value: {{ include "portal-boot.replicaWait" .root | quote }}
{{- end }}
{{- if and (eq .step "serve") $v.healthPath }}
- name: PORTAL_BOOT_HEALTH_PATH
  value: {{ $v.healthPath | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A portal-boot container: .root, .step, .name, .args, .resources */}}
{{- define "portal-boot.container" -}}
{{- $v := .root.Values -}}
{{- $fromVolume := include "portal-boot.wheelsFromVolume" .root -}}
- name: {{ .name }}
  image: {{ include "portal-boot.image" .root }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: {{ toJson .args }}
  envFrom:
    - configMapRef:
        name: {{ include "portal-boot.fullname" .root }}-config
  {{- with include "portal-boot.env" . | trim }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "portal-boot.containerSecurityContext" .root | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  volumeMounts:
    {{- /* In every container, read-only: `portal-boot status` (kubectl exec) checks the
    wheels against the installed generation, and reads the ConfigMap's
    PORTAL_BOOT_WHEEL_DIR like install does. */}}
    {{- if $fromVolume }}
    - name: wheels
      mountPath: {{ $v.wheels.mountPath }}
      readOnly: true
    - name: trusted-keys
      mountPath: {{ $v.trustedKeys.mountPath }}
      readOnly: true
    - name: state
      mountPath: /var/lib/portal-boot
      {{- if ne .step "install" }}
      readOnly: true
      {{- end }}
    {{- end }}
    {{- if ne .step "install" }}
    - name: database
      mountPath: {{ $v.database.mountPath }}
      readOnly: true
    {{- end }}
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{- define "portal-boot.installContainer" -}}
{{- if include "portal-boot.wheelsFromVolume" . -}}
{{ include "portal-boot.container" (dict "root" . "step" "install" "name" "install" "args" (list "install") "resources" .Values.initResources) }}
{{- end -}}
{{- end -}}

{{/* The migration Job's pod template: its hash is part of the Job's name. */}}
{{- define "portal-boot.jobPodTemplate" -}}
metadata:
  labels:
    {{- include "portal-boot.selectorLabels" (dict "root" . "component" "migrate") | nindent 4 }}
spec:
  restartPolicy: Never
  {{- include "portal-boot.podCommon" . | nindent 2 }}
  {{- with include "portal-boot.installContainer" . }}
  initContainers:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    {{- include "portal-boot.container" (dict "root" . "step" "migrate" "name" "migrate" "args" (list "migrate") "resources" .Values.migrationJob.resources) | nindent 4 }}
  volumes:
    {{- include "portal-boot.volumes" . | trim | nindent 4 }}
{{- end -}}
