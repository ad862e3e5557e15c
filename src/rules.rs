//! The rules of DESIGN.md as pure functions: eligibility (E1–E4), target classification, and the
//! per-host HA state. No state, no time source: the node gathers the facts and calls these, and
//! the tables below pin every case.

use crate::config::Mode;
use crate::heartbeat::Liveness;
use crate::membership::SwimState;
use peerfence_proto::{BootId, RefuseReason, Verdict};
use serde::{Deserialize, Serialize};

/// The facts rule E1–E4 looks at, in this node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EligibilityFacts {
    /// Still inside the startup quiet period.
    pub initializing: bool,
    /// Lost durable state: no vote until every promise it may have made has lapsed.
    pub recovering: bool,
    /// This node's verdict (E1).
    pub verdict: Verdict,
    /// Members this node sees Alive or Suspect, itself included (E2).
    pub visible: usize,
    /// Strict majority of configured members (E2).
    pub quorum: usize,
    /// Cluster armed (E3).
    pub armed: bool,
    /// Enforce or observe (E3).
    pub mode: Mode,
    /// Storm mode (E4).
    pub storm: bool,
}

/// Why this node may not propose or vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ineligible {
    /// Startup quiet period.
    Initializing,
    /// Its durable state was lost: it waits out every promise and budget reservation it may
    /// have made before it votes again.
    Recovering,
    /// E1: not Healthy.
    Unhealthy,
    /// E2: fewer than a quorum visible.
    NoQuorum,
    /// E3: disarmed.
    Disarmed,
    /// E4: storm.
    Storm,
    /// E3: observe mode (everything else holds: this node *would* act).
    Observe,
}

impl Ineligible {
    /// The refusal a voter sends for it.
    pub fn refuse_reason(self) -> RefuseReason {
        match self {
            Ineligible::Initializing => RefuseReason::Initializing,
            Ineligible::Recovering => RefuseReason::Recovering,
            Ineligible::Unhealthy => RefuseReason::VoterUnhealthy,
            Ineligible::NoQuorum => RefuseReason::NoQuorumVisible,
            Ineligible::Disarmed => RefuseReason::Disarmed,
            Ineligible::Storm => RefuseReason::Storm,
            Ineligible::Observe => RefuseReason::ObserveMode,
        }
    }
}

/// E1–E4. Observe mode is checked last so that `Err(Observe)` means "would act".
pub fn eligibility(f: &EligibilityFacts) -> Result<(), Ineligible> {
    if f.initializing {
        return Err(Ineligible::Initializing);
    }
    if f.recovering {
        return Err(Ineligible::Recovering);
    }
    if f.verdict != Verdict::Healthy {
        return Err(Ineligible::Unhealthy);
    }
    if f.visible < f.quorum {
        return Err(Ineligible::NoQuorum);
    }
    if !f.armed {
        return Err(Ineligible::Disarmed);
    }
    if f.storm {
        return Err(Ineligible::Storm);
    }
    if f.mode == Mode::Observe {
        return Err(Ineligible::Observe);
    }
    Ok(())
}

/// What this node knows about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetFacts {
    /// SWIM state (a member never heard of since the quiet period ended counts as Down).
    pub swim: SwimState,
    /// Storage heartbeat liveness.
    pub storage: Liveness,
    /// The heartbeat advanced after SWIM declared the target Down (it runs, it is cut off).
    pub heartbeat_after_down: bool,
    /// The target reports its management agent dead.
    pub agent_dead: bool,
    /// In maintenance.
    pub maintenance: bool,
    /// Its daemon left cleanly and has not returned.
    pub left: bool,
    /// Its current boot as known here.
    pub boot: Option<BootId>,
    /// Its boot last confirmed fenced.
    pub fenced_boot: Option<BootId>,
}

/// The target's condition, decided from [`TargetFacts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetClass {
    /// Maintenance: never fenced.
    Exempt,
    /// Its daemon stopped cleanly and has not returned: never fenced for its silence.
    Left,
    /// Already fenced in its current boot.
    AlreadyFenced,
    /// Active and storage-alive (or not yet judged).
    Available,
    /// Agent dead, storage alive: restart the agent, never its VMs elsewhere.
    Unmanageable,
    /// Suspected by SWIM.
    Suspect,
    /// Down in SWIM but storage-alive: partitioned, not dead. Never fenced.
    Partitioned,
    /// Down in SWIM, storage not (yet) known stalled.
    Checking,
    /// Down in SWIM and storage stalled, but no boot id known to name in a fence.
    NoBoot,
    /// Down in SWIM and storage stalled: may be fenced.
    Fenceable,
}

/// Classifies a target. The order is the order of the rules in DESIGN.md.
pub fn classify(f: &TargetFacts) -> TargetClass {
    if f.maintenance {
        return TargetClass::Exempt;
    }
    if f.left {
        return TargetClass::Left;
    }
    if f.boot.is_some() && f.boot == f.fenced_boot {
        return TargetClass::AlreadyFenced;
    }
    let storage_alive = f.storage == Liveness::Alive;
    match f.swim {
        SwimState::Alive | SwimState::Suspect | SwimState::Unknown
            if f.agent_dead && storage_alive =>
        {
            TargetClass::Unmanageable
        }
        SwimState::Alive | SwimState::Unknown => TargetClass::Available,
        SwimState::Suspect => TargetClass::Suspect,
        SwimState::Down => match f.storage {
            Liveness::Alive if f.heartbeat_after_down => TargetClass::Partitioned,
            // Alive only because the last change is recent: it may just have died. Not fenceable
            // (not stalled), but not known partitioned either.
            Liveness::Alive => TargetClass::Checking,
            Liveness::Unknown => TargetClass::Checking,
            Liveness::Stalled { .. } if f.boot.is_none() => TargetClass::NoBoot,
            Liveness::Stalled { .. } => TargetClass::Fenceable,
        },
    }
}

/// The refusal for a fence proposal against a target of this class (None: fenceable).
pub fn refusal_for(class: TargetClass) -> Option<RefuseReason> {
    match class {
        TargetClass::Fenceable => None,
        TargetClass::Exempt => Some(RefuseReason::TargetInMaintenance),
        TargetClass::Left => Some(RefuseReason::TargetLeft),
        TargetClass::AlreadyFenced => Some(RefuseReason::TargetAlreadyFenced),
        TargetClass::Available | TargetClass::Unmanageable | TargetClass::Suspect => {
            Some(RefuseReason::TargetNotDown)
        }
        TargetClass::Partitioned => Some(RefuseReason::TargetStorageAlive),
        TargetClass::Checking => Some(RefuseReason::TargetStorageUnknown),
        TargetClass::NoBoot => Some(RefuseReason::TargetBootMismatch),
    }
}

/// Per-host HA state as this node reports it (the CloudStack HA design's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HaState {
    /// This node is in its startup quiet period.
    Initializing,
    /// Up and storage-alive.
    Available,
    /// SWIM suspects it.
    Suspect,
    /// Down; checking the second signal or waiting for agreement.
    Checking,
    /// A fence (or a VM-stopping self-fence) is in flight.
    Fencing,
    /// Fenced and confirmed in its current boot.
    Fenced,
    /// Down in SWIM but storage-alive.
    Partitioned,
    /// Management agent dead, storage alive.
    Unmanageable,
    /// The last attempt failed; retrying with back-off.
    FenceFailed,
    /// Attempts exhausted; an operator must act.
    Failed,
    /// Maintenance.
    Ineligible,
    /// Its daemon was stopped cleanly and has not come back: peerfence no longer protects the
    /// host, so it is never fenced for its silence (only an operator's explicit fence may).
    Left,
    /// The cluster is disarmed.
    Disabled,
    /// Up and storage-alive, but the last `monitor` of one of its fence devices failed: a
    /// failure now could not be fenced by that level. Said before a failure happens.
    FenceDeviceDown,
}

/// What decides the HA state besides the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaFacts {
    /// Target class.
    pub class: TargetClass,
    /// Cluster armed.
    pub armed: bool,
    /// This node is in its quiet period.
    pub initializing: bool,
    /// A fence or VM-stopping self-fence is in flight for it.
    pub fencing: bool,
    /// Attempts exhausted.
    pub failed: bool,
    /// Waiting for a retry after a failed attempt.
    pub retry_pending: bool,
    /// The last `monitor` of one of its fence devices failed (as this node's driver saw it).
    pub device_down: bool,
}

/// The HA state.
pub fn ha_state(f: &HaFacts) -> HaState {
    if f.class == TargetClass::Exempt {
        return HaState::Ineligible;
    }
    if f.class == TargetClass::Left {
        return HaState::Left;
    }
    if f.class == TargetClass::AlreadyFenced {
        return HaState::Fenced;
    }
    if f.fencing {
        return HaState::Fencing;
    }
    if !f.armed {
        return HaState::Disabled;
    }
    if f.initializing {
        return HaState::Initializing;
    }
    let down = matches!(
        f.class,
        TargetClass::Checking | TargetClass::Fenceable | TargetClass::NoBoot
    );
    if down && f.failed {
        return HaState::Failed;
    }
    if down && f.retry_pending {
        return HaState::FenceFailed;
    }
    match f.class {
        TargetClass::Available if f.device_down => HaState::FenceDeviceDown,
        TargetClass::Available => HaState::Available,
        TargetClass::Unmanageable => HaState::Unmanageable,
        TargetClass::Suspect => HaState::Suspect,
        TargetClass::Partitioned => HaState::Partitioned,
        TargetClass::Checking | TargetClass::Fenceable | TargetClass::NoBoot => HaState::Checking,
        TargetClass::Exempt => HaState::Ineligible,
        TargetClass::Left => HaState::Left,
        TargetClass::AlreadyFenced => HaState::Fenced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Instant;

    fn facts() -> EligibilityFacts {
        EligibilityFacts {
            initializing: false,
            recovering: false,
            verdict: Verdict::Healthy,
            visible: 3,
            quorum: 3,
            armed: true,
            mode: Mode::Enforce,
            storm: false,
        }
    }

    #[test]
    fn eligibility_table() {
        use Ineligible::*;
        let cases: Vec<(&str, EligibilityFacts, Result<(), Ineligible>)> = vec![
            ("all hold", facts(), Ok(())),
            (
                "quiet period",
                EligibilityFacts {
                    initializing: true,
                    ..facts()
                },
                Err(Initializing),
            ),
            (
                "E1 unhealthy",
                EligibilityFacts {
                    verdict: Verdict::Unhealthy,
                    ..facts()
                },
                Err(Unhealthy),
            ),
            (
                "E2 minority",
                EligibilityFacts {
                    visible: 2,
                    ..facts()
                },
                Err(NoQuorum),
            ),
            (
                "E3 disarmed",
                EligibilityFacts {
                    armed: false,
                    ..facts()
                },
                Err(Disarmed),
            ),
            (
                "E4 storm",
                EligibilityFacts {
                    storm: true,
                    ..facts()
                },
                Err(Storm),
            ),
            (
                "observe",
                EligibilityFacts {
                    mode: Mode::Observe,
                    ..facts()
                },
                Err(Observe),
            ),
            (
                "unhealthy beats observe",
                EligibilityFacts {
                    mode: Mode::Observe,
                    verdict: Verdict::Unhealthy,
                    ..facts()
                },
                Err(Unhealthy),
            ),
            (
                "storm beats observe: a storm is never 'would fence'",
                EligibilityFacts {
                    mode: Mode::Observe,
                    storm: true,
                    ..facts()
                },
                Err(Storm),
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(eligibility(&f), want, "{name}");
        }
    }

    fn target() -> TargetFacts {
        TargetFacts {
            swim: SwimState::Down,
            storage: Liveness::Stalled {
                since: Instant::ZERO,
            },
            heartbeat_after_down: false,
            agent_dead: false,
            maintenance: false,
            left: false,
            boot: Some(BootId([1; 16])),
            fenced_boot: None,
        }
    }

    #[test]
    fn classification_table() {
        use TargetClass::*;
        let b1 = Some(BootId([1; 16]));
        let b2 = Some(BootId([2; 16]));
        let cases: Vec<(&str, TargetFacts, TargetClass)> = vec![
            ("down and stalled", target(), Fenceable),
            (
                "down, heartbeat moved since: partitioned",
                TargetFacts {
                    storage: Liveness::Alive,
                    heartbeat_after_down: true,
                    ..target()
                },
                Partitioned,
            ),
            (
                "down, last beat recent but none since: checking, not fenceable",
                TargetFacts {
                    storage: Liveness::Alive,
                    ..target()
                },
                Checking,
            ),
            (
                "down, storage unknown",
                TargetFacts {
                    storage: Liveness::Unknown,
                    ..target()
                },
                Checking,
            ),
            (
                "maintenance",
                TargetFacts {
                    maintenance: true,
                    ..target()
                },
                Exempt,
            ),
            (
                "left cleanly",
                TargetFacts {
                    left: true,
                    ..target()
                },
                Left,
            ),
            (
                "fenced this boot",
                TargetFacts {
                    fenced_boot: b1,
                    ..target()
                },
                AlreadyFenced,
            ),
            (
                "fenced an earlier boot",
                TargetFacts {
                    fenced_boot: b2,
                    ..target()
                },
                Fenceable,
            ),
            (
                "no boot known",
                TargetFacts {
                    boot: None,
                    ..target()
                },
                NoBoot,
            ),
            (
                "alive",
                TargetFacts {
                    swim: SwimState::Alive,
                    storage: Liveness::Alive,
                    ..target()
                },
                Available,
            ),
            (
                "alive, storage stalled: not down",
                TargetFacts {
                    swim: SwimState::Alive,
                    ..target()
                },
                Available,
            ),
            (
                "suspect",
                TargetFacts {
                    swim: SwimState::Suspect,
                    ..target()
                },
                Suspect,
            ),
            (
                "agent dead, storage alive: unmanageable",
                TargetFacts {
                    swim: SwimState::Alive,
                    storage: Liveness::Alive,
                    agent_dead: true,
                    ..target()
                },
                Unmanageable,
            ),
            (
                "agent dead but down and stalled: really dead",
                TargetFacts {
                    agent_dead: true,
                    ..target()
                },
                Fenceable,
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(classify(&f), want, "{name}");
        }
    }

    #[test]
    fn only_fenceable_targets_get_votes() {
        use TargetClass::*;
        for class in [
            Exempt,
            AlreadyFenced,
            Available,
            Unmanageable,
            Suspect,
            Partitioned,
            Checking,
            NoBoot,
        ] {
            assert!(refusal_for(class).is_some(), "{class:?}");
        }
        assert_eq!(refusal_for(Fenceable), None);
    }

    #[test]
    fn ha_state_table() {
        let base = HaFacts {
            class: TargetClass::Fenceable,
            armed: true,
            initializing: false,
            fencing: false,
            failed: false,
            retry_pending: false,
            device_down: false,
        };
        let cases = vec![
            ("checking", base, HaState::Checking),
            (
                "fencing",
                HaFacts {
                    fencing: true,
                    ..base
                },
                HaState::Fencing,
            ),
            (
                "disarmed",
                HaFacts {
                    armed: false,
                    ..base
                },
                HaState::Disabled,
            ),
            (
                "retry pending",
                HaFacts {
                    retry_pending: true,
                    ..base
                },
                HaState::FenceFailed,
            ),
            (
                "attempts exhausted",
                HaFacts {
                    failed: true,
                    retry_pending: true,
                    ..base
                },
                HaState::Failed,
            ),
            (
                "fenced",
                HaFacts {
                    class: TargetClass::AlreadyFenced,
                    ..base
                },
                HaState::Fenced,
            ),
            (
                "maintenance",
                HaFacts {
                    class: TargetClass::Exempt,
                    fencing: true,
                    ..base
                },
                HaState::Ineligible,
            ),
            (
                "partitioned",
                HaFacts {
                    class: TargetClass::Partitioned,
                    ..base
                },
                HaState::Partitioned,
            ),
            (
                "unmanageable",
                HaFacts {
                    class: TargetClass::Unmanageable,
                    ..base
                },
                HaState::Unmanageable,
            ),
            (
                "a fence device that is down is said before a failure",
                HaFacts {
                    class: TargetClass::Available,
                    device_down: true,
                    ..base
                },
                HaState::FenceDeviceDown,
            ),
            (
                "a dead host with its device down is still checked and fenced",
                HaFacts {
                    device_down: true,
                    ..base
                },
                HaState::Checking,
            ),
            (
                "quiet period",
                HaFacts {
                    initializing: true,
                    ..base
                },
                HaState::Initializing,
            ),
            (
                "failed host that is back up is available",
                HaFacts {
                    class: TargetClass::Available,
                    failed: true,
                    ..base
                },
                HaState::Available,
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(ha_state(&f), want, "{name}");
        }
    }
}
