//! Smoke runs of the load tool (`edgepush-bench`): small populations for a few seconds, against servers the
//! test starts and against the pair the tool starts itself. Every measurement
//! must be there and everything published must be delivered. No timings are
//! asserted: figures come from the full run (README "Performance").

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{
    edgepush_bin, free_port, loopback, output_within, scratch_dir, wait_linked, write_config, Broker, Daemon,
};
use serde_json::Value as Json;

/// The load tool, starting (when it starts a server) the `edgepush` these tests use.
fn bench_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgepush-bench"));
    c.arg("--server-bin").arg(edgepush_bin());
    c
}

/// A quick run takes seconds; this bounds a hung one.
const BENCH_LIMIT_MS: u64 = 600_000;

fn run_bench(args: &[&str]) -> (Vec<Json>, String) {
    let out = output_within(bench_command().args(args), b"", BENCH_LIMIT_MS);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "edgepush-bench failed: {stderr}");
    let lines = String::from_utf8(out.stdout).unwrap();
    let records = lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (records, stderr)
}

fn find<'a>(records: &'a [Json], target: &str, scenario: &str) -> Vec<&'a Json> {
    records.iter().filter(|r| r["target"] == target && r["scenario"] == scenario).collect()
}

/// Every delivery step delivered everything, with latencies in order.
fn check_delivery(records: &[Json], target: &str) {
    let steps: Vec<&Json> = find(records, target, "step").into_iter().chain(find(records, target, "latency")).collect();
    assert!(steps.len() >= 2, "{target}: steps and the latency run in {records:#?}");
    for s in steps {
        assert_eq!(s["delivered_fraction"].as_f64(), Some(1.0), "{target}: {s}");
        assert!(s["published"].as_f64().unwrap() > 0.0, "{s}");
        let (p50, p99, max) =
            (s["p50_ms"].as_f64().unwrap(), s["p99_ms"].as_f64().unwrap(), s["max_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max * 1.04, "{target}: {s}");
        assert!(s["tool_cpu_cores"].as_f64().is_some(), "the tool reports its own CPU: {s}");
    }
    assert_eq!(find(records, target, "max").len(), 1, "{target}: one max per run");
}

#[test]
fn bench_against_named_servers_measures_both_protocols() {
    let ws_port = free_port();
    let broker = Broker::start_with(
        free_port(),
        &format!("allow_anonymous true\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n"),
    );
    let port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[limits]\nconnections-per-second-per-ip = 100000\n[mqtt]\nport = {}\n",
        broker.port
    );
    let addr = loopback(port);
    let server = Daemon::run(&write_config(&scratch_dir("bench"), &text), addr);
    wait_linked(addr, 10_000);

    let (ep, mq) = (format!("ws://127.0.0.1:{port}/ws"), format!("ws://127.0.0.1:{ws_port}/"));
    let (ep_pid, mq_pid, broker_addr) =
        (server.child.id().to_string(), broker.pid().to_string(), format!("127.0.0.1:{}", broker.port));
    let (records, stderr) = run_bench(&[
        "--quick",
        "--json",
        "-",
        "--edgepush",
        &ep,
        "--mosquitto-ws",
        &mq,
        "--broker",
        &broker_addr,
        "--edgepush-pid",
        &ep_pid,
        "--mosquitto-pid",
        &mq_pid,
    ]);
    for target in ["edgepush", "mosquitto"] {
        check_delivery(&records, target);
        let idle = find(&records, target, "idle-20");
        assert_eq!(idle.len(), 1, "{target}");
        assert!(idle[0]["connect_per_s"].as_f64().unwrap() > 0.0, "{}", idle[0]);
        assert!(idle[0]["rss_per_conn_kib"].as_f64().is_some(), "RSS from the PID given: {}", idle[0]);
        // /proc/PID/stat counts CPU in 10 ms ticks, and a quick step on a fast machine can
        // cost the server less than one: zero is a measurement, a missing figure is not.
        let cpu = find(&records, target, "common")[0]["server_cpu_s_per_100k"].as_f64();
        assert!(cpu.is_some_and(|c| c.is_finite() && c >= 0.0), "{target}: CPU from the PID given: {cpu:?}");
    }
    // The summary table with the ratio column goes to stderr when JSON takes stdout.
    assert!(stderr.contains("medians of 1 run(s)") && stderr.contains("ratio"), "{stderr}");
}

#[test]
fn bench_starts_its_own_pair_and_prints_the_table() {
    let out = output_within(
        bench_command().args(["--quick", "--runs", "2", "--json"]).arg(scratch_dir("bench-local").join("run.jsonl")),
        b"",
        BENCH_LIMIT_MS,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "RSS per idle connection",
        "max sustained delivery",
        "server CPU s per 100k",
        "latency p99_ms",
        "start to listening",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(row) || l.trim_start().starts_with(row)), "{row} in\n{stdout}");
    }
    assert!(stdout.contains("medians of 2 run(s)"), "{stdout}");
}

/// `--tls`: the pair the tool starts serves wss with a certificate the tool
/// made, and every figure is measured over it, for both servers.
#[test]
fn bench_over_tls_measures_both_servers_over_wss() {
    let (records, stderr) = run_bench(&["--quick", "--tls", "--json", "-"]);
    for target in ["edgepush", "mosquitto"] {
        assert!(stderr.contains(&format!("{target}: wss://127.0.0.1:")), "{target} over wss: {stderr}");
        check_delivery(&records, target);
        let idle = find(&records, target, "idle-20");
        assert_eq!(idle.len(), 1, "{target}");
        assert!(idle[0]["connect_per_s"].as_f64().unwrap() > 0.0, "{}", idle[0]);
        assert!(idle[0]["rss_per_conn_kib"].as_f64().is_some(), "{}", idle[0]);
    }
    assert!(stderr.contains("medians of 1 run(s), over wss"), "{stderr}");
}

#[test]
fn bench_refuses_bad_arguments_with_the_reason() {
    for (args, says) in [(&["--edgepush", "ws://127.0.0.1:1/ws"][..], "--broker"), (&["--ramp", "5"][..], "--ramp")] {
        let out = output_within(bench_command().args(args), b"", 60_000);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}");
    }
    // An unreachable server: a clear error, exit 1, no hang.
    let port = free_port();
    let unreachable =
        ["--quick", "--edgepush", &format!("ws://127.0.0.1:{port}/ws"), "--broker", &format!("127.0.0.1:{port}")];
    // "No hang": bounded.
    let out = output_within(bench_command().args(unreachable), b"", 60_000);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed to connect") && err.contains(&port.to_string()), "{err}");
}
