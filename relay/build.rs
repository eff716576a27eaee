//! Builds the XDP fast path (`ebpf/veil_xdp.c`, issue 24) with clang when clang is found
//! (`VEIL_CLANG`, else `clang-19`, else `clang`), and says so with the `veil_xdp` cfg. Without
//! clang (or BPF headers) the relay builds all the same, without a fast path, and a warning
//! says why.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(veil_xdp)");
    println!("cargo::rerun-if-changed=ebpf/veil_xdp.c");
    println!("cargo::rerun-if-env-changed=VEIL_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("veil_xdp.o");
    let candidates = match std::env::var("VEIL_CLANG") {
        Ok(c) => vec![c],
        Err(_) => vec!["clang-19".to_string(), "clang".to_string()],
    };
    let mut why = String::from("no clang found (VEIL_CLANG, clang-19, clang)");
    for clang in candidates {
        // The multiarch include directory holds asm/ for the kernel headers (Debian).
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let multiarch = format!("/usr/include/{arch}-linux-gnu");
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-c", "ebpf/veil_xdp.c", "-o"])
            .arg(&object)
            .output();
        match result {
            Ok(o) if o.status.success() => {
                println!("cargo::rustc-cfg=veil_xdp");
                return;
            }
            Ok(o) => {
                why = format!(
                    "{clang} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                );
            }
            Err(_) => {}
        }
    }
    println!("cargo::warning=the XDP fast path is not built: {why} (Debian: clang-19 libbpf-dev)");
}
