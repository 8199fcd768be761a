{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "nats-k8s-oidc-callout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else release name (when it already holds the chart name) or
release-chart; 63 characters at most (DNS label limit).
*/}}
{{- define "nats-k8s-oidc-callout.fullname" -}}
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

{{- define "nats-k8s-oidc-callout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nats-k8s-oidc-callout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nats-k8s-oidc-callout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nats-k8s-oidc-callout.labels" -}}
helm.sh/chart: {{ include "nats-k8s-oidc-callout.chart" . }}
{{ include "nats-k8s-oidc-callout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* With serviceAccount.create false the name is required (the validate helper checks it). */}}
{{- define "nats-k8s-oidc-callout.serviceAccountName" -}}
{{- $sa := .Values.serviceAccount | default dict }}
{{- if $sa.create }}
{{- default (include "nats-k8s-oidc-callout.fullname" .) $sa.name }}
{{- else }}
{{- $sa.name }}
{{- end }}
{{- end }}

{{/* Cluster-scoped names carry the namespace so two releases of the same name never collide. */}}
{{- define "nats-k8s-oidc-callout.clusterRoleName" -}}
{{- printf "%s-%s" (include "nats-k8s-oidc-callout.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "nats-k8s-oidc-callout.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/*
The file-type secrets (signing seed, xkey seed, creds): on, Secret name and key.
Argument: dict "ctx" $ "v" <values object> "suffix" <name suffix of the chart's Secret> "file" <file name>.
*/}}
{{- define "nats-k8s-oidc-callout.fileSecretEnabled" -}}
{{- $v := .v | default dict }}
{{- if or $v.create $v.existingSecret }}true{{ end }}
{{- end }}

{{- define "nats-k8s-oidc-callout.fileSecretName" -}}
{{- $v := .v | default dict }}
{{- if $v.create }}
{{- printf "%s-%s" (include "nats-k8s-oidc-callout.fullname" .ctx) .suffix }}
{{- else }}
{{- $v.existingSecret }}
{{- end }}
{{- end }}

{{- define "nats-k8s-oidc-callout.fileSecretKey" -}}
{{- $v := .v | default dict }}
{{- if $v.create }}
{{- .file }}
{{- else }}
{{- default .file $v.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Checks one file-type secret value; .path names it in the messages. */}}
{{- define "nats-k8s-oidc-callout.validateFileSecret" -}}
{{- $v := .v | default dict }}
{{- $p := .path }}
{{- if and $v.create $v.existingSecret }}
{{- fail (printf "%s: set either %s.create=true with %s.content, or %s.existingSecret, not both" $p $p $p $p) }}
{{- end }}
{{- if and $v.create (not $v.content) }}
{{- fail (printf "%s.create is true but %s.content is empty: pass the file with --set-file %s.content=PATH, or use %s.existingSecret" $p $p $p $p) }}
{{- end }}
{{- if and (not $v.create) $v.content }}
{{- fail (printf "%s.content is set but %s.create is false: set %s.create=true to store it in a Secret the chart creates" $p $p $p) }}
{{- end }}
{{- end }}

{{/*
A service duration (`90`, `90s`, `15m`, `1h`, `500ms`: the grammar of the service's
parse_duration) in milliseconds. Argument: dict "path" <value name> "value" <the string>.
A number of more than 12 digits (leading zeros aside) is above every bound of the service: it
comes out as 10^18 ms instead of overflowing int64.
*/}}
{{- define "nats-k8s-oidc-callout.durationMs" -}}
{{- $s := toString .value }}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h)?$" $s) }}
{{- fail (printf "%s=%q is not a duration the service accepts: a number followed by ms, s, m or h, or a bare number of seconds (e.g. 90s, 15m, 1h)" .path $s) }}
{{- end }}
{{- $digits := regexFind "^[0-9]+" $s }}
{{- $unit := trimPrefix $digits $s }}
{{- $num := regexReplaceAll "^0+" $digits "" }}
{{- if gt (len $num) 12 }}
{{- "1000000000000000000" }}
{{- else }}
{{- $factor := get (dict "" 1000 "s" 1000 "ms" 1 "m" 60000 "h" 3600000) $unit }}
{{- mul (int64 (atoi (default "0" $num))) $factor }}
{{- end }}
{{- end }}

{{/*
Checks a duration value against the service's bounds. Argument: dict "path" <value name>
"value" <string> "min" <ms> "max" <ms> "range" <the bounds as text> "env" <variable>.
*/}}
{{- define "nats-k8s-oidc-callout.validateDuration" -}}
{{- $ms := include "nats-k8s-oidc-callout.durationMs" . | int64 }}
{{- if or (lt $ms (int64 .min)) (gt $ms (int64 .max)) }}
{{- fail (printf "%s=%q is out of range: the service accepts %s %s (it would refuse to start)" .path (toString .value) .env .range) }}
{{- end }}
{{- end }}

{{/*
Every check on the values that the schema cannot express; rendered once, from the Deployment.
Messages name the value to set and never echo a secret.
*/}}
{{- define "nats-k8s-oidc-callout.validate" -}}
{{- $img := .Values.image | default dict }}
{{- if not (trim (toString ($img.repository | default ""))) }}
{{- fail "image.repository is required: no public image is published; build one with scripts/build-image and push it to your registry (docs/DEPLOY.md step 1)" }}
{{- end }}
{{- $n := .Values.nats | default dict }}
{{- if not (trim (toString ($n.account | default ""))) }}
{{- fail "nats.account is required: set it to the NATS account clients are placed in (e.g. --set nats.account=APP)" }}
{{- end }}
{{- $sa := .Values.serviceAccount | default dict }}
{{- if and (not $sa.create) (not $sa.name) }}
{{- fail "serviceAccount.create is false but serviceAccount.name is empty: set serviceAccount.name to the existing ServiceAccount the pods run as (the chart never falls back to the namespace's default ServiceAccount)" }}
{{- end }}
{{- $selectorKeys := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "helm.sh/chart" }}
{{- range $key, $_ := (.Values.podLabels | default dict) }}
{{- if has $key $selectorKeys }}
{{- fail (printf "podLabels must not set %s: the chart sets it on the pods (app.kubernetes.io/name and app.kubernetes.io/instance are the Deployment's selector; use nameOverride to change the name)" $key) }}
{{- end }}
{{- end }}
{{- $cfg := .Values.config | default dict }}
{{- $durations := list
  (dict "key" "jwtLeeway" "env" "JWT_LEEWAY" "min" 0 "max" 300000 "range" "from 0s to 5m")
  (dict "key" "userJwtMaxLifetime" "env" "USER_JWT_MAX_LIFETIME" "min" 10000 "max" 604800000 "range" "from 10s to 7 days (168h)")
  (dict "key" "shutdownTimeout" "env" "SHUTDOWN_TIMEOUT" "min" 0 "max" 300000 "range" "from 0s to 300s")
  (dict "key" "jwksMinRefetchInterval" "env" "JWKS_MIN_REFETCH_INTERVAL" "min" 1000 "max" 3600000 "range" "from 1s to 1h")
  (dict "key" "jwksRefetchWait" "env" "JWKS_REFETCH_WAIT" "min" 0 "max" 2000 "range" "from 0s to 2s") }}
{{- range $durations }}
{{- $v := get $cfg .key }}
{{- if not (or (kindIs "invalid" $v) (eq (toString $v) "")) }}
{{- include "nats-k8s-oidc-callout.validateDuration" (merge (dict "path" (printf "config.%s" .key) "value" $v) .) }}
{{- end }}
{{- end }}
{{- $shutdown := "10s" }}
{{- $shutdownNote := " (the service default)" }}
{{- if not (or (kindIs "invalid" $cfg.shutdownTimeout) (eq (toString $cfg.shutdownTimeout) "")) }}
{{- $shutdown = toString $cfg.shutdownTimeout }}
{{- $shutdownNote = "" }}
{{- end }}
{{- $shutdownMs := include "nats-k8s-oidc-callout.durationMs" (dict "path" "config.shutdownTimeout" "value" $shutdown) | int64 }}
{{- $grace := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}{{ $grace = 30 }}{{ end }}
{{- if lt (mul (int64 $grace) 1000) (add $shutdownMs 5000) }}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short for config.shutdownTimeout=%s%s: shutdown takes up to SHUTDOWN_TIMEOUT + 5s, so set terminationGracePeriodSeconds to at least %d or lower config.shutdownTimeout" (int64 $grace) $shutdown $shutdownNote (div (add $shutdownMs 5999) 1000)) }}
{{- end }}
{{- include "nats-k8s-oidc-callout.validateFileSecret" (dict "v" $n.signingKey "path" "nats.signingKey") }}
{{- include "nats-k8s-oidc-callout.validateFileSecret" (dict "v" $n.userCredentials "path" "nats.userCredentials") }}
{{- include "nats-k8s-oidc-callout.validateFileSecret" (dict "v" $n.xkey "path" "nats.xkey") }}
{{- include "nats-k8s-oidc-callout.validateFileSecret" (dict "v" $n.nkeySeed "path" "nats.nkeySeed") }}
{{- include "nats-k8s-oidc-callout.validateFileSecret" (dict "v" $n.calloutSigningKey "path" "nats.calloutSigningKey") }}
{{- include "nats-k8s-oidc-callout.validateOperatorMode" . }}
{{- if not (include "nats-k8s-oidc-callout.fileSecretEnabled" (dict "v" $n.signingKey)) }}
{{- fail "a signing key is required: set nats.signingKey.existingSecret (a Secret holding the account seed SA...), or nats.signingKey.create=true with nats.signingKey.content (e.g. --set-file nats.signingKey.content=./keys/signing.nk)" }}
{{- end }}
{{- $tokenSecret := ($n.tokenSecret | default dict).existingSecret }}
{{- if and $n.token $tokenSecret }}
{{- fail "nats.token and nats.tokenSecret.existingSecret are both set: use one of them" }}
{{- end }}
{{- if and (include "nats-k8s-oidc-callout.fileSecretEnabled" (dict "v" $n.userCredentials)) (or $n.token $tokenSecret) }}
{{- fail "nats.userCredentials and nats.token (or nats.tokenSecret) are both set: the service logs in to NATS with at most one of them" }}
{{- end }}
{{- $logins := list }}
{{- if include "nats-k8s-oidc-callout.fileSecretEnabled" (dict "v" $n.userCredentials) }}{{ $logins = append $logins "nats.userCredentials" }}{{ end }}
{{- if include "nats-k8s-oidc-callout.fileSecretEnabled" (dict "v" $n.nkeySeed) }}{{ $logins = append $logins "nats.nkeySeed" }}{{ end }}
{{- if or $n.token $tokenSecret }}{{ $logins = append $logins "nats.token (or nats.tokenSecret)" }}{{ end }}
{{- if gt (len $logins) 1 }}
{{- fail (printf "%s are all set: the service logs in to NATS with at most one of them" (join ", " $logins)) }}
{{- end }}
{{- $tls := $n.tls | default dict }}
{{- if and $tls.existingSecret (not $tls.caKey) (not $tls.clientCertificate) }}
{{- fail "nats.tls.existingSecret is set but nothing is taken from it: set nats.tls.caKey (the CA bundle's key) or nats.tls.clientCertificate=true" }}
{{- end }}
{{- if and $tls.clientCertificate (not $tls.existingSecret) }}
{{- fail "nats.tls.clientCertificate is true but nats.tls.existingSecret is empty: name the Secret holding the client certificate and key (nats.tls.certKey, nats.tls.keyKey)" }}
{{- end }}
{{- $urlSecret := ($n.urlSecret | default dict).existingSecret }}
{{- if and $n.url $urlSecret }}
{{- fail "nats.url and nats.urlSecret.existingSecret are both set: use one of them" }}
{{- end }}
{{- if contains "@" ($n.url | default "") }}
{{- fail "nats.url must not hold credentials (user:password@ or token@ would be readable by anyone who can read the Deployment): put the whole URL in a Secret and set nats.urlSecret.existingSecret (and nats.urlSecret.existingSecretKey) instead, leaving nats.url empty" }}
{{- end }}
{{- $kube := include "nats-k8s-oidc-callout.kubeVersion" . }}
{{- if and (.Values.admissionPolicy | default dict).enabled (not (semverCompare ">=1.30.0-0" $kube)) }}
{{- fail (printf "admissionPolicy.enabled needs Kubernetes 1.30 or newer (admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy); this cluster is %s" $kube) }}
{{- end }}
{{- $chartEnv := splitList " " (include "nats-k8s-oidc-callout.chartEnvNames" .) }}
{{- $seen := dict }}
{{- range $i, $e := (.Values.extraEnv | default list) }}
{{- $name := toString ($e.name | default "") }}
{{- if has $name $chartEnv }}
{{- fail (printf "extraEnv[%d] sets %s, which the chart sets from its values: use the chart's value for it (helm/nats-k8s-oidc-callout/README.md), not extraEnv" $i $name) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "extraEnv[%d] sets %s a second time: each name may appear once" $i $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget | default dict }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled is true but neither podDisruptionBudget.maxUnavailable nor podDisruptionBudget.minAvailable is set" }}
{{- end }}
{{- end }}

{{/*
Operator mode (nats.operatorMode): its settings are refused without it, as the service refuses
them, and with it every account is a public key, as the service requires.
*/}}
{{- define "nats-k8s-oidc-callout.validateOperatorMode" -}}
{{- $n := .Values.nats | default dict }}
{{- $accountKeys := $n.accountSigningKeys | default dict }}
{{- if and $accountKeys.create $accountKeys.existingSecret }}
{{- fail "nats.accountSigningKeys: set either nats.accountSigningKeys.create=true with nats.accountSigningKeys.files, or nats.accountSigningKeys.existingSecret, not both" }}
{{- end }}
{{- if and $accountKeys.create (not $accountKeys.files) }}
{{- fail "nats.accountSigningKeys.create is true but nats.accountSigningKeys.files is empty: give one <ACCOUNT PUBLIC KEY>.nk (or .scoped.nk) file per account, or use nats.accountSigningKeys.existingSecret" }}
{{- end }}
{{- if and (not $accountKeys.create) $accountKeys.files }}
{{- fail "nats.accountSigningKeys.files is set but nats.accountSigningKeys.create is false: set nats.accountSigningKeys.create=true to store them in a Secret the chart creates" }}
{{- end }}
{{- $callout := $n.calloutSigningKey | default dict }}
{{- if $n.operatorMode }}
{{- if and $n.calloutAccount (not (or $callout.create $callout.existingSecret)) }}
{{- fail "nats.calloutAccount is set but nats.calloutSigningKey is off: it names the account whose signing key nats.calloutSigningKey holds; set that key, or remove nats.calloutAccount" }}
{{- end }}
{{- if not (regexMatch "^A[A-Z2-7]{55}$" (toString $n.account)) }}
{{- fail (printf "nats.account=%q: in operator mode it must be the clients' account public key (A..., 56 characters), not a name (nats-k8s-oidc-callout keys operator prints it as APP's account key)" (toString $n.account)) }}
{{- end }}
{{- with .Values.policy }}
{{- range $i, $rule := (.rules | default list) }}
{{- if and (hasKey $rule "account") (not (regexMatch "^A[A-Z2-7]{55}$" (toString $rule.account))) }}
{{- fail (printf "policy.rules[%d].account=%q: in operator mode it must be an account public key (A..., 56 characters), with its key in nats.accountSigningKeys" $i (toString $rule.account)) }}
{{- end }}
{{- end }}
{{- end }}
{{- else }}
{{- $set := list }}
{{- if or $callout.create $callout.existingSecret }}{{ $set = append $set "nats.calloutSigningKey" }}{{ end }}
{{- if or $accountKeys.create $accountKeys.existingSecret }}{{ $set = append $set "nats.accountSigningKeys" }}{{ end }}
{{- if ($n.signingKey | default dict).scoped }}{{ $set = append $set "nats.signingKey.scoped" }}{{ end }}
{{- if $n.calloutAccount }}{{ $set = append $set "nats.calloutAccount" }}{{ end }}
{{- if $set }}
{{- fail (printf "%s apply to operator mode only: set nats.operatorMode=true (nats-server runs with an operator and JWT accounts), or remove them (in config mode nats.signingKey signs everything)" (join ", " $set)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The chart-created secret contents, hashed into a pod annotation so a change rolls the pods. */}}
{{- define "nats-k8s-oidc-callout.secretsChecksum" -}}
{{- $n := .Values.nats | default dict }}
{{- $d := dict }}
{{- if ($n.signingKey | default dict).create }}{{ $_ := set $d "signingKey" $n.signingKey.content }}{{ end }}
{{- if ($n.xkey | default dict).create }}{{ $_ := set $d "xkey" $n.xkey.content }}{{ end }}
{{- if ($n.userCredentials | default dict).create }}{{ $_ := set $d "userCredentials" $n.userCredentials.content }}{{ end }}
{{- if ($n.nkeySeed | default dict).create }}{{ $_ := set $d "nkeySeed" $n.nkeySeed.content }}{{ end }}
{{- if ($n.calloutSigningKey | default dict).create }}{{ $_ := set $d "calloutSigningKey" $n.calloutSigningKey.content }}{{ end }}
{{- if ($n.accountSigningKeys | default dict).create }}{{ $_ := set $d "accountSigningKeys" $n.accountSigningKeys.files }}{{ end }}
{{- if $n.token }}{{ $_ := set $d "token" $n.token }}{{ end }}
{{- if .Values.secretEnv }}{{ $_ := set $d "secretEnv" .Values.secretEnv }}{{ end }}
{{- if .Values.secretVolume }}{{ $_ := set $d "secretVolume" .Values.secretVolume }}{{ end }}
{{- if $d }}{{ toJson $d | sha256sum }}{{ end }}
{{- end }}

{{/* The cluster's Kubernetes version: kubeVersion when set, else what Helm reports. */}}
{{- define "nats-k8s-oidc-callout.kubeVersion" -}}
{{- default .Capabilities.KubeVersion.Version .Values.kubeVersion -}}
{{- end }}

{{/*
Every environment variable the Deployment may set from the chart's values (and the old name of
one): extraEnv must not set them too (server-side apply refuses a duplicate name, and the
last of two would silently win with client-side apply).
*/}}
{{- define "nats-k8s-oidc-callout.chartEnvNames" -}}
NATS_URL NATS_SYSTEM_URL NATS_SYSTEM_CREDS_FILE NATS_ACCOUNT NATS_SIGNING_KEY_FILE NATS_OPERATOR_MODE NATS_SIGNING_KEY_SCOPED NATS_CALLOUT_SIGNING_KEY_FILE NATS_CALLOUT_ACCOUNT NATS_ACCOUNT_SIGNING_KEYS_DIR NATS_XKEY_SEED_FILE NATS_USER_CREDS_FILE NATS_CREDS_FILE NATS_NKEY_SEED_FILE NATS_CA_FILE NATS_CLIENT_CERT_FILE NATS_CLIENT_KEY_FILE NATS_TLS_REQUIRED NATS_TOKEN NATS_TOKEN_FILE JWT_ISSUER JWT_AUDIENCE JWKS_URL USER_JWT_MAX_LIFETIME JWT_LEEWAY JWKS_MIN_REFETCH_INTERVAL JWKS_REFETCH_WAIT WORKERS QUEUE_SIZE TOKEN_CACHE_SIZE SHUTDOWN_TIMEOUT WATCH_TIMEOUT_SECONDS INBOX_MODE POLICY_FILE SERVICEACCOUNT_EVENTS POD_BINDING NON_POD_TOKENS SELF_CHECK_INTERVAL SELF_CHECK_SERVICE_ACCOUNT SELF_CHECK_READINESS SELF_CHECK_CREDS_FILE SELF_CHECK_TOKEN_FILE LOG_LEVEL PORT HTTP_ADDRESS K8S_IN_CLUSTER
{{- end }}
