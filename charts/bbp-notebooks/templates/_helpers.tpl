{{/* Names, labels and derived settings shared by every template. */}}

{{- define "bbp-notebooks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; components append -operator, -hub, -proxy, -mockslurm. */}}
{{- define "bbp-notebooks.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bbp-notebooks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "bbp-notebooks.labels" -}}
helm.sh/chart: {{ include "bbp-notebooks.chart" .ctx }}
{{ include "bbp-notebooks.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bbp-notebooks
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select a component's pods; never change them in an upgrade. */}}
{{- define "bbp-notebooks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bbp-notebooks.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "bbp-notebooks.operator.name" -}}{{ include "bbp-notebooks.fullname" . }}-operator{{- end -}}
{{- define "bbp-notebooks.hub.name" -}}{{ include "bbp-notebooks.fullname" . }}-hub{{- end -}}
{{- define "bbp-notebooks.proxy.name" -}}{{ include "bbp-notebooks.fullname" . }}-proxy{{- end -}}
{{- define "bbp-notebooks.mockslurm.name" -}}{{ include "bbp-notebooks.fullname" . }}-mockslurm{{- end -}}

{{- define "bbp-notebooks.operator.serviceAccountName" -}}
{{- default (include "bbp-notebooks.operator.name" .) .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- define "bbp-notebooks.hub.serviceAccountName" -}}
{{- default (include "bbp-notebooks.hub.name" .) .Values.hub.serviceAccount.name -}}
{{- end -}}

{{/* image reference: (dict "image" .Values.operator.image "ctx" $) */}}
{{- define "bbp-notebooks.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where NotebookSessions are created by the hub. */}}
{{- define "bbp-notebooks.sessionNamespace" -}}
{{- default (printf "%s-sessions" .Release.Namespace) .Values.sessions.namespace -}}
{{- end -}}

{{/*
Namespaces the operator serves, as a JSON list: operator.settings.watchNamespaces when given, else
only the session namespace; [] (the whole cluster) only with operator.watchAllNamespaces.
*/}}
{{- define "bbp-notebooks.watchNamespaces" -}}
{{- if .Values.operator.watchAllNamespaces -}}
[]
{{- else if .Values.operator.settings.watchNamespaces -}}
{{- .Values.operator.settings.watchNamespaces | toJson -}}
{{- else -}}
{{- list (include "bbp-notebooks.sessionNamespace" .) | toJson -}}
{{- end -}}
{{- end -}}

{{/* The operator's shards (operator.shards), or one unsharded operator: a JSON list. */}}
{{- define "bbp-notebooks.operator.shards" -}}
{{- if .Values.operator.shards -}}
{{- .Values.operator.shards | toJson -}}
{{- else -}}
{{- list (dict "name" "") | toJson -}}
{{- end -}}
{{- end -}}

{{/* Peering is on exactly when more than one operator replica runs. */}}
{{- define "bbp-notebooks.operator.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/*
Namespaces whose NotebookSessions may reference an environment Secret the operator must read: the
hub's session namespace, every watched namespace, and rbac.sessionSecretNamespaces. One RoleBinding
each; the operator can read no other Secret outside its own namespace. Output: a JSON list.
*/}}
{{- define "bbp-notebooks.secretNamespaces" -}}
{{- $namespaces := list (include "bbp-notebooks.sessionNamespace" .) -}}
{{- $namespaces = concat $namespaces (include "bbp-notebooks.watchNamespaces" . | fromJsonArray) .Values.rbac.sessionSecretNamespaces -}}
{{- without ($namespaces | uniq) .Release.Namespace | toJson -}}
{{- end -}}

{{/*
The Secrets the operator may read in its own namespace, as a JSON list: the user CA, every
SlurmSite's caSecretName (default "<site>-user-ca"), and rbac.operatorSecretNames (per-user key
Secrets of UserKey sites). Nothing else: resourceNames, never a namespace-wide get.
*/}}
{{- define "bbp-notebooks.operator.secretNames" -}}
{{- $names := list .Values.userCa.secretName -}}
{{- range .Values.slurmSites -}}
{{- $auth := .spec.auth | default dict -}}
{{- $names = append $names (default (printf "%s-user-ca" .name) $auth.caSecretName) -}}
{{- end -}}
{{- concat $names .Values.rbac.operatorSecretNames | uniq | toJson -}}
{{- end -}}

{{/* The URL jobs on compute nodes POST their endpoint to. */}}
{{- define "bbp-notebooks.operator.callbackUrl" -}}
{{- if .Values.operator.callbackUrl -}}
{{- .Values.operator.callbackUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "bbp-notebooks.operator.name" .) .Release.Namespace (int .Values.operator.httpPort) -}}
{{- end -}}
{{- end -}}

{{/*
A random secret that survives upgrades: the value already stored in the cluster when there is one
(`lookup` sees nothing under `helm template`, which then renders a fresh value).
Call with (dict "ctx" $ "secret" NAME "key" KEY "length" N).
*/}}
{{- define "bbp-notebooks.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Security context shared by every container: non-root, read-only root, no privileges. */}}
{{- define "bbp-notebooks.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "bbp-notebooks.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
POSIX users no session may run as: operator.settings.protectedUsers (generated from the operator's
DEFAULT_PROTECTED_USERS), admission.protectedUsers, and every slurmSites monitorUser and adminUser. One list for
the admission policy and the operator's BBP_PROTECTED_USERS. Output: a JSON list.
*/}}
{{- define "bbp-notebooks.protectedUsers" -}}
{{- $users := concat .Values.operator.settings.protectedUsers .Values.admission.protectedUsers -}}
{{- range .Values.slurmSites -}}
{{- with .spec.monitorUser -}}
{{- $users = append $users . -}}
{{- end -}}
{{- with .spec.adminUser -}}
{{- $users = append $users . -}}
{{- end -}}
{{- end -}}
{{- $users | uniq | toJson -}}
{{- end -}}
