//! The controller's API over TLS (`--tls-cert`, `--tls-key`): memory servers, `krak status`
//! and a `krak run` program's pager reach it at an https:// URL trusting the rack's CA
//! (`--tls-ca`), every page of the program reads back right; a client that does not trust the
//! CA is refused with a message naming the fix; plain HTTP and a silent handshake are cut,
//! and the controller keeps serving.

mod controller_common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use controller_common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1 with its key, as PEM
/// files in `dir`: (ca, cert, key).
fn rack_ca(dir: &Path, name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let write = |file: &str, text: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    (write("ca.pem", ca_cert.pem()), write("cert.pem", cert.pem()), write("key.pem", key.serialize_pem()))
}

/// `krak status --json` at `url` trusting `ca`: the status, or what it printed.
fn status_with(url: &str, ca: &str) -> Result<serde_json::Value, String> {
    let out = krak(&["status", "--json", "--controller", url, "--tls-ca", ca]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
}

#[test]
fn the_api_over_tls_serves_a_rack_and_refuses_whom_it_should() {
    let dir = TempDir::new("ctl-tls");
    let (ca, cert, key) = rack_ca(dir.path(), "rack");
    let (other_ca, _, _) = rack_ca(dir.path(), "other");
    let store = dir.path().join("store");
    let (_ctl, line) = spawn_and_read_line(&[
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--http-timeout-ms",
        "1000",
    ]);
    let url = line.trim().strip_prefix("krak controller listening on ").unwrap_or_else(|| panic!("{line:?}"));
    assert!(url.starts_with("https://127.0.0.1:"), "{line:?}");
    let url = url.to_string();
    let addr = url.strip_prefix("https://").unwrap().to_string();

    // memory servers join over TLS
    let _servers: Vec<_> =
        (1..=2).map(|i| memserver_with(&url, &format!("rack1/host{i}"), "128MiB", &["--tls-ca", &ca])).collect();
    wait_for(Duration::from_secs(10), "2 alive servers over TLS", || {
        let st = status_with(&url, &ca).ok()?;
        (st["servers"].as_array()?.iter().filter(|s| s["state"] == "alive").count() == 2).then_some(())
    });

    // a program's pager places, commits and follows its map over TLS; every byte reads back
    let args = ["--tls-ca", &ca, "--controller", &url, "--local", "16MiB", "--max-far", "64MiB"];
    let (mut program, mut lines, _pid) = start_program(&args, Some(secret_file()), &pattern_program(48));
    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().expect("a verdict").expect("readable"), "verified");
    program.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(program.0.wait().unwrap().success());

    // a client that trusts another CA, or only the public roots, is refused and told why
    for refused in [Some(other_ca.as_str()), None] {
        let mut args = vec!["status", "--controller", url.as_str()];
        if let Some(ca) = refused {
            args.extend(["--tls-ca", ca]);
        }
        let out = krak(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was served");
        assert!(stderr.contains("TLS") && stderr.contains("--tls-ca"), "{args:?}: {stderr}");
    }
    // a CA file that is no CA is refused before anything is sent
    let out = krak(&["status", "--controller", &url, "--tls-ca", &cert.replace("cert.pem", "key.pem")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no certificate"), "{stderr}");

    // plain HTTP to the TLS port is not answered as HTTP, and does not hold the connection
    let mut plain = std::net::TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    // a connection that never says hello is closed within the request timeout
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let opened = Instant::now();
    let got = silent.read(&mut [0u8; 64]);
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    assert!(opened.elapsed() < Duration::from_secs(5), "held {:?}", opened.elapsed());

    // and the controller keeps serving
    let st = status_with(&url, &ca).unwrap();
    assert_eq!(st["servers"].as_array().unwrap().len(), 2, "{st:#}");
}
