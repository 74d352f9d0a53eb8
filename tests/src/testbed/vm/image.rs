//! The VM image: built once by `build.sh`, cached outside the checkout under
//! a digest of its recipe (script, packages, kernel, mirror), shared by every
//! VM of every test run on the machine.

use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

const SCRIPT: &str = include_str!("build.sh");
/// Debian packages of the guest (mmdebstrap `--include`).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "podman",
    "crun",
    "busybox-static",
    "iproute2",
    "curl",
    "procps",
    "kmod",
];
/// Where images are cached (override: `TEND_VM_CACHE`).
const CACHE: &str = "/var/cache/tend-testbed";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A built image: kernel, initramfs, base disk.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub kernel_version: String,
}

impl Image {
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.gz")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("base.qcow2")
    }

    /// The image, built on first use (once per process; other processes wait
    /// on a file lock and reuse it).
    pub fn get() -> Result<Image> {
        static IMAGE: OnceLock<Mutex<Option<Image>>> = OnceLock::new();
        let m = IMAGE.get_or_init(|| Mutex::new(None));
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.as_ref() {
            return Ok(i.clone());
        }
        let i = build_cached()?;
        *g = Some(i.clone());
        Ok(i)
    }
}

/// The newest kernel in /boot that has its modules installed.
pub fn kernel_version() -> Option<String> {
    let mut v: Vec<String> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .filter(|k| {
            Path::new("/lib/modules")
                .join(k)
                .join("modules.dep")
                .exists()
        })
        .collect();
    v.sort();
    v.pop()
}

fn build_cached() -> Result<Image> {
    let kver =
        kernel_version().context("no kernel in /boot (apt-get install linux-image-amd64)")?;
    let mirror = std::env::var("TEND_VM_MIRROR").unwrap_or_else(|_| MIRROR.into());
    let cache = PathBuf::from(std::env::var("TEND_VM_CACHE").unwrap_or_else(|_| CACHE.into()));
    let packages = PACKAGES.join(",");
    let kernel_len = std::fs::metadata(format!("/boot/vmlinuz-{kver}"))
        .map(|m| m.len())
        .unwrap_or(0);
    let recipe = format!("{SCRIPT}\n{packages}\n{kver}\n{kernel_len}\n{mirror}\n");
    let digest = sha256_hex(&recipe)?;
    let dir = cache.join(format!("vm-{}", &digest[..16]));
    let image = Image {
        dir: dir.clone(),
        kernel_version: kver.clone(),
    };
    std::fs::create_dir_all(&cache).with_context(|| format!("mkdir {}", cache.display()))?;
    let _lock = FileLock::take(&cache.join("build.lock"))?;
    if dir.join("done").exists() {
        return Ok(image);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    eprintln!("testbed: building the VM image in {} (once)", dir.display());
    let out = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .env("OUT", &dir)
        .env("KVER", &kver)
        .env("PACKAGES", &packages)
        .env("MIRROR", &mirror)
        .stdin(Stdio::null())
        .output()
        .context("run the image build script")?;
    if !out.status.success() {
        bail!(
            "building the VM image failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("testbed: VM image built in {secs:.1} s");
    std::fs::write(dir.join("build-seconds"), format!("{secs:.1}\n"))?;
    std::fs::write(dir.join("done"), "")?;
    Ok(image)
}

fn sha256_hex(s: &str) -> Result<String> {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run sha256sum")?;
    c.stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(s.as_bytes())?;
    let out = c.wait_with_output()?;
    let hex = String::from_utf8_lossy(&out.stdout);
    match hex.split_whitespace().next() {
        Some(h) if h.len() == 64 => Ok(h.to_string()),
        _ => bail!("sha256sum printed {hex:?}"),
    }
}

/// An exclusive `flock` held until drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn take(path: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
