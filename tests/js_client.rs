//! The JavaScript client package (`clients/js`, npm `edgepush-client`): runs
//! its `node --test test/` suites with this build's `edgepush` binary. They
//! start a real mosquitto and edgepush (delivery, resume by replay, a snapshot
//! after a restart, staleness), a WebSocket server sending garbage, the shared
//! decoder vectors, and `npm pack`'s file list. `EDGEPUSH_TEST_RUNNER` and
//! `EDGEPUSH_TEST_TIME_SCALE` pass through to them.

use std::path::Path;
use std::process::Command;

#[test]
fn the_javascript_client_passes_its_tests_against_this_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "clients/js/node_modules is missing: run `cargo xtask setup` (it runs `npm ci` in clients/js)"
    );
    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1", "test/"])
        .current_dir(&dir)
        .env("CARGO_BIN_EXE_edgepush", env!("CARGO_BIN_EXE_edgepush"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): install the Debian package `nodejs`, or run `cargo xtask setup`")
        });
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "node --test failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("# fail 0") && report.contains("# skipped 0"), "{report}");
    assert!(!report.contains("# pass 0"), "{report}");
}
