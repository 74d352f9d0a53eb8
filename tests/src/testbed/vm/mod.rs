//! Test hosts that are virtual machines: Debian 12 booted by its own kernel
//! and systemd as PID 1 (cgroup v2 by default, v1 on request), reached over
//! real ssh on a forwarded loopback port, rebooted and reset for real.
//!
//! - The image (see `build.sh`) is built once and cached; each VM boots a
//!   qcow2 overlay of it, so every VM starts from a clean disk.
//! - Keys come on a second, read-only disk: a tar the initramfs unpacks over
//!   the root before `switch_root` (client key authorized for root, a fresh
//!   ed25519 host key). The host key is pinned; nothing is trusted on first use.
//! - Networking is qemu's user mode with `restrict=on`: the guest reaches
//!   nothing, and only `127.0.0.1:<port>` reaches its sshd.
//! - TCG unless `/dev/kvm` is a real hardware hypervisor (vmx/svm): the
//!   paravirtual one of some cloud machines does not boot a stock kernel.
//! - The serial console goes to `console.log`, the qemu monitor to a socket
//!   (`system_reset`, `system_powerdown`).

mod image;
mod qemu;

pub use image::{Image, PACKAGES};
pub use qemu::{VmHost, VmOptions};

use std::path::Path;

/// Why VM hosts cannot run here, if they cannot.
pub fn vm_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (bin, pkg) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/bin/qemu-img", "qemu-utils"),
        ("/usr/bin/mmdebstrap", "mmdebstrap"),
        ("/usr/bin/ssh", "openssh-client"),
        ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
        ("/usr/bin/cpio", "cpio"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} is missing (apt-get install {pkg})"));
        }
    }
    if image::kernel_version().is_none() {
        return Some("no kernel with modules in /boot (apt-get install linux-image-amd64)".into());
    }
    None
}

/// True when VM tests can run. Otherwise prints "skipped <test>: <why>" and
/// returns false — or panics when `TEND_E2E=required`.
pub fn skip_unless_vm(test: &str) -> bool {
    match vm_unavailable() {
        None => true,
        Some(why) => {
            if std::env::var("TEND_E2E").as_deref() == Ok("required") {
                panic!("{test}: VM tests are required (TEND_E2E=required) but cannot run: {why}");
            }
            println!("skipped {test}: {why}");
            false
        }
    }
}

/// `-accel` for this machine: KVM only on a hardware hypervisor.
pub(crate) fn accel() -> (&'static str, &'static str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpu
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if hw && !pvm && Path::new("/dev/kvm").exists() && std::env::var("TEND_VM_TCG").is_err() {
        ("kvm", "host")
    } else {
        ("tcg,thread=multi,tb-size=64", "max")
    }
}
