//! `GET /metrics`: Prometheus/OpenMetrics text through the `prometheus-client` crate.
//!
//! Two kinds of series. Those the shell observes as things happen (events by kind, fences by
//! outcome, fence-agent and storage-write latencies, health-check results, API actions and
//! refused credentials) live in the registry's families. Those the node and the transport
//! already count (member states, quorum, messages and bytes, drops, votes) are read from one
//! status snapshot taken at scrape time, so the two views can never disagree. Every label value
//! is a member name, a level name or a fixed word: the series count is bounded by the roster.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::{Arc, Mutex};

type Labels = Vec<(&'static str, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s: storage writes are milliseconds, fence agents seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    snapshot: Arc<Snapshot>,
    /// Events by kind.
    pub events: Family<Labels, Counter>,
    /// Fences executed here by outcome (`confirmed`, `failed`, `aborted`).
    pub fences: Family<Labels, Counter>,
    /// Fence agent calls (`level`, `action`, `result`) and their duration.
    pub agent_seconds: Hist,
    /// Storage heartbeat writes (`path`, `result`) and their duration.
    pub storage_write_seconds: Hist,
    /// Health checks (`check`: `agent`, `isolation`, `exec:NAME`; `result`) and their duration.
    pub check_seconds: Hist,
    /// Accepted API actions (`action`).
    pub api_actions: Family<Labels, Counter>,
    /// Requests refused for a missing or wrong credential.
    pub api_auth_failures: Counter,
}

/// The status view last read, encoded at scrape time.
#[derive(Debug, Default)]
struct Snapshot(Mutex<Value>);

impl Metrics {
    /// Builds the registry.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("peerfence");
        let events = Family::<Labels, Counter>::default();
        registry.register("events", "Events by kind (see docs/API.md)", events.clone());
        let fences = Family::<Labels, Counter>::default();
        registry.register(
            "fences",
            "Fence attempts executed by this host, by outcome",
            fences.clone(),
        );
        let agent_seconds: Hist = Family::new_with_constructor(latency_histogram);
        registry.register(
            "fence_agent_duration_seconds",
            "Fence agent calls by level, action and result",
            agent_seconds.clone(),
        );
        let storage_write_seconds: Hist = Family::new_with_constructor(latency_histogram);
        registry.register(
            "storage_write_duration_seconds",
            "Storage heartbeat writes (the storage health check) by path and result",
            storage_write_seconds.clone(),
        );
        let check_seconds: Hist = Family::new_with_constructor(latency_histogram);
        registry.register(
            "health_check_duration_seconds",
            "Agent, isolation and exec health checks by check and result",
            check_seconds.clone(),
        );
        let api_actions = Family::<Labels, Counter>::default();
        registry.register(
            "api_actions",
            "Accepted authenticated API actions",
            api_actions.clone(),
        );
        let api_auth_failures = Counter::default();
        registry.register(
            "api_auth_failures",
            "API requests refused for a missing or wrong credential",
            api_auth_failures.clone(),
        );
        let snapshot = Arc::new(Snapshot::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Arc::new(Self {
            registry,
            snapshot,
            events,
            fences,
            agent_seconds,
            storage_write_seconds,
            check_seconds,
            api_actions,
            api_auth_failures,
        })
    }

    /// Encodes everything, with `status` (the `GET /v1/cluster` document) as the snapshot.
    pub fn encode(&self, status: Value) -> String {
        *self.snapshot.0.lock().unwrap_or_else(|p| p.into_inner()) = status;
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One label.
pub fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

struct Enc<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Enc<'_, '_> {
    fn gauge(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) -> std::fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        let g = ConstGauge::new(0.0f64);
        let mut m = self
            .0
            .encode_descriptor(name, help, None, g.metric_type())?;
        if let [(labels, v)] = rows
            && labels.is_empty()
        {
            // A single unlabelled value: `name 3`, not `name{} 3`.
            return ConstGauge::new(*v).encode(m);
        }
        for (labels, v) in rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> std::fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        let c = ConstCounter::new(0u64);
        let mut m = self
            .0
            .encode_descriptor(name, help, None, c.metric_type())?;
        for (labels, v) in rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The HA states, for one series per state (1 for the current one).
const HA_STATES: &[&str] = &[
    "initializing",
    "available",
    "suspect",
    "checking",
    "fencing",
    "fenced",
    "partitioned",
    "unmanageable",
    "fence_failed",
    "failed",
    "ineligible",
    "disabled",
    "fence_device_down",
];
const SWIM_STATES: &[&str] = &["unknown", "alive", "suspect", "down"];

fn map_rows(v: &Value, key: &'static str) -> Vec<(Labels, u64)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| Some((label(key, k.clone()), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = Enc(&mut encoder);
        let summary = &s["summary"];
        let one = |k: &str| {
            num(&summary[k])
                .map(|v| vec![(Labels::new(), v)])
                .unwrap_or_default()
        };
        e.gauge("quorum_size", "Votes needed to fence", &one("quorum"))?;
        e.gauge(
            "members_visible",
            "Members alive or suspect in this node's view, itself included",
            &one("visible"),
        )?;
        e.gauge(
            "eligible",
            "1 when this node may propose and vote",
            &one("eligible"),
        )?;
        e.gauge("armed", "1 when the cluster is armed", &one("armed"))?;
        e.gauge(
            "storm",
            "1 while storm mode holds every fence",
            &one("storm"),
        )?;
        e.gauge(
            "fence_budget_used",
            "Fence budget slots used in the current window",
            &one("budget_used"),
        )?;
        e.gauge(
            "fence_budget_left",
            "Fence budget slots left in the current window",
            &one("budget_left"),
        )?;
        let inflight = summary["fences_in_flight"]
            .as_array()
            .map(|a| a.len() as f64)
            .unwrap_or(0.0);
        e.gauge(
            "fences_in_flight",
            "Fences in flight (run here or learnt)",
            &[(Labels::new(), inflight)],
        )?;
        let members = s["members"].as_array().cloned().unwrap_or_default();
        let mut ha = Vec::new();
        let mut swim = Vec::new();
        let mut age = Vec::new();
        for m in &members {
            let name = m["name"].as_str().unwrap_or("?").to_owned();
            for st in HA_STATES {
                let on = m["ha"].as_str() == Some(st);
                ha.push((
                    vec![("member", name.clone()), ("state", (*st).to_owned())],
                    f64::from(u8::from(on)),
                ));
            }
            for st in SWIM_STATES {
                let on = m["swim"].as_str() == Some(st);
                swim.push((
                    vec![("member", name.clone()), ("state", (*st).to_owned())],
                    f64::from(u8::from(on)),
                ));
            }
            if let Some(ms) = m["heartbeat_age_ms"].as_f64() {
                age.push((label("member", name.clone()), ms / 1000.0));
            }
        }
        e.gauge(
            "member_ha_state",
            "1 for each member's current HA state",
            &ha,
        )?;
        e.gauge(
            "member_swim_state",
            "1 for each member's current gossip state",
            &swim,
        )?;
        e.gauge(
            "member_heartbeat_age_seconds",
            "Seconds since each member's storage heartbeat last changed",
            &age,
        )?;
        let msgs = &s["messages"];
        e.counter(
            "messages_received",
            "Messages received by kind",
            &map_rows(&msgs["received"], "kind"),
        )?;
        e.counter(
            "messages_sent",
            "Messages sent by kind",
            &map_rows(&msgs["sent"], "kind"),
        )?;
        e.counter(
            "messages_dropped",
            "Inputs dropped by reason (forged_sender, bad_certificate, bad_news_certificate, bad_outcome_signature and outcome_without_certificate are forgeries)",
            &map_rows(&msgs["dropped"], "reason"),
        )?;
        let votes: Vec<(Labels, u64)> =
            [("granted", "votes_granted"), ("refused", "votes_refused")]
                .iter()
                .filter_map(|(l, k)| Some((label("result", *l), msgs[*k].as_u64()?)))
                .collect();
        e.counter("votes", "Votes this node gave or refused", &votes)?;
        let t = &s["transport"];
        let rows = |keys: &[(&str, &'static str)]| -> Vec<(Labels, u64)> {
            keys.iter()
                .filter_map(|(k, dir)| Some((label("direction", *dir), t[*k].as_u64()?)))
                .collect()
        };
        e.counter(
            "gossip_packets",
            "QUIC datagrams (SWIM gossip and probes) in and out",
            &rows(&[("datagrams_in", "in"), ("datagrams_out", "out")]),
        )?;
        e.counter(
            "gossip_bytes",
            "UDP bytes in and out (all QUIC traffic)",
            &rows(&[("udp_bytes_in", "in"), ("udp_bytes_out", "out")]),
        )?;
        e.counter(
            "reliable_streams",
            "QUIC streams (agreement messages) in and out",
            &rows(&[("streams_in", "in"), ("streams_out", "out")]),
        )?;
        let drops: Vec<(Labels, u64)> = [
            "dropped_no_connection",
            "dropped_reliable",
            "dropped_inbox_full",
            "handshakes_refused",
            "connect_failures",
        ]
        .iter()
        .filter_map(|k| Some((label("reason", *k), t[*k].as_u64()?)))
        .collect();
        e.counter(
            "transport_dropped",
            "Transport-level drops and refusals",
            &drops,
        )?;
        let mut hooks = Vec::new();
        if let Some(m) = s["hooks"].as_object() {
            for (name, h) in m {
                for result in ["delivered", "failed", "dropped"] {
                    if let Some(v) = h[result].as_u64() {
                        hooks.push((
                            vec![("hook", name.clone()), ("result", result.to_owned())],
                            v,
                        ));
                    }
                }
            }
        }
        e.counter(
            "hook_events",
            "Hook deliveries by hook and result (docs/HOOKS.md)",
            &hooks,
        )?;
        if let Some(open) = t["connections_open"].as_f64() {
            e.gauge(
                "connections_open",
                "Open QUIC connections",
                &[(Labels::new(), open)],
            )?;
        }
        Ok(())
    }
}
