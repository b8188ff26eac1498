//! The test guest of tests/vm.rs and examples/run_bench.rs: Debian's cloud kernel from
//! /boot and a busybox initramfs built here (with the virtio disk modules), whose /init
//! (tests/vm/init) reads a disk and runs a workload and
//! prints its checksums on the serial console, and the lines it must print (the same
//! programs run on this host).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's RAM.
pub const GUEST_RAM: &str = "1024M";

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The newest kernel in /boot.
fn kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    kernels.pop()
}

/// What the guest needs.
pub struct Guest {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    /// A disk the guest reads (QEMU reads it into guest RAM with preadv).
    disk: PathBuf,
    /// The lines the guest must print, as this host prints them.
    pub expected: Vec<String>,
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether an ELF-64 executable has no program interpreter (PT_INTERP): it runs alone.
fn is_static_elf(elf: &[u8]) -> bool {
    let u = |at: usize, n: usize| elf.get(at..at + n).map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u(0x20, 8), u(0x36, 2), u(0x38, 2)) else { return false };
    elf.starts_with(b"\x7fELF")
        && (0..phnum).all(|i| u((phoff + i * phentsize) as usize, 4).is_some_and(|p_type| p_type != 3))
}

/// Copies the kernel modules of virtio_pci and virtio_blk (and what they need) into
/// `root/lib` and lists them in load order in `root/lib/modules.order`.
fn virtio_modules(kernel: &Path, root: &Path) -> Result<(), String> {
    let name = kernel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let version = name.strip_prefix("vmlinuz-").ok_or("a kernel file not named vmlinuz-VERSION")?;
    let dir = Path::new("/lib/modules").join(version);
    let deps = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(|e| format!("{}: {e} (the kernel's modules)", dir.join("modules.dep").display()))?;
    let mut order: Vec<String> = Vec::new();
    for wanted in ["kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko"] {
        let line = deps
            .lines()
            .find_map(|l| l.strip_prefix(wanted).and_then(|rest| rest.strip_prefix(':')))
            .ok_or_else(|| format!("{wanted} is not a module of {version} (built in, or compressed?)"))?;
        // modules.dep lists what a module needs last-loaded-first.
        for m in line.split_whitespace().rev().chain([wanted]) {
            if !order.iter().any(|o| o == m) {
                order.push(m.to_string());
            }
        }
    }
    std::fs::create_dir_all(root.join("lib")).unwrap();
    let mut names = String::new();
    for m in &order {
        let file = Path::new(m).file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(dir.join(m), root.join("lib").join(&file)).map_err(|e| format!("{m}: {e}"))?;
        names.push_str(&file);
        names.push('\n');
    }
    std::fs::write(root.join("lib/modules.order"), names).unwrap();
    Ok(())
}

/// Builds the guest's initramfs in `dir`, or says what is missing here.
pub fn build(dir: &Path) -> Result<Guest, String> {
    let qemu = on_path("qemu-system-x86_64").ok_or("qemu-system-x86_64 is not installed (qemu-system-x86)")?;
    let kernel = kernel().ok_or("no kernel in /boot (linux-image-cloud-amd64)")?;
    let busybox = Path::new("/bin/busybox");
    if !std::fs::read(busybox).is_ok_and(|elf| is_static_elf(&elf)) {
        return Err("no static /bin/busybox (busybox-static)".into());
    }
    on_path("cpio").ok_or("cpio is not installed")?;
    let root = dir.join("root");
    for d in ["bin", "dev", "proc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::fs::copy(data.join("init"), root.join("init")).unwrap();
    let memcheck = root.join("bin/memcheck");
    let cc = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&memcheck)
        .arg(data.join("memcheck.c"))
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc -static failed: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    virtio_modules(&kernel, &root)?;
    sh(&root, "chmod 755 init && find . | cpio -o -H newc --quiet > ../initrd");
    sh(dir, "head -c 67108864 /dev/urandom > disk.img");
    // The guest's lines, as this host prints them for the same programs and data.
    let mut expected = Vec::new();
    let disk_md5 = sh(dir, "md5sum < disk.img");
    expected.push(format!("{}  /dev/vda", disk_md5.split_whitespace().next().unwrap()));
    expected.push(sh(dir, "root/bin/memcheck 400").trim().to_string());
    let md5 = sh(dir, "head -c 209715200 /dev/zero | tr '\\000' k | md5sum");
    expected.push(format!("{}  /tmp/f", md5.split_whitespace().next().unwrap()));
    expected.push(sh(dir, "root/bin/memcheck 64").trim().to_string());
    expected.push("krak-guest: done".into());
    Ok(Guest { qemu, kernel, initrd: dir.join("initrd"), disk: dir.join("disk.img"), expected })
}

impl Guest {
    /// QEMU and its arguments: TCG, the console on stdout, no devices but a serial port and
    /// the disk.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = vec![self.qemu.to_string_lossy().into_owned()];
        for a in ["-accel", "tcg", "-m", GUEST_RAM, "-nodefaults", "-no-user-config", "-display", "none"] {
            args.push(a.into());
        }
        for a in ["-serial", "stdio", "-monitor", "none", "-no-reboot", "-kernel"] {
            args.push(a.into());
        }
        args.push(self.kernel.to_string_lossy().into_owned());
        args.push("-initrd".into());
        args.push(self.initrd.to_string_lossy().into_owned());
        args.push("-drive".into());
        args.push(format!("file={},if=virtio,format=raw,readonly=on", self.disk.display()));
        args.push("-append".into());
        args.push("console=ttyS0 quiet panic=-1".into());
        args
    }

    /// The lines of the console that checks compare (the workload's, not the kernel's, which
    /// carry times).
    pub fn checked_lines(console: &str) -> Vec<String> {
        console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| {
                l.starts_with("memcheck ")
                    || l.ends_with("/tmp/f")
                    || l.ends_with("/dev/vda")
                    || l.starts_with("krak-guest: done")
            })
            .map(str::to_string)
            .collect()
    }
}
