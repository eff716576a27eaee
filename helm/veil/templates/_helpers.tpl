{{/* Names, labels and shared pieces. */}}

{{- define "veil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "veil.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "veil.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "veil.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "veil.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "veil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "veil.selector" -}}
app.kubernetes.io/name: {{ include "veil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "veil.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "veil.secretName" -}}
{{- default (printf "%s-secrets" (include "veil.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* A relay pool's resource name: <fullname>-relay-<pool>. */}}
{{- define "veil.relayName" -}}
{{- printf "%s-relay-%s" (include "veil.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The lowest port a relay listens on (NET_BIND_SERVICE below 1024). */}}
{{- define "veil.relayLowPort" -}}
{{- $r := .Values.relay -}}
{{- $low := int $r.turnPort -}}
{{- if and $r.tls.enabled (lt (int $r.tls.port) $low) }}{{ $low = int $r.tls.port }}{{ end -}}
{{- if and $r.tls.enabled $r.tls.port443 (lt 443 $low) }}{{ $low = 443 }}{{ end -}}
{{- $low -}}
{{- end -}}

{{/* Container security: non-root, read-only root, no capability unless a port needs one.
With the XDP fast path (fastPath): the capabilities loading and attaching it takes (BPF,
NET_ADMIN, PERFMON), which only a process of uid 0 holds in a container (Kubernetes grants no
ambient capabilities and no_new_privs voids file capabilities): uid 0 with every other
capability dropped. */}}
{{- define "veil.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
{{- if .fastPath }}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 65532
{{- else }}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{- end }}
capabilities:
  drop: [ALL]
  {{- if or .bindLow .fastPath }}
  add:
    {{- if .bindLow }} [NET_BIND_SERVICE{{ if .fastPath }}, BPF, NET_ADMIN, PERFMON{{ end }}]
    {{- else }} [BPF, NET_ADMIN, PERFMON]
    {{- end }}
  {{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The relay config file of a pool, exactly in the format `veil relay --config` reads. The
     relay IP comes at run time from --relay-ip (the node's or pod's IP). */}}
{{- define "veil.relayConfig" -}}
{{- $r := .root.Values.relay -}}
{{- $shaping := dict "enabled" $r.shaping.enabled "padding" $r.shaping.padding "timing" $r.shaping.timing "cover" $r.shaping.cover "profiles" $r.shaping.profiles "queue_limit" $r.shaping.queueLimit -}}
{{- $cfg := dict
  "listen" (list (printf "0.0.0.0:%d" (int $r.turnPort)))
  "port_range" (printf "%d-%d" (int $r.portRange.start) (int $r.portRange.end))
  "realm" $r.realm
  "zone" .pool.zone
  "auth" (dict "secret_files" (list "/etc/veil/secrets/turn-secrets"))
  "quotas" (dict "per_user" (int $r.quotas.perUser) "total" (int $r.quotas.total))
  "peers" (dict "allow" $r.peers.allow "deny" $r.peers.deny)
  "shaping" $shaping
  "workers" (int $r.workers)
  "admin" (printf "0.0.0.0:%d" (int $r.adminPort))
  "log" (dict "format" $r.log.format "personal_data" $r.log.personalData)
  "lifecycle" (dict "drain_timeout" (int $r.drainTimeout) "watch_interval" (int $r.watchInterval))
-}}
{{- /* relay.config: every other setting, under what the chart sets (the chart's win). */ -}}
{{- $cfg = mergeOverwrite (deepCopy ($r.config | default dict)) $cfg -}}
{{- if .pool.externalIP -}}
{{- $_ := set $cfg "external_ips" (list .pool.externalIP) -}}
{{- end -}}
{{- if $r.tcp.enabled -}}
{{- $_ := set $cfg "listen_tcp" (list (printf "0.0.0.0:%d" (int $r.turnPort))) -}}
{{- end -}}
{{- if $r.tls.enabled -}}
{{- $tls := list (printf "0.0.0.0:%d" (int $r.tls.port)) -}}
{{- if $r.tls.port443 }}{{ $tls = append $tls "0.0.0.0:443" }}{{ end -}}
{{- $_ := set $cfg "listen_tls" $tls -}}
{{- $t := dict "cert" "/etc/veil/tls/tls.crt" "key" "/etc/veil/tls/tls.key" "allow_tls12" $r.tls.allowTls12 -}}
{{- if $r.tls.name }}{{ $_ := set $t "name" $r.tls.name }}{{ end -}}
{{- with $r.tls.site }}{{ if .enabled -}}
{{- if not .upstream }}{{ fail "relay.tls.site.upstream: the site's own server (host:port) is required when relay.tls.site.enabled" }}{{ end -}}
{{- $_ := set $t "site" (dict "upstream" .upstream "tls" .tls "proxy_protocol" .proxyProtocol "alpn" .alpn "passthrough" .passthrough "mode" .mode "tls13_tickets" (int .tls13Tickets)) -}}
{{- end }}{{ end -}}
{{- $_ := set $cfg "tls" $t -}}
{{- end -}}
{{- if $r.mesh.enabled -}}
{{- $peers := list -}}
{{- $self := .pool.name -}}
{{- range $r.pools -}}
{{- if ne .name $self -}}
{{- $link := printf "%s-mesh.%s.svc.cluster.local:%d" (include "veil.relayName" (dict "root" $.root "pool" .)) $.root.Release.Namespace (int $r.mesh.port) -}}
{{- $peers = append $peers (dict "name" .name "link" $link) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "mesh" (dict
  "listen" (printf "0.0.0.0:%d" (int $r.mesh.port))
  "name" .pool.name
  "tls" (dict "cert" "/etc/veil/mesh/tls.crt" "key" "/etc/veil/mesh/tls.key" "ca" "/etc/veil/mesh/ca.crt")
  "fallback" $r.mesh.fallback
  "peers" $peers) -}}
{{- end -}}
{{- with (include "veil.auditConfig" .root) }}
{{- $_ := set $cfg "audit" (fromYaml .) -}}
{{- end -}}
{{- if ne $r.fastPath.mode "off" -}}
{{- if not $r.fastPath.interfaces }}{{ fail "relay.fastPath.interfaces: the interfaces clients and peers reach the relays on are required when relay.fastPath.mode is not off" }}{{ end -}}
{{- $_ := set $cfg "fast_path" (dict "mode" $r.fastPath.mode "interfaces" $r.fastPath.interfaces) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The Secret holding a pool's mesh certificate. */}}
{{- define "veil.meshSecret" -}}
{{- .pool.meshSecret | default (printf "%s-mesh" (include "veil.relayName" .)) -}}
{{- end -}}

{{/* The allocator config, exactly in the format `veil allocator --config` reads. */}}
{{- define "veil.allocatorConfig" -}}
{{- $a := .Values.allocator -}}
{{- $zones := dict -}}
{{- $relays := list -}}
{{- range .Values.relay.pools -}}
{{- $z := get $zones .zone | default (dict "relays" list) -}}
{{- $_ := set $z "relays" (append $z.relays .name) -}}
{{- $_ := set $zones .zone $z -}}
{{- $entry := dict "name" .name "admin" (printf "%s.%s.svc.cluster.local:%d" (include "veil.relayName" (dict "root" $ "pool" .)) $.Release.Namespace (int $.Values.relay.adminPort)) "dns" true -}}
{{- if hasKey . "latitude" }}{{ $_ := set $entry "latitude" .latitude }}{{ end -}}
{{- if hasKey . "longitude" }}{{ $_ := set $entry "longitude" .longitude }}{{ end -}}
{{- $relays = append $relays $entry -}}
{{- end -}}
{{- $cfg := dict
  "listen" (printf "0.0.0.0:%d" (int $a.port))
  "metrics_listen" (printf "0.0.0.0:%d" (int $a.metricsPort))
  "api_keys" $a.apiKeys
  "secret_files" (list "/etc/veil/secrets/turn-secrets")
  "ttl" (int $a.ttl)
  "policy" (dict "zones" $zones "groups" ($a.policy.groups | default dict) "rules" $a.policy.rules "default" $a.policy.default "unknown" $a.policy.unknown)
  "distance" (dict "ms_per_km" $a.distance.msPerKm "unknown_ms" $a.distance.unknownMs)
  "relays" $relays
  "trusted_proxies" $a.trustedProxies
  "audit_retention_hours" (int ($a.auditRetentionHours | default 168))
-}}
{{- if $a.geoDb.enabled -}}
{{- $_ := set $cfg "geo_db" (printf "/var/lib/veil/geo/%s" $a.geoDb.file) -}}
{{- end -}}
{{- with (include "veil.auditConfig" .) }}
{{- $_ := set $cfg "audit" (fromYaml .) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The `audit` section of both configs when audit.enabled (empty otherwise): each pod's own
directory of the audit volume (audit.volume, mounted with subPathExpr), the key from
audit.keySecret. */}}
{{- define "veil.auditConfig" -}}
{{- with .Values.audit }}{{ if .enabled -}}
{{- if not .keySecret }}{{ fail "audit.keySecret: a Secret holding audit.key (veil audit keygen) is required when audit.enabled" }}{{ end -}}
{{- toYaml (dict "dir" "/var/lib/veil/audit" "signing_key_file" "/etc/veil/audit-key/audit.key" "retention_days" (int .retentionDays)) -}}
{{- end }}{{ end -}}
{{- end -}}

{{/* The audit trail's mounts, env and volumes for a pod (when audit.enabled): `name` is where
its directory's name comes from (a fieldRef path). */}}
{{- define "veil.auditEnv" -}}
{{- if .root.Values.audit.enabled }}
- name: AUDIT_NAME
  valueFrom:
    fieldRef:
      fieldPath: {{ .name }}
{{- end }}
{{- end -}}

{{- define "veil.auditMounts" -}}
{{- if .Values.audit.enabled }}
# Each pod writes its own directory of the volume (the trail takes a flock per append).
- {name: audit, mountPath: /var/lib/veil/audit, subPathExpr: $(AUDIT_NAME)}
- {name: audit-key, mountPath: /etc/veil/audit-key, readOnly: true}
{{- end }}
{{- end -}}

{{- define "veil.auditVolumes" -}}
{{- with .Values.audit }}{{ if .enabled }}
- name: audit
  {{- toYaml (.volume | default (dict "emptyDir" dict)) | nindent 2 }}
- name: audit-key
  secret:
    secretName: {{ .keySecret }}
    items:
      - {key: audit.key, path: audit.key}
{{- end }}{{ end }}
{{- end -}}
