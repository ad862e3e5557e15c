//! The durable state on disk: `DATA_DIR/state` written crash-safely.
//!
//! A save writes `state.tmp`, fsyncs it, renames it over `state` and fsyncs the directory, so
//! that after a crash at any instant the file is either the previous state or the new one, never
//! a mixture: `kill -9` never loses an acknowledged promise or fence record. The file carries a
//! magic, its length and a checksum, so a damaged file is refused with an explanation instead of
//! loaded (a node that forgot its promises could vote twice).

use crate::durable::DurableState;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PFSTATE1";

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
}

/// The state file of one member.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
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
        let tmp = self.dir.join("state.tmp");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(io(&self.path()))?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
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
}
