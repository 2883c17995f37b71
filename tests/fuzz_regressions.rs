//! Replays every input under `fuzz/regressions/<target>/` through the fuzz
//! target's body (`edgepush::fuzzing`): the seeds, and each input a fuzzing
//! run found to crash (kept as `crash-<sha1>` once fixed). Runs on every
//! `cargo test`, so also on ARM under qemu, where cargo fuzz cannot.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut total = 0;
    for (name, target) in edgepush::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no seeds in {}", dir.display());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails again", input.display());
        }
        println!("{name}: {} inputs", inputs.len());
        total += inputs.len();
    }
    assert!(total >= edgepush::fuzzing::TARGETS.len());
}
