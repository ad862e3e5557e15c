//! Storage heartbeat IO: per shared path, a writer and a reader.
//!
//! Each runs as a supervisor thread that never touches storage itself: it hands every write (or
//! read cycle) to a worker thread and waits for it at most `storage.write_timeout`. A worker that
//! does not answer in time is abandoned, not joined — a hard-mounted NFS server that stopped
//! answering can hold it forever — and the supervisor reports a timed-out write and carries on
//! with a new worker next interval. At most [`MAX_ABANDONED`] abandoned workers may exist per
//! supervisor; beyond that it reports failures without starting more threads.
//!
//! Files: `PATH/NAME.hb` holds member NAME's heartbeat record, `PATH/NAME.pill` a poison pill
//! addressed to it. Reads open files non-blocking, so a FIFO or device in a slot cannot hang a
//! reader.

use super::Msg;
use crate::config::Config;
use crate::health::WriteOutcome;
use crate::node::Input;
use peerfence_proto::{
    BootId, HeartbeatRecord, MemberId, QuorumCertificate, StorageBody, StorageRecord,
};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// The cluster marker on every shared path. peerfence writes its heartbeat on a path only while
/// the marker is there and names its cluster: a mount that failed at boot (the heartbeat would
/// go to the empty local mountpoint) or a directory replaced underneath has none. It is made once
/// by `peerfence storage init`, never silently.
pub const MARKER: &str = ".peerfence-cluster";

/// The marker's content for `cluster`.
fn marker_text(cluster: &str) -> String {
    format!("peerfence cluster marker v1\ncluster = {cluster}\n")
}

/// Whether `dir` holds this cluster's marker. The error says what is wrong and how to fix it.
pub fn check_marker(dir: &Path, cluster: &str) -> Result<(), String> {
    let file = dir.join(MARKER);
    match read_slot(&file) {
        Ok(Some(bytes)) if bytes == marker_text(cluster).as_bytes() => Ok(()),
        Ok(Some(_)) => Err(format!(
            "{} belongs to another cluster (or is damaged); this path is not {cluster}'s shared storage",
            file.display()
        )),
        Ok(None) => Err(format!(
            "{} is missing: {} is not (or no longer) the shared storage of cluster {cluster} (a mount that failed?); if it is, run `peerfence storage init --config FILE` once",
            file.display(),
            dir.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// `peerfence storage init`: writes the cluster marker on a path that exists and holds none,
/// or confirms one that names this cluster. Refuses another cluster's marker.
pub fn init_marker(dir: &Path, cluster: &str) -> Result<String, String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a directory: mount the shared storage first",
            dir.display()
        ));
    }
    let file = dir.join(MARKER);
    match check_marker(dir, cluster) {
        Ok(()) => {
            return Ok(format!(
                "{}: marker for {cluster} already there",
                dir.display()
            ));
        }
        Err(_) if file.exists() => return Err(check_marker(dir, cluster).unwrap_err()),
        Err(_) => {}
    }
    write_record(&file, marker_text(cluster).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(format!("{}: marker for {cluster} written", dir.display()))
}

/// What `peerfence init` found of this host in its own heartbeat slot on one shared path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnSlot {
    /// No slot: this host never wrote a heartbeat on this path.
    Empty,
    /// The generation of its last record, and whether that record was a clean stop.
    Record {
        /// Its generation.
        generation: u32,
        /// A `Stopped` record (a clean stop), not a `Heartbeat`.
        stopped: bool,
    },
    /// Something else is in the slot (not a heartbeat record of this cluster).
    Foreign,
}

/// Reads this host's own heartbeat slot `PATH/NAME.hb` on every shared path, for
/// `peerfence init`: each path's marker first (a path without it is not the shared storage, and
/// an empty slot there would prove nothing), every path at once, each bounded by
/// `storage.write_timeout` (a hung NFS mount gives up rather than hanging init). A path that
/// cannot be read gives the reason.
///
/// A record counts when it names this cluster, whatever its digest and member id: the
/// configuration (and with it the roster's ids) may have changed since the record was written,
/// and a generation that was used stays used.
pub fn own_slots(cfg: &Arc<Config>, me: MemberId) -> Vec<(PathBuf, Result<OwnSlot, String>)> {
    let name = cfg.roster.name(me).to_owned();
    let c = cfg.clone();
    let found = on_every_path(cfg, move |dir| -> Result<OwnSlot, String> {
        check_marker(dir, c.cluster.as_str())?;
        let f = slot(dir, &name, "hb");
        let Some(bytes) = read_slot(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
        else {
            return Ok(OwnSlot::Empty);
        };
        Ok(match peerfence_proto::decode_storage(&bytes) {
            Ok(rec) if rec.cluster == c.cluster => match rec.body {
                StorageBody::Heartbeat(r) => OwnSlot::Record {
                    generation: r.generation,
                    stopped: false,
                },
                StorageBody::Stopped(r) => OwnSlot::Record {
                    generation: r.generation,
                    stopped: true,
                },
                _ => OwnSlot::Foreign,
            },
            _ => OwnSlot::Foreign,
        })
    });
    let timeout = crate::config::fmt_duration(cfg.storage.write_timeout);
    cfg.storage
        .paths
        .iter()
        .zip(found)
        .map(|(dir, result)| {
            let dir = PathBuf::from(dir);
            let result = result.unwrap_or_else(|| {
                Err(format!(
                    "{} did not answer within storage.write_timeout ({timeout})",
                    dir.display()
                ))
            });
            (slot(&dir, cfg.roster.name(me), "hb"), result)
        })
        .collect()
}

/// Runs `job` on every storage path at once, each on a thread of its own and bounded by
/// `storage.write_timeout` (a hung NFS mount is abandoned, at most [`MAX_ABANDONED`] of them):
/// per path, in order, its result, or `None` when it did not answer in time.
fn on_every_path<T: Send + 'static>(
    cfg: &Arc<Config>,
    job: impl Fn(&Path) -> T + Clone + Send + 'static,
) -> Vec<Option<T>> {
    let abandoned = Arc::new(AtomicUsize::new(0));
    let timeout = cfg.storage.write_timeout;
    let handles: Vec<_> = cfg
        .storage
        .paths
        .iter()
        .map(|dir| {
            let (dir, job, abandoned) = (PathBuf::from(dir), job.clone(), abandoned.clone());
            std::thread::spawn(move || with_timeout(&abandoned, timeout, move || job(&dir)).ok())
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().ok().flatten())
        .collect()
}

/// Abandoned (hung) workers allowed per supervisor.
pub const MAX_ABANDONED: usize = 4;

/// Largest slot file read (a certificate of 128 votes is ~13 KiB).
const MAX_SLOT_BYTES: u64 = 64 * 1024;

/// What one read cycle of a path found.
struct ReadCycle {
    /// Each member's slot: its record, and whether it is the last one of a clean stop.
    records: Vec<(MemberId, Option<HeartbeatRecord>, bool)>,
    /// Heartbeats of this cluster written under another configuration digest (a rolling change).
    foreign: Vec<(MemberId, HeartbeatRecord)>,
    pill: Option<QuorumCertificate>,
    ignored: usize,
}

/// Runs `job` on a worker thread and waits at most `timeout`. `Err(())` when it timed out (the
/// worker is abandoned) or when too many workers are already abandoned.
fn with_timeout<T: Send + 'static>(
    abandoned: &Arc<AtomicUsize>,
    timeout: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ()> {
    if abandoned.load(Ordering::SeqCst) >= MAX_ABANDONED {
        return Err(());
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let counter = abandoned.clone();
    let spawned = std::thread::Builder::new()
        .name("pf-storage-io".into())
        .spawn(move || {
            let out = job();
            if tx.send(out).is_err() {
                // The supervisor gave up on us: we were counted as abandoned; not any more.
                counter.fetch_sub(1, Ordering::SeqCst);
            }
        });
    if spawned.is_err() {
        return Err(());
    }
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(_) => {
            abandoned.fetch_add(1, Ordering::SeqCst);
            // If the worker finished between the timeout and the increment, undo it.
            if let Ok(_late) = rx.try_recv() {
                abandoned.fetch_sub(1, Ordering::SeqCst);
            }
            Err(())
        }
    }
}

fn slot(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}"))
}

fn write_record(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    f.sync_data()
}

fn read_slot(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_SLOT_BYTES + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

fn decode_slot(cfg: &Config, bytes: &[u8]) -> Option<StorageBody> {
    let rec = peerfence_proto::decode_storage(bytes).ok()?;
    (rec.cluster == cfg.cluster && rec.digest == cfg.digest()).then_some(rec.body)
}

/// A heartbeat of this cluster in `m`'s slot written under another configuration digest (during
/// a rolling change): not evidence about `m` for this member, but proof the path is shared.
fn foreign_heartbeat(cfg: &Config, bytes: &[u8], m: MemberId) -> Option<HeartbeatRecord> {
    let rec = peerfence_proto::decode_storage(bytes).ok()?;
    if rec.cluster != cfg.cluster || rec.digest == cfg.digest() {
        return None;
    }
    match rec.body {
        StorageBody::Heartbeat(r) | StorageBody::Stopped(r) if r.member == m => Some(r),
        _ => None,
    }
}

/// Hung pill writes and clears, abandoned, across the process (bounded like the heartbeats').
static PILL_ABANDONED: std::sync::LazyLock<Arc<AtomicUsize>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicUsize::new(0)));

/// Writes the poison pill (`qc`) into `target`'s slot on every shared path, each write bounded
/// by `storage.write_timeout`, on a thread of its own; `done(true)` when every path took it.
pub fn write_pill(
    cfg: Arc<Config>,
    target: MemberId,
    qc: Arc<QuorumCertificate>,
    done: impl FnOnce(bool) + Send + 'static,
) {
    let record = StorageRecord {
        cluster: cfg.cluster.clone(),
        digest: cfg.digest(),
        body: StorageBody::PoisonPill((*qc).clone()),
    };
    let Ok(bytes) = peerfence_proto::encode_storage(&record) else {
        done(false);
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("pf-pill".into())
        .spawn(move || {
            let mut ok = true;
            for dir in &cfg.storage.paths {
                let file = slot(Path::new(dir), cfg.roster.name(target), "pill");
                let (f, b) = (file.clone(), bytes.clone());
                match with_timeout(&PILL_ABANDONED, cfg.storage.write_timeout, move || {
                    write_record(&f, &b)
                }) {
                    Ok(Ok(())) => {
                        tracing::warn!(file = %file.display(), "poison pill written")
                    }
                    Ok(Err(e)) => {
                        tracing::error!(file = %file.display(), error = %e, "cannot write the poison pill");
                        ok = false;
                    }
                    Err(()) => {
                        tracing::error!(file = %file.display(), "poison pill write did not complete in time");
                        ok = false;
                    }
                }
            }
            done(ok);
        });
    if spawned.is_err() {
        tracing::error!("cannot start the poison-pill thread");
    }
}

/// Removes `target`'s pill slot on every path where it still holds the pill of `proposal` (a
/// newer attempt's pill, written meanwhile, stays), on a thread of its own, each path bounded by
/// `storage.write_timeout`. `done(true)` when no path holds that pill any more. One try: the
/// node keeps the clear durably and asks again, with back-off, until it succeeds.
pub fn clear_pill(
    cfg: Arc<Config>,
    target: MemberId,
    proposal: peerfence_proto::Proposal,
    done: impl FnOnce(bool) + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("pf-pill-clear".into())
        .spawn(move || {
            let mut ok = true;
            for dir in &cfg.storage.paths {
                let file = slot(Path::new(dir), cfg.roster.name(target), "pill");
                let (f, c) = (file.clone(), cfg.clone());
                let r = with_timeout(&PILL_ABANDONED, cfg.storage.write_timeout, move || {
                    match read_slot(&f)? {
                        None => Ok(()),
                        Some(bytes) => match decode_slot(&c, &bytes) {
                            Some(StorageBody::PoisonPill(qc)) if qc.proposal != proposal => Ok(()),
                            _ => match std::fs::remove_file(&f) {
                                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                                _ => Ok(()),
                            },
                        },
                    }
                });
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(file = %file.display(), "could not clear the poison-pill slot; the node tries again");
                    ok = false;
                }
            }
            done(ok);
        });
    if spawned.is_err() {
        tracing::error!("cannot start the pill-clearing thread");
    }
}

/// What the heartbeat writers share with the node's task: the switch that stops them and the
/// counter they write (the last record of a clean stop continues it).
#[derive(Clone, Default)]
pub struct Writers {
    /// Set: writers and readers stop at their next interval.
    pub stop: Arc<AtomicBool>,
    /// The last counter written (on any path).
    pub counter: Arc<AtomicU64>,
}

/// The daemon stops on purpose: stops the writers and writes, on every path, a last record of
/// `generation` marked stopped (each write bounded by `storage.write_timeout`, all paths at
/// once). Returns, per path, whether it took the record; a path that did not is reported in the
/// log (readers there still learn the stop from the cluster's gossip).
pub fn write_stopped(
    cfg: &Arc<Config>,
    me: MemberId,
    boot: BootId,
    generation: u32,
    writers: &Writers,
) -> Vec<bool> {
    writers.stop.store(true, Ordering::SeqCst);
    let counter = writers.counter.fetch_add(1, Ordering::SeqCst) + 1;
    let record = StorageRecord {
        cluster: cfg.cluster.clone(),
        digest: cfg.digest(),
        body: StorageBody::Stopped(HeartbeatRecord {
            member: me,
            boot,
            generation,
            counter,
        }),
    };
    let Ok(bytes) = peerfence_proto::encode_storage(&record) else {
        return vec![false; cfg.storage.paths.len()];
    };
    let name = cfg.roster.name(me).to_owned();
    on_every_path(cfg, move |dir| {
        let file = slot(dir, &name, "hb");
        let written = write_record(&file, &bytes);
        if let Err(e) = &written {
            tracing::warn!(path = %file.display(), error = %e, "cannot write the clean-stop record");
        }
        written.is_ok()
    })
    .into_iter()
    .zip(&cfg.storage.paths)
    .map(|(ok, dir)| {
        ok.unwrap_or_else(|| {
            tracing::warn!(path = %dir, "the clean-stop record was not written in time");
            false
        })
    })
    .collect()
}

/// Starts the writer and reader of every shared path.
pub fn spawn(
    cfg: Arc<Config>,
    me: MemberId,
    boot: BootId,
    generation: Arc<AtomicU32>,
    tx: Sender<Msg>,
    writers: Writers,
) -> std::io::Result<()> {
    let stop = writers.stop.clone();
    for (i, dir) in cfg.storage.paths.iter().enumerate() {
        let dir = PathBuf::from(dir);
        {
            let (cfg, dir, tx, writers, generation) = (
                cfg.clone(),
                dir.clone(),
                tx.clone(),
                writers.clone(),
                generation.clone(),
            );
            std::thread::Builder::new()
                .name(format!("pf-hb-write-{i}"))
                .spawn(move || writer(cfg, i, dir, me, boot, generation, tx, writers))?;
        }
        {
            let (cfg, tx, stop) = (cfg.clone(), tx.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("pf-hb-read-{i}"))
                .spawn(move || reader(cfg, i, dir, me, tx, stop))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn writer(
    cfg: Arc<Config>,
    path: usize,
    dir: PathBuf,
    me: MemberId,
    boot: BootId,
    generation: Arc<AtomicU32>,
    tx: Sender<Msg>,
    writers: Writers,
) {
    let interval = cfg.storage.heartbeat_interval;
    let timeout = cfg.storage.write_timeout;
    let file = slot(&dir, cfg.roster.name(me), "hb");
    let abandoned = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    let stop = writers.stop.clone();
    super::checks::every(interval, &stop, || {
        // One counter for every path: each write of any path is a new value.
        let counter = writers.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let record = StorageRecord {
            cluster: cfg.cluster.clone(),
            digest: cfg.digest(),
            body: StorageBody::Heartbeat(HeartbeatRecord {
                member: me,
                boot,
                generation: generation.load(Ordering::SeqCst),
                counter,
            }),
        };
        let bytes = peerfence_proto::encode_storage(&record).unwrap_or_default();
        let target = file.clone();
        let started = Instant::now();
        let (marker_dir, cluster) = (dir.clone(), cfg.cluster.as_str().to_owned());
        // The marker first: without it this is not the shared storage, and a write that
        // "succeeds" there would be seen by nobody.
        let job = move || match check_marker(&marker_dir, &cluster) {
            Ok(()) => write_record(&target, &bytes),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, e)),
        };
        let outcome = match with_timeout(&abandoned, timeout, job) {
            Ok(Ok(())) => WriteOutcome::Ok {
                latency: started.elapsed(),
            },
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(path = %file.display(), error = %e, "heartbeat write failed");
                }
                WriteOutcome::Failed
            }
            Err(()) => {
                if !failing {
                    tracing::warn!(path = %file.display(), timeout = ?timeout, "heartbeat write did not complete in time; abandoning it");
                }
                WriteOutcome::TimedOut
            }
        };
        let ok = matches!(outcome, WriteOutcome::Ok { .. });
        if ok && failing {
            tracing::info!(path = %file.display(), "heartbeat writes work again");
        }
        failing = !ok;
        if tx
            .blocking_send(Msg::Input(Input::StorageWrite {
                path,
                outcome,
                counter,
            }))
            .is_err()
        {
            return false;
        }
        true
    });
}

fn reader(
    cfg: Arc<Config>,
    path: usize,
    dir: PathBuf,
    me: MemberId,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let interval = cfg.storage.heartbeat_interval;
    let timeout = cfg.storage.write_timeout;
    let abandoned = Arc::new(AtomicUsize::new(0));
    let mut warned = false;
    super::checks::every(interval, &stop, || {
        let (c, d) = (cfg.clone(), dir.clone());
        let cycle = with_timeout(&abandoned, timeout, move || read_cycle(&c, &d, me));
        match cycle {
            Ok(Ok(cycle)) => {
                warned = false;
                if cycle.ignored > 0 {
                    tracing::debug!(path = %dir.display(), ignored = cycle.ignored, "slot files that are not this cluster's heartbeats were ignored");
                }
                for (member, record, stopped) in cycle.records {
                    let input = Input::HeartbeatRead {
                        path,
                        member,
                        record,
                        stopped,
                    };
                    if tx.blocking_send(Msg::Input(input)).is_err() {
                        return false;
                    }
                }
                for (member, record) in cycle.foreign {
                    let input = Input::ForeignHeartbeat {
                        path,
                        member,
                        record,
                    };
                    if tx.blocking_send(Msg::Input(input)).is_err() {
                        return false;
                    }
                }
                if let Some(pill) = cycle.pill {
                    let input = Input::PoisonPillRead {
                        path,
                        pill: Some(pill),
                    };
                    if tx.blocking_send(Msg::Input(input)).is_err() {
                        return false;
                    }
                }
            }
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot read heartbeats");
                    warned = true;
                }
            }
            Err(()) => {
                if !warned {
                    tracing::warn!(path = %dir.display(), "heartbeat reads hang; abandoning them");
                    warned = true;
                }
            }
        }
        true
    });
}

/// Reads every member's slot and our own pill slot. A slot that cannot be read or decoded is
/// left out (no evidence either way); a missing slot is reported empty (evidence: never written).
fn read_cycle(cfg: &Config, dir: &Path, me: MemberId) -> std::io::Result<ReadCycle> {
    // Fail the whole cycle if the directory itself is unreachable.
    std::fs::metadata(dir)?;
    let mut out = ReadCycle {
        records: Vec::new(),
        foreign: Vec::new(),
        pill: None,
        ignored: 0,
    };
    // Our own slot too: the node checks that it reads back what it wrote.
    for m in cfg.roster.ids() {
        match read_slot(&slot(dir, cfg.roster.name(m), "hb")) {
            Ok(None) => out.records.push((m, None, false)),
            Ok(Some(bytes)) => match decode_slot(cfg, &bytes) {
                None if let Some(r) = foreign_heartbeat(cfg, &bytes, m) => out.foreign.push((m, r)),
                Some(StorageBody::Heartbeat(r)) if r.member == m => {
                    out.records.push((m, Some(r), false))
                }
                Some(StorageBody::Stopped(r)) if r.member == m => {
                    out.records.push((m, Some(r), true))
                }
                _ => out.ignored += 1,
            },
            Err(_) => out.ignored += 1,
        }
    }
    if let Ok(Some(bytes)) = read_slot(&slot(dir, cfg.roster.name(me), "pill")) {
        match decode_slot(cfg, &bytes) {
            Some(StorageBody::PoisonPill(qc)) => out.pill = Some(qc),
            _ => out.ignored += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_job_is_abandoned_and_bounded() {
        let abandoned = Arc::new(AtomicUsize::new(0));
        let ok = with_timeout(&abandoned, Duration::from_secs(5), || 42);
        assert_eq!(ok, Ok(42));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        for i in 0..MAX_ABANDONED {
            let r = release_rx.clone();
            let got = with_timeout(&abandoned, Duration::from_millis(20), move || {
                let _ = r.lock().map(|rx| rx.recv());
            });
            assert_eq!(got, Err(()), "job {i} hangs");
        }
        assert_eq!(abandoned.load(Ordering::SeqCst), MAX_ABANDONED);
        // At the bound, no new thread is started at all.
        assert_eq!(
            with_timeout(&abandoned, Duration::from_secs(5), || 1),
            Err(())
        );
        // When hung jobs finally return, they stop counting.
        for _ in 0..MAX_ABANDONED {
            release_tx.send(()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while abandoned.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn records_roundtrip_and_foreign_files_are_ignored() {
        let cfg = crate::testutil::config(3);
        let dir = std::env::temp_dir().join(format!("pf-slots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = StorageRecord {
            cluster: cfg.cluster.clone(),
            digest: cfg.digest(),
            body: StorageBody::Heartbeat(HeartbeatRecord {
                member: MemberId(1),
                boot: BootId([1; 16]),
                generation: 2,
                counter: 3,
            }),
        };
        write_record(
            &slot(&dir, "h1", "hb"),
            &peerfence_proto::encode_storage(&rec).unwrap(),
        )
        .unwrap();
        std::fs::write(slot(&dir, "h2", "hb"), b"not a heartbeat").unwrap();
        let cycle = read_cycle(&cfg, &dir, MemberId(0)).unwrap();
        // Its own (empty) slot, h1's record; h2's garbage is ignored.
        assert_eq!(cycle.records.len(), 2);
        assert_eq!(cycle.records[0], (MemberId(0), None, false));
        assert_eq!(cycle.records[1].0, MemberId(1));
        assert_eq!(cycle.ignored, 1);
        // A FIFO in a slot does not hang the reader.
        std::fs::remove_file(slot(&dir, "h2", "hb")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(slot(&dir, "h2", "hb"))
            .status()
            .unwrap();
        assert!(status.success());
        let cycle = read_cycle(&cfg, &dir, MemberId(0)).unwrap();
        assert_eq!(cycle.records.len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 10 §4: the heartbeat goes only to a path that holds this cluster's marker, made once
    /// by `peerfence storage init`, never silently.
    #[test]
    fn the_cluster_marker_is_required_and_made_explicitly() {
        let dir = std::env::temp_dir().join(format!("pf-marker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = init_marker(&dir, "prod").unwrap_err();
        assert!(err.contains("mount the shared storage first"), "{err}");
        std::fs::create_dir_all(&dir).unwrap();
        let err = check_marker(&dir, "prod").unwrap_err();
        assert!(
            err.contains("missing") && err.contains("peerfence storage init"),
            "{err}"
        );
        assert!(init_marker(&dir, "prod").unwrap().contains("written"));
        assert!(init_marker(&dir, "prod").unwrap().contains("already there"));
        check_marker(&dir, "prod").unwrap();
        let err = check_marker(&dir, "other").unwrap_err();
        assert!(err.contains("another cluster"), "{err}");
        let err = init_marker(&dir, "other").unwrap_err();
        assert!(err.contains("another cluster"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 10 §7: clearing a pill removes only the pill of the attempt it names: a retry
    /// of an older attempt's clear never deletes a newer attempt's pill.
    #[test]
    fn a_clear_removes_only_its_own_attempts_pill() {
        let mut cfg = crate::testutil::config(3);
        let dir = std::env::temp_dir().join(format!("pf-pill-clear-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        cfg.storage.paths = vec![dir.display().to_string()];
        let cfg = Arc::new(cfg);
        let proposal = |round| peerfence_proto::Proposal {
            target: MemberId(1),
            target_boot: BootId([1; 16]),
            proposer: MemberId(0),
            round: peerfence_proto::Round::new(1, round),
            kind: peerfence_proto::FenceKind::Fence,
            budget_slot: Some(0),
            lane: 0,
        };
        let qc = |round| peerfence_proto::QuorumCertificate {
            proposal: proposal(round),
            votes: vec![],
        };
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        write_pill(cfg.clone(), MemberId(1), Arc::new(qc(2)), move |ok| {
            t.send(ok).unwrap()
        });
        assert!(rx.recv().unwrap());
        let file = slot(&dir, "h1", "pill");
        // The old attempt's clear leaves the new attempt's pill alone.
        let t = tx.clone();
        clear_pill(cfg.clone(), MemberId(1), proposal(1), move |ok| {
            t.send(ok).unwrap()
        });
        assert!(rx.recv().unwrap());
        assert!(file.exists(), "attempt 2's pill stays");
        let t = tx.clone();
        clear_pill(cfg.clone(), MemberId(1), proposal(2), move |ok| {
            t.send(ok).unwrap()
        });
        assert!(rx.recv().unwrap());
        assert!(!file.exists(), "its own clear removes it");
        std::fs::remove_dir_all(&dir).ok();
    }
}
