//! A real HTTPS site for the shared-port tests: Debian's nginx, configured here, serving
//! `<dir>/www` (an index page and a 100 kB binary) with the given certificate on `direct`
//! (plain TLS, for comparison) and on `behind` (TLS after a PROXY v2 header: veil's upstream),
//! logging `$remote_addr $proxy_protocol_addr "$request" $status $body_bytes_sent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The index page every site serves.
pub const INDEX: &str = "<h1>the site</h1>\n";

/// Writes the site's files and nginx's config into `dir`; `servers` adds server blocks. The
/// config's path; run it with `nginx -c <path> -p <dir>`.
pub fn nginx_conf(
    dir: &Path,
    (cert, key): (&Path, &Path),
    direct: &str,
    behind: &str,
    servers: &str,
) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    // A page with bytes a proxy could mangle (binary, long).
    let page: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("page.bin"), &page).unwrap();
    std::fs::write(www.join("index.html"), INDEX).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{}}\nhttp {{\n\
           log_format veil '$remote_addr $proxy_protocol_addr \"$request\" $status $body_bytes_sent';\n\
           access_log {d}/access.log veil;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           ssl_certificate {cert}; ssl_certificate_key {key};\n\
           server {{ listen {direct} ssl http2; root {www}; }}\n\
           server {{ listen {behind} ssl http2 proxy_protocol; root {www}; }}\n\
           {servers}\n\
         }}\n",
        cert = cert.display(),
        key = key.display(),
        www = www.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A running nginx, killed when dropped.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Plain TLS, for comparison (veil's upstream is another server, behind PROXY v2).
    pub direct: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx with [`nginx_conf`] and waits until `behind` accepts connections.
    pub fn start(
        dir: &Path,
        cert_key: (&Path, &Path),
        direct: SocketAddr,
        behind: SocketAddr,
        servers: &str,
    ) -> Nginx {
        super::require("nginx");
        let path = nginx_conf(
            dir,
            cert_key,
            &direct.to_string(),
            &behind.to_string(),
            servers,
        );
        let child = Command::new("nginx")
            .args(["-c", &path.display().to_string()])
            .args(["-p", &dir.display().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(behind).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            dir: dir.to_path_buf(),
            direct,
        }
    }

    /// What nginx logged of its requests.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}
