//! Empty: see this crate's `Cargo.toml`. Its only job is its dependency on
//! `edgepush` with the `demo` feature, so that a plain `cargo run --release
//! -- demo` in the workspace root has the demo, and gateway builds
//! (`cargo build -p edgepush`) do not.
