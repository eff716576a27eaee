//! The mesh against those it must refuse, through the real binary on loopback: relays of another
//! CA, without a certificate or with an expired one; a prober that is no relay; a linked relay
//! that claims sources it did not announce, or another relay's ranges. Needs root (captures).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mesh::{MeshNode, NodeSpec, certs, rogue, start_node};
use common::wire::Capture;
use common::{RawTurn, TempDir};
use veil_relay::proto::mesh::Endpoint;
use veil_relay::proto::mesh::announce::{Announce, RelayRange};

fn dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("veil-mesh-hostile-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Issues, from the CA in `dir` (made by `veil mesh-certs`), a certificate for `name` that
/// expired yesterday, as `NAME-expired.crt/.key`.
fn expired_cert(dir: &Path, name: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join("mesh-ca.key")).unwrap()).unwrap();
    // The same subject and key as the CA's certificate: what it signs verifies against it.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "veil mesh CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = ca.self_signed(&ca_key).unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now();
    p.not_before = (now - Duration::from_secs(10 * 86_400)).into();
    p.not_after = (now - Duration::from_secs(86_400)).into();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer, &ca_key).unwrap();
    std::fs::write(dir.join(format!("{name}-expired.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-expired.key")), key.serialize_pem()).unwrap();
}

fn refusals(node: &MeshNode, reason: &str) -> f64 {
    node.metric(&format!(
        "veil_relay_mesh_refusals_total{{reason=\"{reason}\"}}"
    ))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Relay B, listing relay-a, relay-0 and relay-c (all dialling it: their names sort first, or
/// it waits for them).
fn node_b(cluster: &Path, a_port: u16) -> MeshNode {
    let mut b = NodeSpec::new("relay-b", "127.0.0.42", "11550-11599", cluster);
    b.peers = vec![
        ("relay-a", format!("127.0.0.1:{a_port}")),
        ("relay-0", "127.0.0.1:1".into()),
        ("relay-c", "127.0.0.1:2".into()),
    ];
    start_node(&b)
}

#[test]
fn relays_of_another_ca_without_a_certificate_or_expired_never_link() {
    let cluster = dir("cluster");
    certs(&cluster.0, &["relay-a", "relay-b", "relay-0"]);
    let other = dir("other");
    certs(&other.0, &["relay-a"]);
    expired_cert(&cluster.0, "relay-0");

    // relay-a holds a certificate of another CA (and trusts that CA): it dials B and fails.
    let mut a = NodeSpec::new("relay-a", "127.0.0.41", "11500-11549", &other.0);
    let b_port = common::free_udp_port();
    a.peers = vec![("relay-b", format!("127.0.0.1:{b_port}"))];
    let na = start_node(&a);
    let mut bs = NodeSpec::new("relay-b", "127.0.0.42", "11550-11599", &cluster.0);
    bs.mesh_port = b_port;
    bs.peers = vec![
        ("relay-a", format!("127.0.0.1:{}", na.mesh_port)),
        ("relay-0", "127.0.0.1:1".into()),
    ];
    let nb = start_node(&bs);
    let v = nb.wait_for(
        "veil_relay_mesh_refusals_total{reason=\"handshake\"}",
        8,
        |v| v >= 1.0,
    );
    assert!(v >= 1.0, "B refused A's handshake: {v}");
    assert!(!na.link_up("relay-b") && !nb.link_up("relay-a"));

    // No certificate, and an expired one from the right CA: refused at the handshake.
    let b_link: SocketAddr = format!("127.0.0.1:{b_port}").parse().unwrap();
    let rt = rt();
    let before = refusals(&nb, "handshake");
    let ca = cluster.0.join("mesh-ca.crt");
    for identity in [
        None,
        Some((
            cluster.0.join("relay-0-expired.crt"),
            cluster.0.join("relay-0-expired.key"),
        )),
    ] {
        let r = rt.block_on(async {
            let id = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            let (_ep, conn) = rogue::connect("127.0.0.1:0", b_link, "relay-b", &ca, id).await?;
            // A rejected client may finish its side of the handshake; the relay then closes.
            rogue::announce(&conn, &Announce::default()).await
        });
        assert!(r.is_err(), "refused: {r:?}");
    }
    let after = nb.wait_for(
        "veil_relay_mesh_refusals_total{reason=\"handshake\"}",
        5,
        |v| v >= before + 2.0,
    );
    assert!(after >= before + 2.0, "{before} -> {after}");
    assert!(!nb.link_up("relay-0"));

    // A relay whose own certificate expired does not start, and says why without a secret.
    let mut x = NodeSpec::new("relay-0", "127.0.0.43", "11600-11649", &cluster.0);
    x.cert_stem = "relay-0-expired";
    x.peers = vec![("relay-b", format!("127.0.0.1:{b_port}"))];
    let (cfg, _dir, _, _) = common::mesh::write_config(&x);
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["relay", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh.tls.cert") && err.contains("relay-0"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[test]
fn a_prober_that_is_no_relay_gets_no_packet_back() {
    let cluster = dir("probe");
    certs(&cluster.0, &["relay-a", "relay-b"]);
    let nb = node_b(&cluster.0, 1);
    let cap = Capture::start();
    let link: SocketAddr = format!("127.0.0.1:{}", nb.mesh_port).parse().unwrap();
    let rt = rt();
    // A full QUIC client, with a valid certificate even, from an address no peer resolves to.
    let r = rt.block_on(rogue::connect(
        "127.0.0.9:0",
        link,
        "relay-b",
        &cluster.0.join("mesh-ca.crt"),
        Some((
            &cluster.0.join("relay-a.crt"),
            &cluster.0.join("relay-a.key"),
        )),
    ));
    assert!(r.is_err());
    std::thread::sleep(Duration::from_millis(200));
    let packets = cap.stop();
    let sent = packets
        .iter()
        .filter(|p| p.src.ip().to_string() == "127.0.0.9" && p.dst.port() == nb.mesh_port)
        .count();
    let answered = packets
        .iter()
        .filter(|p| p.src.port() == nb.mesh_port && p.dst.ip().to_string() == "127.0.0.9")
        .count();
    assert!(sent >= 1, "the prober sent");
    assert_eq!(answered, 0, "nothing came back");
    assert!(refusals(&nb, "unknown_source") >= 1.0);
}

#[test]
fn a_linked_relay_cannot_speak_for_another() {
    let cluster = dir("speak");
    certs(&cluster.0, &["relay-a", "relay-b", "relay-0", "relay-c"]);
    let nb = node_b(&cluster.0, 1);
    let link: SocketAddr = format!("127.0.0.1:{}", nb.mesh_port).parse().unwrap();
    let ca = cluster.0.join("mesh-ca.crt");
    // A client on B, permitted to the rogue's relayed IP and to relay-a's.
    let zone = "x;z=relay-b-zone";
    let mut client = RawTurn::rest("127.0.0.1:0", nb.relay.addr, zone);
    let relayed = client.allocate();
    assert_eq!(client.permit("127.0.0.31:1".parse().unwrap()), None);
    assert_eq!(client.permit("127.0.0.41:1".parse().unwrap()), None);

    let rt = rt();
    rt.block_on(async {
        let (_ep, conn) = rogue::connect(
            "127.0.0.1:0",
            link,
            "relay-b",
            &ca,
            Some((
                &cluster.0.join("relay-0.crt"),
                &cluster.0.join("relay-0.key"),
            )),
        )
        .await
        .expect("a relay of the cluster links");
        let ours = Announce {
            zone: "rogue".into(),
            ranges: vec![RelayRange {
                ip: "127.0.0.31".parse().unwrap(),
                ports: (11600, 11649),
            }],
        };
        let theirs = rogue::announce(&conn, &ours).await.expect("B announces");
        let dst = theirs
            .endpoint(relayed)
            .expect("B's relayed address is announced");
        let ep = |range, port| Endpoint { range, port };
        rogue::send(
            &conn,
            &[
                // Its own announced source: delivered.
                (ep(0, 11600), dst, b"mine".to_vec()),
                // A range index it never announced (relay-a's, say): dropped.
                (ep(1, 11300), dst, b"not mine".to_vec()),
                // Its IP, a port outside its announced range: dropped.
                (ep(0, 11700), dst, b"not mine either".to_vec()),
            ],
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        conn.close(0u32.into(), b"");
    });
    let (from, data) = client
        .data_indication(Duration::from_secs(2))
        .expect("the announced source is delivered");
    assert_eq!(from, "127.0.0.31:11600".parse::<SocketAddr>().unwrap());
    assert_eq!(data, b"mine");
    assert_eq!(client.data_indication(Duration::from_millis(500)), None);
    let bad = nb.wait_for(
        "veil_relay_mesh_link_drops_total{link=\"relay-0\",reason=\"bad_source\"}",
        5,
        |v| v >= 2.0,
    );
    assert_eq!(bad, 2.0);

    // relay-c announces B's own range: the link is refused.
    let r = rt.block_on(async {
        let (_ep, conn) = rogue::connect(
            "127.0.0.1:0",
            link,
            "relay-b",
            &ca,
            Some((
                &cluster.0.join("relay-c.crt"),
                &cluster.0.join("relay-c.key"),
            )),
        )
        .await?;
        let ours = Announce {
            zone: "rogue".into(),
            ranges: vec![RelayRange {
                ip: "127.0.0.42".parse().unwrap(),
                ports: (11590, 11600),
            }],
        };
        rogue::announce(&conn, &ours).await?;
        // B closes the connection once it has read the claim.
        tokio::time::timeout(Duration::from_secs(3), conn.closed())
            .await
            .map_err(|_| "still open".to_string())?;
        Ok::<_, String>(())
    });
    assert!(r.is_ok(), "{r:?}");
    assert!(refusals(&nb, "overlap") >= 1.0);
    assert!(!nb.link_up("relay-c"));
}
