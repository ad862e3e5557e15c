//! Records that peers exchange through shared storage rather than the network: the heartbeat
//! each host writes to its own slot on every shared path, and the poison pill a fencer writes
//! into the target's slot.

use crate::envelope::Validate;
use crate::ids::{BootId, ClusterId, ConfigDigest, MemberId};
use crate::messages::QuorumCertificate;
use serde::{Deserialize, Serialize};

/// A host's storage heartbeat. Readers never compare it with their clock: they only note, on
/// their own monotonic clock, when `counter` (or `boot`) last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    /// Writer.
    pub member: MemberId,
    /// Writer's boot; a new boot proves the previous instance is gone.
    pub boot: BootId,
    /// Writer's daemon generation. It grows with every daemon start, so it orders boots: a
    /// record from a lower generation is stale and never counts as a new boot.
    pub generation: u32,
    /// Grows with every write.
    pub counter: u64,
}

/// What one slot file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageBody {
    /// The heartbeat slot.
    Heartbeat(HeartbeatRecord),
    /// A fence request for the slot's owner, with the certificate that authorises it. The owner
    /// acts only if the certificate verifies and names its current boot.
    PoisonPill(QuorumCertificate),
    /// The slot owner's last heartbeat before its daemon stopped cleanly: its generation no
    /// longer protects the host. Readers remember that (durably) until the owner writes a
    /// heartbeat of a higher generation, so a member restarted since still knows it.
    Stopped(HeartbeatRecord),
}

/// A record on shared storage with the cluster context it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRecord {
    /// Cluster that wrote it; another cluster's record is ignored.
    pub cluster: ClusterId,
    /// Safety-configuration digest of the writer.
    pub digest: ConfigDigest,
    /// The record.
    pub body: StorageBody,
}

impl Validate for StorageRecord {
    fn validate(&self) -> Result<(), &'static str> {
        match &self.body {
            StorageBody::Heartbeat(_) | StorageBody::Stopped(_) => Ok(()),
            StorageBody::PoisonPill(qc) => qc.validate(),
        }
    }
}
