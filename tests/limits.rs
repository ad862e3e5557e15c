//! Issue 11: a local client cannot cost a host. A daemon with few descriptors (`ulimit -n
//! 256`) faced with more idle HTTP connections than that keeps writing its heartbeat, and its
//! endpoint answers again once the idle connections are cut.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn idle_http_connections_beyond_the_descriptor_limit_do_not_cost_the_heartbeat() {
    let mut c = Cluster::new("limits", 3, "");
    c.start_with_nofile(0, Some(256));
    c.start(1);
    c.start(2);
    assert_cluster_forms(&c);
    assert!(
        wait_for(Duration::from_secs(30), || (c.view(1, 0)?["storage_alive"]
            == true)
            .then_some(()))
        .is_some(),
        "n1 never saw n0's heartbeat"
    );
    // 300 connections that send nothing, and 20 that drip one header byte a second.
    let port = c.members[0].http;
    let mut idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let mut drips: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(
        idle.len() >= 256,
        "the test could open {} connections",
        idle.len()
    );
    // For 25 s (more than two header timeouts), n1 keeps seeing n0's heartbeat advance.
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(25) {
        for d in &mut drips {
            let _ = d.write_all(b"G");
        }
        let alive = c.view(1, 0).map(|v| v["storage_alive"] == true);
        assert_ne!(
            alive,
            Some(false),
            "n0's heartbeat stalled under the connection flood; its log:\n{}",
            c.log(0)
        );
        checks += 1;
        // Bounded polling for a real process: one check a second (not a synchronisation).
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(checks >= 10);
    // The endpoint answers (the idle connections are cut by the header timeout, 10 s each
    // batch of 128), while the test still holds every one of them open.
    let answered = wait_for(Duration::from_secs(90), || {
        http_get(port, "/v1/cluster").filter(|s| s["node"]["verdict"] == "Healthy")
    });
    assert!(
        answered.is_some(),
        "n0 did not answer healthy; its log:\n{}",
        c.log(0)
    );
    assert!(!c.log(0).contains("Too many open files"), "{}", c.log(0));
    idle.clear();
    drips.clear();
}
