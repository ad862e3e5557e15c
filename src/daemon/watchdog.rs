//! The Linux watchdog device: carrying out the core's feed and stop decisions.
//!
//! The core decides whether this host may go on feeding its watchdog; this module only carries
//! that out. Feeding is a write to the device (`/dev/watchdog`): each one restarts the driver's
//! countdown. Stopping, when the core orders it, means writing no more keepalives, and NEVER the
//! magic close: the device stays open and unfed, the countdown runs out and the driver resets
//! the host. Peers count on exactly that deadline before they treat this host as fenced.
//!
//! The magic close (writing `'V'` just before closing) tells the driver that a stop is
//! intentional, and disarms it. It is written only on a clean daemon shutdown with no stop
//! ordered, and by `peerfence watchdog test`. If the daemon crashes, the kernel closes the file
//! without a `'V'`, so the watchdog keeps counting and resets the host: that is the point, as a
//! crashed daemon can no longer tell whether its host must be fenced. (The file is opened with
//! `O_CLOEXEC`, the standard library's default, so no child process such as a health-check
//! command keeps it open behind the daemon's back.)
//!
//! Two driver properties break that guarantee and are reported ([`Device::resets_after_crash`]):
//! a driver that lacks `WDIOF_MAGICCLOSE` is stopped by *any* close, crash included, and one
//! with `WDIOF_ALARMONLY` raises an alarm instead of resetting the host.
//!
//! A plain file or a FIFO at the device path is a fake device for tests: keepalives and the
//! magic close are written to it as bytes and the ioctls are skipped.
//!
//! This module does IO, so it is exempt from the core's sans-IO lints (`clippy.toml`).
#![allow(clippy::disallowed_methods)]

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a keepalive writes. The kernel treats any write as a keepalive and only looks for a
/// `'V'` in it; `'k'` is not one, and a fake device then holds one readable byte per keepalive.
const KEEPALIVE: &[u8] = b"k";
/// The magic close character.
const MAGIC_CLOSE: &[u8] = b"V";
/// The longest timeout accepted, in seconds.
const MAX_TIMEOUT_SECS: u32 = 3600;
/// Commands the feeder thread may have queued; more feeds than this are dropped.
const FEEDER_QUEUE: usize = 16;
/// How long [`Feeder::close`] waits for the thread.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

// The ioctls, in Linux's generic `_IOC` encoding: direction in bits 30-31, argument size in
// bits 16-29, type in bits 8-15, number in bits 0-7. (x86, arm, aarch64, riscv and s390 use it;
// powerpc, mips, sparc and alpha lay the bits out differently, and a wrong number fails with
// ENOTTY, so opening the device fails rather than doing something else.)
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(
        size < 1 << 14,
        "an ioctl argument is at most 14 bits of size"
    );
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// The watchdog ioctls' type.
const WATCHDOG_IOCTL_BASE: u8 = b'W';
const WDIOC_GETSUPPORT: u32 = ioc(IOC_READ, WATCHDOG_IOCTL_BASE, 0, size_of::<WatchdogInfo>());
const WDIOC_SETTIMEOUT: u32 = ioc(
    IOC_READ | IOC_WRITE,
    WATCHDOG_IOCTL_BASE,
    6,
    size_of::<libc::c_int>(),
);
const WDIOC_GETTIMEOUT: u32 = ioc(IOC_READ, WATCHDOG_IOCTL_BASE, 7, size_of::<libc::c_int>());

/// `WDIOF_MAGICCLOSE`: without it, closing the device in any way stops the watchdog.
const WDIOF_MAGICCLOSE: u32 = 0x0100;
/// `WDIOF_ALARMONLY`: the watchdog raises an external alarm instead of resetting the host.
const WDIOF_ALARMONLY: u32 = 0x0400;

/// `struct watchdog_info`, filled in by `WDIOC_GETSUPPORT`.
#[repr(C)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

/// The ioctl calls, behind a safe interface (the crate denies unsafe code everywhere else).
mod sys {
    use super::WatchdogInfo;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// Whether this build can issue ioctls.
    pub(super) const IOCTLS: bool = true;

    /// The error an ioctl gives where ioctls are unavailable.
    pub(super) fn unavailable() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "this build of peerfence cannot issue watchdog ioctls",
        )
    }

    /// Issues `request`, whose argument is one `int`: the driver reads and may write `arg`.
    #[allow(unsafe_code)]
    pub(super) fn ioctl_int(file: &File, request: u32, arg: &mut libc::c_int) -> io::Result<()> {
        // SAFETY: `file` keeps the descriptor open for the call; `request`'s argument is one
        // `int`, and `arg` is one, exclusively borrowed for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Issues `request`, whose argument is a `struct watchdog_info` the driver fills in.
    #[allow(unsafe_code)]
    pub(super) fn ioctl_info(file: &File, request: u32, arg: &mut WatchdogInfo) -> io::Result<()> {
        // SAFETY: as above; the argument is a `struct watchdog_info`, which `arg` is
        // (`#[repr(C)]`, 40 bytes, every bit pattern valid).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Why the watchdog device could not be used. Each message names the device and the fix.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The timeout is outside what the watchdog API takes.
    #[error(
        "watchdog timeout {requested:?} is out of range: it must be between 1 s and {MAX_TIMEOUT_SECS} s; fix watchdog.timeout"
    )]
    Timeout {
        /// The timeout asked for.
        requested: Duration,
    },
    /// The device could not be opened (or is of a kind that must not be written to).
    #[error("cannot open the watchdog device {}: {source}; {hint}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The driver would not take the timeout, or would not say what it is.
    #[error("cannot set the timeout of the watchdog device {} to {secs} s: {source}; {hint}", path.display())]
    SetTimeout {
        /// The device path.
        path: PathBuf,
        /// The timeout asked for, in whole seconds.
        secs: u32,
        /// What failed.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// A keepalive or the magic close could not be written.
    #[error("cannot write to the watchdog device {}: {source}", path.display())]
    Write {
        /// The device path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "run peerfence as root, or give its user write access to the device"
        }
        io::ErrorKind::InvalidInput => {
            "watchdog.device must be a watchdog character device (or, for tests, a plain file or FIFO)"
        }
        _ if e.raw_os_error() == Some(libc::EBUSY) => {
            "another process holds it open and only one may (stop the other watchdog user, such as watchdog(8) or systemd's RuntimeWatchdogSec=), or set watchdog.device"
        }
        _ => "load a watchdog driver (modprobe softdog for testing) or set watchdog.device",
    }
}

fn set_timeout_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOTTY) => {
            "it is not a watchdog device; set watchdog.device to one (usually /dev/watchdog)"
        }
        Some(libc::EINVAL) => "the driver does not accept that timeout; change watchdog.timeout",
        Some(libc::EOPNOTSUPP) => {
            "the driver's timeout is fixed; set watchdog.timeout to it (wdctl shows it)"
        }
        _ if e.kind() == io::ErrorKind::Unsupported => {
            "the crate root forbids the unsafe code an ioctl needs; use a plain file as a fake device, or build with the ioctls enabled (see daemon::watchdog)"
        }
        _ => "check the driver (dmesg)",
    }
}

/// The timeout in whole seconds, rounded up, and checked against the API's range.
fn whole_seconds(timeout: Duration) -> Result<u32, WatchdogError> {
    let secs = timeout
        .as_secs()
        .saturating_add(u64::from(timeout.subsec_nanos() > 0));
    match u32::try_from(secs) {
        Ok(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Ok(s),
        _ => Err(WatchdogError::Timeout { requested: timeout }),
    }
}

/// An open watchdog device (or a fake one). Dropping it closes the file without the magic
/// close, which leaves a real watchdog counting down: only [`Device::magic_close`] disarms it.
pub struct Device {
    file: File,
    path: PathBuf,
    is_char_device: bool,
    /// The timeout the driver reports, after setting it; `None` for a fake device.
    timeout_secs: Option<u32>,
    identity: Option<String>,
    options: Option<u32>,
}

impl Device {
    /// Opens `path` write-only (O_APPEND too, harmless on a device, lets a plain file record every
    /// write), and, when it is a character device, sets the timeout with `WDIOC_SETTIMEOUT` and
    /// reads back `WDIOC_GETTIMEOUT` (a driver may round it; [`Self::timeout_secs`] is the actual
    /// value, and a caller must not assume a shorter deadline than that). A plain file or FIFO is
    /// a fake device for tests: the ioctls are skipped. A FIFO blocks here until it has a reader.
    ///
    /// `timeout` is rounded up to whole seconds and must be 1 s to 3600 s. Opening a real device
    /// arms it, so if the timeout cannot then be set the device is magic-closed again before the
    /// error is returned, and a failed start does not reset the host.
    pub fn open(path: &Path, timeout: Duration) -> Result<Device, WatchdogError> {
        let secs = whole_seconds(timeout)?;
        let open_error = |source: io::Error| WatchdogError::Open {
            path: path.to_owned(),
            hint: open_hint(&source),
            source,
        };
        // Look before opening: opening a watchdog arms it, and a block device or anything else
        // must never receive keepalive bytes.
        let kind = std::fs::metadata(path).map_err(open_error)?.file_type();
        if !(kind.is_char_device() || kind.is_file() || kind.is_fifo()) {
            return Err(open_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a character device, plain file or FIFO",
            )));
        }
        if kind.is_char_device() && !sys::IOCTLS {
            let source = sys::unavailable();
            return Err(WatchdogError::SetTimeout {
                path: path.to_owned(),
                secs,
                hint: set_timeout_hint(&source),
                source,
            });
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(open_error)?;
        // What was opened decides, in case the path changed since the look.
        let is_char_device = file
            .metadata()
            .map_err(open_error)?
            .file_type()
            .is_char_device();
        let mut device = Device {
            file,
            path: path.to_owned(),
            is_char_device,
            timeout_secs: None,
            identity: None,
            options: None,
        };
        if !is_char_device {
            tracing::info!(
                device = %path.display(),
                "the watchdog device is not a character device: using it as a fake device (no ioctls, one byte per write)"
            );
            return Ok(device);
        }
        if let Err(e) = device.configure(secs, timeout) {
            tracing::warn!(
                device = %path.display(),
                "the watchdog device was opened but cannot be configured: magic-closing it so that the host is not reset (a driver with nowayout cannot be stopped and will reset it)"
            );
            let _ = device.magic_close();
            return Err(e);
        }
        Ok(device)
    }

    /// Reads what the driver supports, then sets and reads back the timeout.
    fn configure(&mut self, secs: u32, requested: Duration) -> Result<(), WatchdogError> {
        let mut info = WatchdogInfo {
            options: 0,
            firmware_version: 0,
            identity: [0; 32],
        };
        match sys::ioctl_info(&self.file, WDIOC_GETSUPPORT, &mut info) {
            Ok(()) => {
                let end = info.identity.iter().position(|&b| b == 0);
                let name = &info.identity[..end.unwrap_or(info.identity.len())];
                self.identity = Some(String::from_utf8_lossy(name).into_owned());
                self.options = Some(info.options);
                tracing::debug!(
                    device = %self.path.display(),
                    firmware_version = info.firmware_version,
                    options = info.options,
                    "watchdog driver support"
                );
            }
            Err(e) => tracing::debug!(
                device = %self.path.display(),
                error = %e,
                "the watchdog driver does not report its identity"
            ),
        }
        let set_error = |source: io::Error| WatchdogError::SetTimeout {
            path: self.path.clone(),
            secs,
            hint: set_timeout_hint(&source),
            source,
        };
        // `secs` is at most 3600, so it fits.
        let mut value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        sys::ioctl_int(&self.file, WDIOC_SETTIMEOUT, &mut value).map_err(set_error)?;
        let mut actual: libc::c_int = 0;
        sys::ioctl_int(&self.file, WDIOC_GETTIMEOUT, &mut actual).map_err(set_error)?;
        let actual = u32::try_from(actual).map_err(|_| {
            set_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the driver reports a timeout of {actual} s"),
            ))
        })?;
        if Duration::from_secs(u64::from(actual)) > requested {
            tracing::warn!(
                device = %self.path.display(),
                actual_secs = actual,
                requested = ?requested,
                "the watchdog driver set a longer timeout than asked for: this host would be reset later than configured"
            );
        }
        if self.resets_after_crash() == Some(false) {
            tracing::warn!(
                device = %self.path.display(),
                "this watchdog driver lacks magic close or only raises an alarm: a daemon crash would not reset the host"
            );
        }
        self.timeout_secs = Some(actual);
        Ok(())
    }

    /// Writes one keepalive: the driver restarts its countdown.
    pub fn keepalive(&mut self) -> Result<(), WatchdogError> {
        self.write(KEEPALIVE)
    }

    /// Magic close: write `'V'`, then close. Tells the driver the stop is intentional, so it
    /// disarms (only on a clean daemon shutdown with no stop ordered, and in the self-test).
    pub fn magic_close(mut self) -> Result<(), WatchdogError> {
        self.write(MAGIC_CLOSE)
        // `self.file` is closed here.
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), WatchdogError> {
        self.file
            .write_all(bytes)
            .map_err(|source| WatchdogError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// The driver's name (`WDIOC_GETSUPPORT`), for a character device whose driver reports it.
    pub fn identity(&self) -> Option<String> {
        self.identity.clone()
    }

    /// The timeout in seconds as the driver reported it after setting; `None` for a fake device.
    pub fn timeout_secs(&self) -> Option<u32> {
        self.timeout_secs
    }

    /// The driver's `WDIOF_*` option bits, when it reports them.
    pub fn options(&self) -> Option<u32> {
        self.options
    }

    /// Whether a crash of this process (a close without `'V'`) leaves the watchdog to reset the
    /// host: false for a driver without `WDIOF_MAGICCLOSE` (any close stops it) or with
    /// `WDIOF_ALARMONLY` (it does not reset). `None` when unknown, as for a fake device.
    pub fn resets_after_crash(&self) -> Option<bool> {
        self.options
            .map(|o| o & WDIOF_MAGICCLOSE != 0 && o & WDIOF_ALARMONLY == 0)
    }

    /// Whether this is a real (character) device rather than a fake one.
    pub fn is_char_device(&self) -> bool {
        self.is_char_device
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the feeder thread is asked to do.
enum Cmd {
    /// Write a keepalive, unless stopped.
    Feed,
    /// Clean shutdown: magic close unless stopped.
    Close,
}

/// Counters shared with the feeder thread.
#[derive(Default)]
struct Shared {
    keepalives: AtomicU64,
    write_errors: AtomicU64,
    dropped: AtomicU64,
    stopped: AtomicBool,
    closing: AtomicBool,
}

/// What a [`Feeder`] has done, for the status view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FeederStats {
    /// Keepalives written.
    pub keepalives: u64,
    /// Keepalive writes that failed.
    pub write_errors: u64,
    /// Feeds dropped because the thread's queue was full (or the thread was gone).
    pub dropped: u64,
    /// Whether feeding was stopped for good.
    pub stopped: bool,
}

/// A thread that owns the [`Device`], so that a slow write never blocks the daemon's async node
/// task. Feeds go through a bounded queue; a feed that finds it full is dropped and counted (the
/// next one comes within a feed interval).
///
/// Dropping a `Feeder` without [`Feeder::close`] ends the thread and closes the device without
/// the magic close, as a crash would: a real watchdog then resets the host.
pub struct Feeder {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

impl Feeder {
    /// Starts the thread that owns `device`.
    pub fn spawn(device: Device) -> io::Result<Feeder> {
        let (tx, rx) = mpsc::sync_channel(FEEDER_QUEUE);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || feed_loop(device, &rx, &thread_shared))?;
        Ok(Feeder { tx, shared, thread })
    }

    /// Asks for one keepalive. Never blocks; ignored after [`Self::stop`].
    pub fn feed(&self) {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.tx.try_send(Cmd::Feed) {
            let before = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                let why = match e {
                    TrySendError::Full(_) => "its queue is full (a write is slow)",
                    TrySendError::Disconnected(_) => "its thread is gone",
                };
                tracing::warn!(
                    "a watchdog feed was dropped because {why}; counting further drops silently"
                );
            }
        }
    }

    /// Stop feeding for good (the core ordered it): later feeds are ignored; the device stays
    /// open without the magic close, so the host is reset at the deadline. No keepalive begins
    /// after this returns; one the thread is already writing may still land.
    pub fn stop(&self) {
        if !self.shared.stopped.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                keepalives = self.shared.keepalives.load(Ordering::Relaxed),
                "watchdog feeding stopped for good: the host will be reset when the watchdog times out"
            );
        }
    }

    /// Clean shutdown: magic close unless stopped (then the device is closed without it and the
    /// reset still comes). Waits at most 1 s for the thread; a thread stuck in a write is left
    /// behind, and closes the device when its write returns.
    pub fn close(self) {
        let Feeder { tx, shared, thread } = self;
        shared.closing.store(true, Ordering::SeqCst);
        // If the queue is full, the thread sees `closing` at its next command, and the dropped
        // sender wakes it once the queue is empty.
        let _ = tx.try_send(Cmd::Close);
        drop(tx);
        let deadline = Instant::now() + CLOSE_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            tracing::warn!(
                "the watchdog thread did not finish within {CLOSE_WAIT:?} (a write is stuck); leaving it"
            );
        } else if thread.join().is_err() {
            tracing::error!(
                "the watchdog thread panicked; the device was closed without the magic close"
            );
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FeederStats {
        FeederStats {
            keepalives: self.shared.keepalives.load(Ordering::Relaxed),
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            stopped: self.shared.stopped.load(Ordering::SeqCst),
        }
    }
}

/// The feeder thread: writes keepalives until told to close or abandoned.
fn feed_loop(mut device: Device, rx: &Receiver<Cmd>, shared: &Shared) {
    let mut failing = false;
    // `Err` means the `Feeder` is gone: closed (with `closing` set) or dropped.
    while let Ok(Cmd::Feed) = rx.recv() {
        if shared.closing.load(Ordering::SeqCst) {
            break;
        }
        if shared.stopped.load(Ordering::SeqCst) {
            continue;
        }
        match device.keepalive() {
            Ok(()) => {
                shared.keepalives.fetch_add(1, Ordering::Relaxed);
                if failing {
                    failing = false;
                    tracing::info!(device = %device.path.display(), "watchdog keepalives are written again");
                }
            }
            Err(e) => {
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    tracing::error!(error = %e, "a watchdog keepalive failed; counting further failures silently");
                }
            }
        }
    }
    let path = device.path.clone();
    if !shared.closing.load(Ordering::SeqCst) {
        tracing::warn!(
            device = %path.display(),
            "the watchdog feeder was dropped without close: closing the device without the magic close"
        );
    } else if shared.stopped.load(Ordering::SeqCst) {
        tracing::warn!(
            device = %path.display(),
            "closing the watchdog device without the magic close, as feeding was stopped: the host will be reset"
        );
    } else {
        match device.magic_close() {
            Ok(()) => tracing::info!(device = %path.display(), "watchdog magic-closed"),
            Err(e) => {
                tracing::error!(error = %e, "the watchdog magic close failed: the host will be reset")
            }
        }
        return;
    }
    drop(device);
}

/// `peerfence watchdog test`: opens the device, reports identity and timeout, writes 3
/// keepalives, then magic-closes it, so that it does NOT reset the host (unless the driver was
/// loaded with `nowayout`, which nothing can stop). Returns a human-readable line per step, or
/// the error; after a failed keepalive the magic close is still attempted.
pub fn self_test(path: &Path, timeout: Duration) -> Result<Vec<String>, WatchdogError> {
    let mut device = Device::open(path, timeout)?;
    let mut lines = Vec::new();
    if device.is_char_device() {
        lines.push(format!("opened {} (a character device)", path.display()));
        lines.push(match device.identity() {
            Some(id) => format!("identity: {id}"),
            None => "identity: not reported by the driver".to_owned(),
        });
        if let Some(secs) = device.timeout_secs() {
            lines.push(format!("timeout: {secs} s (asked for {timeout:?})"));
        }
        match device.resets_after_crash() {
            Some(true) => {
                lines.push("supports magic close: a crash leaves it to reset the host".to_owned())
            }
            Some(false) => lines.push(
                "WARNING: no magic close or alarm only: a daemon crash would NOT reset the host"
                    .to_owned(),
            ),
            None => lines.push("options: not reported by the driver".to_owned()),
        }
    } else {
        lines.push(format!(
            "opened {} (not a character device: a fake device, no ioctls)",
            path.display()
        ));
    }
    for n in 1..=3 {
        if let Err(e) = device.keepalive() {
            let _ = device.magic_close();
            return Err(e);
        }
        lines.push(format!("keepalive {n} of 3 written"));
    }
    device.magic_close()?;
    lines.push(
        "magic close written: the watchdog is stopped and will not reset the host".to_owned(),
    );
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fresh path for a fake device, in a directory of this process's own.
    fn scratch(tag: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("pf-watchdog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{tag}-{n}"))
    }

    fn fake(tag: &str) -> PathBuf {
        let path = scratch(tag);
        std::fs::write(&path, b"").unwrap();
        path
    }

    fn contents(path: &Path) -> String {
        String::from_utf8(std::fs::read(path).unwrap()).unwrap()
    }

    /// Waits (at most 5 s) until the file holds `len` bytes.
    fn wait_for_len(path: &Path, len: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(path).unwrap().len() < len {
            assert!(
                Instant::now() < deadline,
                "{} never reached {len} bytes",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn the_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(WDIOC_SETTIMEOUT, 0xC004_5706);
        assert_eq!(WDIOC_GETTIMEOUT, 0x8004_5707);
        assert_eq!(WDIOC_GETSUPPORT, 0x8028_5700);
        assert_eq!(size_of::<WatchdogInfo>(), 40);
    }

    #[test]
    fn timeouts_are_whole_seconds_from_1_to_3600() {
        assert_eq!(whole_seconds(Duration::from_millis(300)).unwrap(), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)).unwrap(), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2500)).unwrap(), 3);
        assert_eq!(whole_seconds(Duration::from_secs(3600)).unwrap(), 3600);
        assert!(whole_seconds(Duration::ZERO).is_err());
        assert!(whole_seconds(Duration::from_millis(3_600_001)).is_err());
        assert!(whole_seconds(Duration::MAX).is_err());
        let path = fake("timeout");
        let e = Device::open(&path, Duration::from_secs(3601))
            .err()
            .unwrap();
        assert!(e.to_string().contains("watchdog.timeout"), "{e}");
        assert_eq!(contents(&path), "", "nothing is opened for a bad timeout");
    }

    #[test]
    fn a_fake_device_records_one_byte_per_keepalive_and_v_last() {
        let path = fake("device");
        let mut d = Device::open(&path, T).unwrap();
        assert!(!d.is_char_device());
        assert_eq!(
            (d.identity(), d.timeout_secs(), d.resets_after_crash()),
            (None, None, None)
        );
        for _ in 0..3 {
            d.keepalive().unwrap();
        }
        assert_eq!(contents(&path), "kkk");
        d.magic_close().unwrap();
        assert_eq!(contents(&path), "kkkV");
    }

    #[test]
    fn dropping_a_device_closes_it_without_the_magic_close() {
        let path = fake("drop");
        let mut d = Device::open(&path, T).unwrap();
        d.keepalive().unwrap();
        drop(d);
        assert_eq!(contents(&path), "k");
    }

    #[test]
    fn a_missing_device_is_an_error_naming_the_path_and_the_fix() {
        let path = scratch("missing");
        let e = Device::open(&path, T).err().unwrap();
        assert!(matches!(e, WatchdogError::Open { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("modprobe softdog"), "{msg}");
        assert!(!path.exists(), "opening must not create the device");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = scratch("dir");
        std::fs::create_dir_all(&dir).unwrap();
        let e = Device::open(&dir, T).err().unwrap();
        assert!(e.to_string().contains("watchdog.device must be"), "{e}");
    }

    #[test]
    fn a_character_device_that_is_not_a_watchdog_is_refused() {
        // /dev/null is a character device: it must not become a watchdog, with or without ioctls.
        let e = Device::open(Path::new("/dev/null"), T).err().unwrap();
        assert!(
            matches!(e, WatchdogError::SetTimeout { secs: 10, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("/dev/null"), "{e}");
    }

    #[test]
    fn the_feeder_writes_keepalives_and_magic_closes_on_close() {
        let path = fake("feeder");
        let f = Feeder::spawn(Device::open(&path, T).unwrap()).unwrap();
        for _ in 0..5 {
            f.feed();
        }
        wait_for_len(&path, 5);
        let s = f.stats();
        assert_eq!(
            s,
            FeederStats {
                keepalives: 5,
                write_errors: 0,
                dropped: 0,
                stopped: false
            }
        );
        f.close();
        assert_eq!(contents(&path), "kkkkkV");
    }

    #[test]
    fn after_stop_nothing_more_is_written_and_close_does_not_write_v() {
        let path = fake("stop");
        let f = Feeder::spawn(Device::open(&path, T).unwrap()).unwrap();
        for _ in 0..3 {
            f.feed();
        }
        wait_for_len(&path, 3);
        f.stop();
        for _ in 0..3 {
            f.feed();
        }
        let s = f.stats();
        assert!(s.stopped);
        assert_eq!((s.keepalives, s.dropped), (3, 0));
        f.close();
        assert_eq!(contents(&path), "kkk");
    }

    #[test]
    fn the_stats_serialize_for_the_status_view() {
        let v = serde_json::to_value(FeederStats::default()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keepalives": 0, "write_errors": 0, "dropped": 0, "stopped": false})
        );
    }

    #[test]
    fn the_self_test_on_a_fake_device_reports_and_ends_with_v() {
        let path = fake("selftest");
        let lines = self_test(&path, T).unwrap();
        assert!(lines[0].contains("fake device"), "{lines:?}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("keepalive")).count(),
            3
        );
        assert!(lines.last().unwrap().contains("magic close"), "{lines:?}");
        assert_eq!(contents(&path), "kkkV");
    }

    #[test]
    fn the_self_test_of_a_missing_device_names_it() {
        let path = scratch("selftest-missing");
        let e = self_test(&path, T).err().unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
