//! `krak run --secret-file` with a relative path (issue 15, finding 8): a program that
//! changes directory and execs another (which gets an arena of its own, so reads the secret
//! again) still reaches the rack and reads back every byte it wrote.

mod controller_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use controller_common::*;

/// Writes 32 MiB with a pattern, reads it back, and prints how many pages were wrong.
const PROGRAM: &str = r#"
n = 32 << 20
b = bytearray(n)
pattern = bytes((i * 11 + 1) & 0xff for i in range(4096))
for off in range(0, n, 4096):
    b[off:off + 4096] = pattern
print("bad", sum(1 for off in range(0, n, 4096) if b[off:off + 4096] != pattern), flush=True)
"#;

#[test]
fn a_relative_secret_file_works_from_any_directory_the_program_moves_to() {
    let dir = TempDir::new("run-secret");
    let (_ctl, url) = controller("127.0.0.1:0", &["--store", dir.path().join("store").to_str().unwrap()]);
    let _server = memserver(&url, "rack1/host1", "128MiB");
    wait_for(Duration::from_secs(10), "an alive server", || {
        let st = status(&url).ok()?;
        (st["servers"].as_array()?.iter().any(|s| s["state"] == "alive")).then_some(())
    });
    std::fs::copy(secret_file(), dir.path().join("secret")).unwrap();
    for pager in ["separate", "in-process"] {
        let out = Command::new(KRAK)
            .current_dir(dir.path())
            .env_remove("KRAK_SECRET_FILE")
            .env_remove("KRAK_CONTROLLER")
            .args(["run", "--secret-file", "secret", "--controller", &url, "--pager", pager])
            .args([
                "--local",
                "8MiB",
                "--max-far",
                "64MiB",
                "--",
                "sh",
                "-c",
                r#"cd / && exec python3 -c "$1""#,
                "sh",
                PROGRAM,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--pager {pager}: {}\n{stderr}", out.status);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bad 0", "--pager {pager}: {stderr}");
    }
}
