//! The C example, compiled with `cc` against include/krak.h and libkrak.so, run against real
//! memory servers on loopback: it checks every page it wrote (most read back remotely).

use std::path::Path;
use std::process::Command;

use krak_memserver::{spawn, ServerConfig};

#[test]
fn c_example_writes_and_reads_back_every_page() {
    // The rack secret, in a private directory, as an operator would keep it.
    let dir = std::env::temp_dir().join(format!("krak-c-example-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let secret_file = dir.join("secret");
    let secret = krak_auth::write_new_secret_file(&secret_file).unwrap();
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 512 << 20);
            cfg.slab_size_bytes = 16 << 20;
            cfg.secret = Some(secret);
            spawn(cfg).expect("memory server")
        })
        .collect();
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The test binary is target/<profile>/deps/c_example-HASH; cargo built libkrak.so beside it.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    assert!(deps.join("libkrak.so").is_file(), "libkrak.so not built in {}", deps.display());
    let exe = std::env::temp_dir().join(format!("krak-c-example-{}", std::process::id()));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/c/example.c"))
        .arg("-L")
        .arg(&deps)
        .arg("-lkrak")
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc");
    assert!(cc.success(), "compiling example.c");
    let out = Command::new(&exe).arg(list.join(",")).arg(&secret_file).env("LD_LIBRARY_PATH", &deps).output().unwrap();
    // The wrong secret: refused with the reason, never a region.
    let other = dir.join("other");
    krak_auth::write_new_secret_file(&other).unwrap();
    let refused = Command::new(&exe).arg(list.join(",")).arg(&other).env("LD_LIBRARY_PATH", &deps).output().unwrap();
    let _ = std::fs::remove_file(&exe);
    let _ = std::fs::remove_dir_all(&dir);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(why.contains("krak_region_create") && why.contains("secret"), "{why}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verified 33554432 words"), "{stdout}");
    assert!(stdout.contains("bad address refused: bad server address"), "{stdout}");
}
