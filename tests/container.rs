//! Issue 26: the container image is built and the chart's pods run. The image is the
//! Dockerfile's final stage, built with the two arguments CI gives it (no registry here): a base
//! made with mmdebstrap from Debian packages (glibc, libgcc, CA certificates, a uid-65532 user)
//! and the binary this build made, stripped, with its debug info beside it. Then:
//!
//! 1. `veil --help`, and a relay that coturn's uclient relays through with zero loss, under the
//!    chart's restrictions (read-only root, uid 65532, every capability dropped);
//! 2. `podman kube play` of the chart rendered with `helm/veil/ci/podman-values.yaml`, adapted by
//!    [`post_render`] where podman 4.3 cannot do what Kubernetes does: the allocator and a relay
//!    pool start from the image under the chart's security context, the allocator finds the
//!    relay and places a client, uclient relays with the credential it returned over UDP and
//!    TCP, and the pods are torn down.
//!
//! What this proves and what it does not: README (The container image). Needs root, podman
//! (with runc and catatonit), mmdebstrap, binutils' objcopy, helm and coturn's tools, and the
//! Debian mirror for mmdebstrap: `.ci/run` installs them, and the test fails loudly without.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const IMAGE: &str = "localhost/veil:ci";
const BASE: &str = "localhost/veil-base:ci";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/veil");
/// Ports of `ci/podman-values.yaml`.
const TURN: u16 = 13678;
const RELAY_ADMIN: u16 = 13679;
const API: u16 = 13680;
const BACKEND_KEY: &str = "podman-ci-backend-key-0123456789";

fn ok(out: Output, what: &str) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}:\n{text}");
    text
}

/// Podman, with this machine's settings: runc (crun refuses the hybrid cgroup layout here) and
/// limits a container may have (no more open files than this process's hard limit).
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let nofile = lim.rlim_max.min(65_536);
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\n"
            ),
        )
        .unwrap();
        Podman { conf }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    fn run(&self, args: &[&str], what: &str) -> String {
        ok(self.cmd().args(args).output().expect("podman runs"), what)
    }
}

/// What the test leaves behind goes, whatever happens.
struct Cleanup<'a> {
    podman: &'a Podman,
    play: Option<PathBuf>,
    containers: Vec<&'static str>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.podman.cmd().args(["rm", "-f", "-t", "1", c]).output();
        }
        if let Some(p) = &self.play {
            let _ = self.podman.cmd().args(["kube", "down"]).arg(p).output();
        }
        for i in [IMAGE, BASE] {
            let _ = self.podman.cmd().args(["rmi", "-f", i]).output();
        }
        let _ = self.podman.cmd().args(["image", "prune", "-f"]).output();
    }
}

/// The base: a root filesystem of Debian packages, unpacked (no maintainer script runs, so no
/// shell is needed), with the CA bundle the `ca-certificates` script would have made and the
/// uid-65532 user the chart runs as.
fn base(dir: &Path) -> PathBuf {
    let tar = dir.join("base.tar");
    let hook = "mkdir -p \"$1/etc/ssl/certs\" \"$1/tmp\" \"$1/home/nonroot\"; \
                cat \"$1\"/usr/share/ca-certificates/mozilla/*.crt > \"$1/etc/ssl/certs/ca-certificates.crt\"; \
                printf 'root:x:0:0:root:/root:/sbin/nologin\\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\\n' > \"$1/etc/passwd\"; \
                printf 'root:x:0:\\nnonroot:x:65532:\\n' > \"$1/etc/group\"; \
                chown 65532:65532 \"$1/home/nonroot\"; chmod 1777 \"$1/tmp\"";
    ok(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=extract", "--mode=root"])
            .arg("--include=libc6,libgcc-s1,ca-certificates")
            .args([
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
            ])
            .arg(format!("--customize-hook={hook}"))
            .arg("bookworm")
            .arg(&tar)
            .output()
            .expect("mmdebstrap runs"),
        "mmdebstrap",
    );
    tar
}

/// The build context: the binary this build made, stripped, and its debug info (GNU debuglink),
/// where the Dockerfile's `prebuilt` stage takes them.
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("context");
    let image = ctx.join("image");
    std::fs::create_dir_all(&image).unwrap();
    let bin = env!("CARGO_BIN_EXE_veil");
    let debug = image.join("veil.debug");
    ok(
        Command::new("objcopy")
            .args(["--only-keep-debug", bin])
            .arg(&debug)
            .output()
            .expect("objcopy (binutils) runs"),
        "objcopy --only-keep-debug",
    );
    ok(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(bin)
            .arg(image.join("veil"))
            .output()
            .unwrap(),
        "objcopy --strip-debug",
    );
    ctx
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// coturn's uclient through the relay on `port` with `user` and `password` (`-t`: TCP), to
/// turnutils_peer on 127.0.0.2; its report.
fn uclient(port: u16, user: &str, password: &str, extra: &[&str]) -> String {
    let peer_port = common::free_udp_port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.2", "-p", &peer_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer starts");
    std::thread::sleep(Duration::from_millis(300));
    let run = || {
        let out = Command::new("timeout")
            .args(["60", "turnutils_uclient", "-u", user, "-w", password])
            .args(extra)
            .args(["-m", "2", "-n", "20", "-e", "127.0.0.2"])
            .args([
                "-r",
                &peer_port.to_string(),
                "-p",
                &port.to_string(),
                "127.0.0.1",
            ])
            .output()
            .expect("turnutils_uclient runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out, text)
    };
    let (mut out, mut text) = run();
    if common::uclient_collided(&out, &text) {
        (out, text) = run();
    }
    let _ = (&out, peer.kill(), peer.wait());
    text
}

/// The chart's manifests as `podman kube play` (4.3) can start them. Each change is one thing
/// podman does not do that Kubernetes does, and only that; nothing here changes the image, the
/// configs' content, the security context or the volumes' wiring:
fn post_render(manifests: &str) -> String {
    let mut out = Vec::new();
    for mut d in serde_saphyr::from_multiple::<Value>(manifests).unwrap() {
        if d.is_null() {
            continue;
        }
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        if kind == "Secret" {
            // podman writes a Secret volume's files base64-encoded and ignores `stringData` (a
            // kubelet writes them decoded): the Secrets become ConfigMaps, whose files podman
            // writes as they are.
            d["kind"] = "ConfigMap".into();
            let o = d.as_object_mut().unwrap();
            o.remove("type");
            let data = o.remove("stringData").unwrap_or_default();
            o.insert("data".into(), data);
        }
        if let Some(data) = d["data"].as_object_mut() {
            for v in data.values_mut() {
                let text = v.as_str().unwrap_or_default();
                // No cluster DNS: the allocator reaches the relay pool's admin port on loopback
                // instead of its headless Service, and the relay advertises loopback instead of
                // its LoadBalancer's address.
                let text = text
                    .replace(
                        &format!("ci-veil-relay-eu.default.svc.cluster.local:{RELAY_ADMIN}"),
                        &format!("127.0.0.1:{RELAY_ADMIN}"),
                    )
                    .replace("dns: true", "dns: false")
                    .replace("192.0.2.10", "127.0.0.1");
                *v = text.into();
            }
        }
        if kind == "Deployment" {
            let spec = &mut d["spec"]["template"]["spec"];
            // No cluster network: the pods meet on the host's loopback (their ports differ).
            spec["hostNetwork"] = true.into();
            for v in spec["volumes"].as_array_mut().unwrap() {
                let o = v.as_object_mut().unwrap();
                if let Some(Value::Object(mut s)) = o.remove("secret") {
                    let name = s.remove("secretName").unwrap();
                    s.insert("name".into(), name);
                    o.insert("configMap".into(), Value::Object(s));
                }
            }
            for c in spec["containers"].as_array_mut().unwrap() {
                let c = c.as_object_mut().unwrap();
                // Ports become port mappings, which host networking refuses; probes do not run.
                for k in ["ports", "readinessProbe", "livenessProbe"] {
                    c.remove(k);
                }
                // Neither `$(VAR)` in arguments nor `fieldRef: status.podIP` exists: the relay
                // is told its address.
                if let Some(args) = c.get_mut("args").and_then(Value::as_array_mut) {
                    for a in args {
                        *a = a
                            .as_str()
                            .unwrap()
                            .replace("$(RELAY_IP)", "127.0.0.1")
                            .into();
                    }
                }
                if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                    env.retain(|e| e["valueFrom"]["fieldRef"].is_null());
                }
            }
        }
        out.push(d.to_string());
    }
    out.join("\n---\n")
}

#[test]
fn the_image_runs_restricted_and_the_charts_pods_start_and_relay() {
    for tool in [
        "podman",
        "mmdebstrap",
        "runc",
        "catatonit",
        "objcopy",
        "helm",
        "turnutils_uclient",
        "turnutils_peer",
    ] {
        common::require(tool);
    }
    let dir = common::TempDir(
        std::env::temp_dir().join(format!("veil-container-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let podman = Podman::new(&dir.0);
    let mut cleanup = Cleanup {
        podman: &podman,
        play: None,
        containers: vec!["veil-ci-relay"],
    };

    let t = Instant::now();
    let tar = base(&dir.0);
    podman.run(
        &["import", "-q", tar.to_str().unwrap(), BASE],
        "podman import",
    );
    let t_base = t.elapsed();
    let t = Instant::now();
    let ctx = context(&dir.0);
    podman.run(
        &[
            "build",
            "-q",
            "--pull=never",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"),
            "--build-arg",
            &format!("BASE={BASE}"),
            "--build-arg",
            "BINARY=prebuilt",
            "-t",
            IMAGE,
            ctx.to_str().unwrap(),
        ],
        "podman build",
    );
    let t_build = t.elapsed();
    let size = podman.run(
        &["image", "inspect", IMAGE, "--format", "{{.Size}}"],
        "inspect",
    );
    let base_size = podman.run(
        &["image", "inspect", BASE, "--format", "{{.Size}}"],
        "inspect",
    );
    eprintln!(
        "image {IMAGE}: {} MB (base {} MB); base made in {t_base:?}, image built in {t_build:?}",
        size.trim().parse::<f64>().unwrap() / 1e6,
        base_size.trim().parse::<f64>().unwrap() / 1e6
    );
    // What runs is this build's binary, without its debug info (which sits beside it).
    let stripped = std::fs::metadata(ctx.join("image/veil")).unwrap().len();
    assert!(stripped < std::fs::metadata(env!("CARGO_BIN_EXE_veil")).unwrap().len() / 2);

    // 1. The smoke test, as the chart restricts the pods.
    let help = podman.run(&["run", "--rm", IMAGE, "--help"], "veil --help");
    assert!(help.contains("relay"), "{help}");
    let secrets = dir.0.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("turn-secrets"),
        format!("{}\n", common::SECRET),
    )
    .unwrap();
    let turn = common::free_udp_port();
    let admin = common::free_tcp_addr();
    podman.run(
        &[
            "run",
            "-d",
            "--name",
            "veil-ci-relay",
            "--network",
            "host",
            "--read-only",
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            &format!("{}:/etc/veil/secrets:ro", secrets.display()),
            IMAGE,
            "relay",
            "--listen",
            &format!("127.0.0.1:{turn}"),
            "--auth-secret-file",
            "/etc/veil/secrets/turn-secrets",
            "--port-range",
            "14800-14899",
            "--allow-peer",
            "127.0.0.0/8",
            "--admin",
            &admin.to_string(),
        ],
        "podman run relay",
    );
    wait_until(
        "the relay in its container ready",
        Duration::from_secs(20),
        || {
            std::net::TcpStream::connect(admin).is_ok()
                && common::http_get(admin, "/readyz").0 == 200
        },
    );
    let uid = podman.run(
        &[
            "inspect",
            "veil-ci-relay",
            "--format",
            "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        ],
        "inspect",
    );
    assert_eq!(uid.trim(), "65532:65532 true");
    let (user, password) = common::credential("container");
    let text = uclient(turn, &user, &password, &[]);
    assert!(text.contains("Total lost packets 0 "), "{text}");
    podman.run(&["rm", "-f", "-t", "1", "veil-ci-relay"], "podman rm");

    // 2. The chart's pods.
    let t = Instant::now();
    let rendered = ok(
        Command::new("helm")
            .args(["template", "ci", CHART, "-f"])
            .arg(Path::new(CHART).join("ci/podman-values.yaml"))
            .output()
            .expect("helm runs"),
        "helm template",
    );
    let play = dir.0.join("play.yaml");
    std::fs::write(&play, post_render(&rendered)).unwrap();
    cleanup.play = Some(play.clone());
    podman.run(
        &["kube", "play", "--replace", play.to_str().unwrap()],
        "podman kube play",
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{API}").parse().unwrap();
    let mut answer = Value::Null;
    wait_until(
        "the allocator placing a client on the relay pool",
        Duration::from_secs(30),
        || {
            if std::net::TcpStream::connect(api).is_err() {
                return false;
            }
            let (status, body) = common::api::http(
                api,
                "POST",
                "/v1/ice-servers",
                Some(BACKEND_KEY),
                r#"{"client_ip":"127.0.1.5"}"#,
            );
            if status == 200 {
                answer = common::api::json(&body);
            }
            status == 200
        },
    );
    let t_pods = t.elapsed();
    // The pods run as the chart says.
    let users = podman.run(
        &[
            "ps",
            "--filter",
            "label=app.kubernetes.io/name=veil",
            "--format",
            "{{.Names}}",
        ],
        "podman ps",
    );
    let names: Vec<&str> = users.lines().filter(|n| !n.ends_with("-infra")).collect();
    assert_eq!(names.len(), 2, "the relay and the allocator: {users}");
    for name in names {
        let c = podman.run(
            &[
                "inspect",
                name,
                "--format",
                "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}",
            ],
            "inspect",
        );
        assert!(c.starts_with("65532"), "{name}: {c}");
        assert!(c.contains(" true "), "{name}: read-only root: {c}");
        assert!(
            c.contains("CAP_NET_RAW"),
            "{name}: capabilities dropped: {c}"
        );
    }
    let server = &answer["iceServers"][0];
    let urls = server["urls"].as_array().unwrap();
    assert!(
        urls.iter()
            .any(|u| u == &format!("turn:127.0.0.1:{TURN}?transport=udp")),
        "{answer}"
    );
    assert_eq!(answer["zone"], "eu");
    let (user, password) = (
        server["username"].as_str().unwrap(),
        server["credential"].as_str().unwrap(),
    );
    for extra in [&[][..], &["-t"][..]] {
        let text = uclient(TURN, user, password, extra);
        assert!(
            text.contains("Total lost packets 0 "),
            "uclient {extra:?}: {text}"
        );
    }
    let t = Instant::now();
    podman.run(
        &["kube", "down", play.to_str().unwrap()],
        "podman kube down",
    );
    cleanup.play = None;
    let left = podman.run(
        &[
            "ps",
            "-a",
            "--filter",
            "label=app.kubernetes.io/name=veil",
            "--format",
            "{{.Names}}",
        ],
        "podman ps",
    );
    assert!(left.trim().is_empty(), "left running: {left}");
    eprintln!(
        "pods up and placing in {t_pods:?}, torn down in {:?}",
        t.elapsed()
    );
}
