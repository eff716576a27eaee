//! `veil mesh-certs`: a cluster CA and one certificate per relay for the mesh's mutual TLS,
//! for a first cluster and for `veil dev`. Production clusters may issue them from their own PKI
//! (cert-manager, an internal CA): any CA works, with each relay's name as a DNS subjectAltName
//! and both TLS usages.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Args)]
pub struct MeshCertsArgs {
    /// Directory to write into: mesh-ca.crt, mesh-ca.key and NAME.crt, NAME.key per relay.
    #[arg(long)]
    dir: PathBuf,
    /// The relays' mesh names (their `mesh.name`), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    names: Vec<String>,
    /// Days the relay certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// The files of one relay.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA made for a cluster.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub cert_path: PathBuf,
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Ca {
    /// A new CA, written as `mesh-ca.crt` (and its key as `mesh-ca.key`) in `dir`.
    pub fn create(dir: &Path) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "veil mesh CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.clone().self_signed(&key)?;
        let cert_path = dir.join("mesh-ca.crt");
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        write_private(&dir.join("mesh-ca.key"), &key.serialize_pem())?;
        Ok(Ca {
            params,
            key,
            cert_path,
        })
    }

    /// A certificate for relay `name`, valid for `days`, written as NAME.crt and NAME.key.
    pub fn issue(&self, dir: &Path, name: &str, days: u32) -> Result<Issued> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("`{name}` is not a relay name");
        }
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = std::time::SystemTime::now();
        p.not_before = (now - std::time::Duration::from_secs(3600)).into();
        p.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
        let key = KeyPair::generate()?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = p.signed_by(&key, &issuer, &self.key)?;
        let issued = Issued {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem())
            .with_context(|| format!("writing {}", issued.cert.display()))?;
        write_private(&issued.key, &key.serialize_pem())?;
        Ok(issued)
    }
}

pub fn run(a: MeshCertsArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let ca = Ca::create(&a.dir)?;
    println!("CA          {}", ca.cert_path.display());
    for n in &a.names {
        let i = ca.issue(&a.dir, n, a.days)?;
        println!("{n:<11} {} {}", i.cert.display(), i.key.display());
    }
    println!("Keep mesh-ca.key offline: whoever holds it can join the mesh.");
    Ok(())
}
