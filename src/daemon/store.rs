//! The durable state on disk: `DATA_DIR/state` written crash-safely.
//!
//! A save writes `state.tmp`, fsyncs it, renames it over `state` and fsyncs the directory, so
//! that after a crash at any instant the file is either the previous state or the new one, never
//! a mixture: `kill -9` never loses an acknowledged promise or fence record. The file carries a
//! magic, its length and a checksum, so a damaged file is refused with an explanation instead of
//! loaded (a node that forgot its promises could vote twice).
//!
//! A first start is explicit: `peerfence init` ([`init`]) writes the state and a marker of its
//! own, `DATA_DIR/initialized`. `peerfence run` refuses a data directory without either, and
//! one whose marker outlived its state (a wiped or replaced disk, a deleted file): starting from
//! nothing there would forget promises. `init` recovers such a member safely, above the
//! generation its heartbeat slot on the shared storage shows.

use super::config::DaemonConfig;
use crate::durable::{DurableState, RECOVER_GENERATION_MARGIN};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PFSTATE1";

/// The data directory's own marker: `peerfence init` ran here.
pub const INIT_MARKER: &str = "initialized";

/// The marker's content for `member` of `cluster`.
fn marker_text(cluster: &str, member: &str) -> String {
    format!("peerfence data directory v1\ncluster = {cluster}\nmember = {member}\n")
}

/// A durable-state problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// IO failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged.
    #[error(
        "{path}: durable state is damaged ({what}). Do not simply delete it: it holds this member's promises. Move it aside and start this member only after the longest promise lifetime (see `peerfence check-config`) has passed"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `peerfence run` on a data directory that `peerfence init` never made.
    #[error(
        "{dir} holds no peerfence state ({dir}/{INIT_MARKER} and {dir}/state are missing): a first start is explicit. Run `peerfence init --config FILE` once on this host (it also notices, from this host's heartbeat slot on the shared storage, whether it ran before and then recovers safely), then `peerfence run` again"
    )]
    Uninitialized {
        /// The data directory.
        dir: PathBuf,
    },
    /// The marker says `init` ran, but the state file is gone.
    #[error(
        "{path} is missing, but {marker} says this data directory was initialised: this member's durable state was lost (a wiped or replaced disk, a deleted file). Starting from nothing could break promises it made before (it could vote twice for a fence). Run `peerfence init --config FILE`: it recovers safely, above the generation this host's heartbeat slot on the shared storage shows, and the member votes for nothing until its old promises have lapsed"
    )]
    Lost {
        /// The missing state file.
        path: PathBuf,
        /// The marker.
        marker: PathBuf,
    },
    /// The marker names another member or cluster.
    #[error(
        "{marker} says {found:?}, but this configuration is member {member} of cluster {cluster}: node.data_dir must be this member's own directory (another member's state holds that member's promises)"
    )]
    Foreign {
        /// The marker.
        marker: PathBuf,
        /// What it says (one line).
        found: String,
        /// This member.
        member: String,
        /// This cluster.
        cluster: String,
    },
    /// `peerfence init` where a state already is.
    #[error(
        "{path} already exists: this data directory is initialised, nothing to do (`peerfence run` uses it). init never overwrites a state: it holds this member's promises"
    )]
    AlreadyInitialized {
        /// The state file.
        path: PathBuf,
    },
    /// `peerfence init` could read no storage path.
    #[error(
        "no storage path could be read, so the generation this host last used cannot be recovered:{reasons}\nIf this host ran before, a state started without it could be taken by its peers for an older incarnation of this member, and nothing would show that it must wait out the promises it made then. Mount the shared storage (and run `peerfence storage init --config FILE` if the cluster is new), then run init again; only for a host that never ran peerfence in this cluster, pass --no-storage"
    )]
    NoStorage {
        /// One line per path, each starting with a newline.
        reasons: String,
    },
}

/// The state file of one member.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    /// Uses `data_dir` as it is (`peerfence run`: it never creates a data directory).
    pub fn at(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.to_owned(),
        }
    }

    /// Uses `data_dir` (created with mode 0700 if missing).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| StoreError::Io {
                path: data_dir.to_owned(),
                source,
            })?;
        Ok(Self {
            dir: data_dir.to_owned(),
        })
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The data directory's marker (`peerfence init` ran here).
    pub fn marker_path(&self) -> PathBuf {
        self.dir.join(INIT_MARKER)
    }

    /// Whether the marker is there and names `member` of `cluster`: `Ok(false)` when there is
    /// none, an error when it names another.
    fn check_marker(&self, cluster: &str, member: &str) -> Result<bool, StoreError> {
        let marker = self.marker_path();
        let text = match std::fs::read(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(StoreError::Io {
                    path: marker,
                    source,
                });
            }
        };
        if text == marker_text(cluster, member).as_bytes() {
            return Ok(true);
        }
        let found: String = String::from_utf8_lossy(&text)
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join(", ")
            .chars()
            .take(200)
            .collect();
        Err(StoreError::Foreign {
            marker,
            found,
            member: member.to_owned(),
            cluster: cluster.to_owned(),
        })
    }

    /// Writes the marker durably (file and directory synced).
    fn write_marker(&self, cluster: &str, member: &str) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{INIT_MARKER}.tmp"));
        self.replace_durably(
            &tmp,
            &self.marker_path(),
            marker_text(cluster, member).as_bytes(),
        )
    }

    /// `peerfence run`: the state `peerfence init` made and the daemon has saved since. Refuses
    /// a data directory never initialised, one whose state was lost, and one of another member.
    /// A state from before `peerfence init` existed (no marker) is loaded and gets its marker,
    /// so that its loss is noticed from now on.
    pub fn load_initialized(
        &self,
        cluster: &str,
        member: &str,
    ) -> Result<DurableState, StoreError> {
        let marked = if self.dir.is_dir() {
            self.check_marker(cluster, member)?
        } else {
            false
        };
        match self.load()? {
            Some(state) => {
                if !marked {
                    self.write_marker(cluster, member)?;
                }
                Ok(state)
            }
            None if marked => Err(StoreError::Lost {
                path: self.path(),
                marker: self.marker_path(),
            }),
            None => Err(StoreError::Uninitialized {
                dir: self.dir.clone(),
            }),
        }
    }

    /// Loads the last saved state; `None` if this member never saved one.
    pub fn load(&self) -> Result<Option<DurableState>, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let damaged = |what: &str| StoreError::Damaged {
            path: path.clone(),
            what: what.into(),
        };
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(damaged("not a peerfence state file"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()) as usize;
        let body = &bytes[24..];
        if body.len() != len {
            return Err(damaged("truncated"));
        }
        if bytes[16..24] != Sha256::digest(body)[..8] {
            return Err(damaged("checksum mismatch"));
        }
        DurableState::decode(body)
            .map(Some)
            .map_err(|e| damaged(&e.to_string()))
    }

    /// Saves `state`; returns once it is durable.
    pub fn save(&self, state: &DurableState) -> Result<(), StoreError> {
        let body = state.encode();
        let mut bytes = Vec::with_capacity(body.len() + 24);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&body)[..8]);
        bytes.extend_from_slice(&body);
        self.replace_durably(&self.dir.join("state.tmp"), &self.path(), &bytes)
    }

    /// Writes `bytes` to `tmp` (mode 0600), syncs it, renames it over `target` and syncs the
    /// directory: `target` holds either its old content or all of `bytes`, durably.
    fn replace_durably(&self, tmp: &Path, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io(tmp))?;
        f.write_all(bytes).map_err(io(tmp))?;
        f.sync_all().map_err(io(tmp))?;
        drop(f);
        std::fs::rename(tmp, target).map_err(io(target))?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

/// `peerfence init --config FILE [--no-storage]`: creates this member's state in `node.data_dir`
/// (its marker too), fresh, or recovered when this host ran before. Returns what it did, line by
/// line, for the operator.
///
/// This host ran before when its own heartbeat slot on a shared path holds a record (or the
/// data directory's marker is left from an earlier init): then its state was lost, and it
/// starts above the highest generation found plus [`RECOVER_GENERATION_MARGIN`] (a generation
/// may have run too briefly to reach the slot), voting for nothing until whatever it promised
/// then has lapsed and its peers' fence news arrived (the core's `Ineligible::Recovering`).
pub fn init(cfg: &DaemonConfig, no_storage: bool) -> Result<Vec<String>, StoreError> {
    let cluster = cfg.core.cluster.as_str();
    let member = cfg.core.roster.name(cfg.me);
    let file = StateFile::open(&cfg.data_dir)?;
    let path = file.path();
    match std::fs::symlink_metadata(&path) {
        Ok(_) => return Err(StoreError::AlreadyInitialized { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(StoreError::Io { path, source }),
    }
    let marked = file.check_marker(cluster, member)?;
    let mut lines = Vec::new();
    let mut readable = 0;
    let mut reasons = String::new();
    let mut highest: Option<(u32, PathBuf)> = None;
    // Evidence that this host ran, without its generation.
    let mut unknown = marked.then(|| file.marker_path());
    for (slot, found) in super::storage::own_slots(&cfg.core, cfg.me) {
        match found {
            Ok(super::storage::OwnSlot::Empty) => {
                readable += 1;
                lines.push(format!(
                    "{}: no heartbeat of {member} there",
                    slot.display()
                ));
            }
            Ok(super::storage::OwnSlot::Record {
                generation,
                stopped,
            }) => {
                readable += 1;
                lines.push(format!(
                    "{}: {member} ran before, generation {generation} ({})",
                    slot.display(),
                    if stopped {
                        "stopped cleanly"
                    } else {
                        "last heartbeat"
                    }
                ));
                if highest.as_ref().is_none_or(|(g, _)| generation > *g) {
                    highest = Some((generation, slot));
                }
            }
            Ok(super::storage::OwnSlot::Foreign) => {
                // Something is in this host's slot, yet no record of this cluster: a write torn
                // by a crash, say. It ran here, how far is not known.
                readable += 1;
                unknown = Some(slot.clone());
                lines.push(format!(
                    "{}: holds no heartbeat record of cluster {cluster} that can be read",
                    slot.display()
                ));
            }
            Err(why) => {
                lines.push(format!("{}: cannot be used: {why}", slot.display()));
                reasons.push_str(&format!("\n  {why}"));
            }
        }
    }
    if readable == 0 {
        if !no_storage {
            return Err(StoreError::NoStorage { reasons });
        }
        lines.push(
            "--no-storage: no storage path could be read, so this host's last generation is not known"
                .into(),
        );
    }
    let ttl = crate::config::fmt_duration(cfg.core.promise_ttl());
    let state = match (highest, unknown) {
        (Some((g, slot)), _) => {
            let generation = g.saturating_add(RECOVER_GENERATION_MARGIN);
            lines.push(format!(
                "{member} ran before (generation {g} in {}): its state was lost; recovering above generation {generation} ({g} + {RECOVER_GENERATION_MARGIN}). It votes for nothing until its old promises have lapsed (promise lifetime {ttl}) and its peers' fence news has arrived",
                slot.display()
            ));
            DurableState::recovered(generation)
        }
        (None, Some(evidence)) => {
            lines.push(format!(
                "{} shows that {member} ran before, but no heartbeat slot shows its generation: its state was lost; recovering above generation {RECOVER_GENERATION_MARGIN}. It votes for nothing until its old promises have lapsed (promise lifetime {ttl}) and its peers' fence news has arrived",
                evidence.display()
            ));
            DurableState::recovered(RECOVER_GENERATION_MARGIN)
        }
        (None, None) => {
            lines.push(format!(
                "{member} starts fresh (its first run is generation 1)"
            ));
            DurableState::new()
        }
    };
    // The state before the marker: a crash in between leaves a state `run` accepts (and marks).
    file.save(&state)?;
    lines.push(format!("wrote {}", path.display()));
    if !marked {
        file.write_marker(cluster, member)?;
        lines.push(format!("wrote {}", file.marker_path().display()));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_damage() {
        let dir = std::env::temp_dir().join(format!("pf-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = StateFile::open(&dir).unwrap();
        assert!(f.load().unwrap().is_none());
        let mut s = DurableState::new();
        s.generation = 7;
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), Some(s.clone()));
        s.generation = 8;
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap().unwrap().generation, 8);
        let mut bytes = std::fs::read(f.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(f.path(), &bytes).unwrap();
        let err = f.load().unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("promise lifetime"),
            "{err}"
        );
        std::fs::write(f.path(), &bytes[..20]).unwrap();
        assert!(f.load().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `run` starts only from a state `init` made: never from nothing, never after a loss.
    #[test]
    fn run_loads_only_an_initialised_state() {
        let dir = std::env::temp_dir().join(format!("pf-store-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = StateFile::at(&dir);
        let err = f.load_initialized("c", "h1").unwrap_err();
        assert!(matches!(err, StoreError::Uninitialized { .. }), "{err}");
        assert!(!dir.exists(), "run creates nothing");
        // A state from before `init` existed is loaded and gets its marker.
        let f = StateFile::open(&dir).unwrap();
        let mut s = DurableState::new();
        s.generation = 3;
        f.save(&s).unwrap();
        assert_eq!(f.load_initialized("c", "h1").unwrap().generation, 3);
        assert_eq!(
            std::fs::read_to_string(f.marker_path()).unwrap(),
            marker_text("c", "h1")
        );
        // Lost: the marker is there, the state is not.
        std::fs::remove_file(f.path()).unwrap();
        let err = f.load_initialized("c", "h1").unwrap_err();
        assert!(matches!(err, StoreError::Lost { .. }), "{err}");
        assert!(
            err.to_string().contains("peerfence init --config FILE"),
            "{err}"
        );
        // Another member's directory.
        f.save(&s).unwrap();
        let err = f.load_initialized("c", "h2").unwrap_err();
        assert!(
            err.to_string()
                .contains("says \"cluster = c, member = h1\", but this configuration is member h2"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
