//! `cargo xtask`: edgepush's developer commands.
//!
//! ```text
//! cargo xtask test [ARGS]   set up what the suite needs, then cargo test --workspace ARGS
//! cargo xtask setup         only the set-up (CI runs it before the ARM suites)
//! cargo xtask deps          the Debian packages the suite needs, one line
//! ```
//!
//! The set-up installs the missing Debian packages with apt-get when run as
//! root; otherwise it prints the one `apt-get install` line to run and exits
//! with status 2 before anything starts. cargo-deb (the package test) is
//! installed with `cargo install` either way: it needs no root; so are the
//! JavaScript client's npm packages (`npm ci` in `clients/js`, the
//! js_client test).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// What the test suite runs besides cargo: a program, where it may be
/// installed, the Debian package that has it, and which tests use it.
struct Need {
    program: &'static str,
    package: &'static str,
    used_by: &'static str,
}

/// Every program the suite starts. Keep in step with the README's "Tests".
const NEEDS: &[Need] = &[
    Need { program: "mosquitto", package: "mosquitto", used_by: "every broker test" },
    Need { program: "chromium", package: "chromium", used_by: "the dashboard browser test" },
    Need { program: "node", package: "nodejs", used_by: "the codec and JavaScript client tests" },
    Need { program: "npm", package: "npm", used_by: "the JavaScript client's set-up and package test" },
    Need { program: "systemd-analyze", package: "systemd", used_by: "the unit files' verify and security tests" },
    Need { program: "dpkg-deb", package: "dpkg", used_by: "the package test" },
    Need { program: "ip", package: "iproute2", used_by: "the half-open test's network namespaces" },
    Need { program: "haproxy", package: "haproxy", used_by: "the reverse-proxy test" },
];

/// Directories searched besides `PATH`: a user's PATH often lacks the sbin ones.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => match setup() {
            Ok(()) => test(&args[1..]),
            Err(code) => code,
        },
        Some("setup") => match setup() {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        Some("deps") => {
            println!("{}", missing_packages(|_| false).join(" "));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: cargo xtask test [CARGO TEST ARGS]   set up what the tests need, then run them all\n       \
                 cargo xtask setup                        only the set-up\n       \
                 cargo xtask deps                         the Debian packages the tests need"
            );
            ExitCode::from(2)
        }
    }
}

/// Where `program` is installed, if it is.
fn find(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian packages of the programs `installed` says are missing, in order, once each.
fn missing_packages(installed: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for n in NEEDS {
        if !installed(n.program) && !out.contains(&n.package) {
            out.push(n.package);
        }
    }
    out
}

/// The effective user id, from `/proc/self/status` (std has no geteuid).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(effective_uid) == Some(0)
}

/// Installs what is missing, or says what to run. Err: the exit code.
fn setup() -> Result<(), ExitCode> {
    let missing = missing_packages(|p| find(p).is_some());
    if !missing.is_empty() {
        for n in NEEDS.iter().filter(|n| missing.contains(&n.package)) {
            eprintln!("xtask: {} is missing ({}; Debian package {})", n.program, n.used_by, n.package);
        }
        if !is_root() {
            eprintln!(
                "xtask: install them first (as root), then run this again:\n\n    \
                 sudo apt-get install --no-install-recommends {}\n",
                missing.join(" ")
            );
            return Err(ExitCode::from(2));
        }
        run("apt-get", &["update", "-q"])?;
        let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
        install.extend(&missing);
        run("apt-get", &install)?;
        if let Some(p) = missing_packages(|p| find(p).is_some()).first() {
            eprintln!("xtask: {p} was installed but its program is still not found");
            return Err(ExitCode::FAILURE);
        }
    }
    let has_cargo_deb = Command::new(cargo()).args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        eprintln!("xtask: installing cargo-deb (the package test builds a .deb with it)");
        run(&cargo(), &["install", "cargo-deb", "--locked"])?;
    }
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js");
    if npm_install_needed(&js) {
        eprintln!("xtask: installing the JavaScript client's npm packages (clients/js/node_modules)");
        let dir = js.to_string_lossy();
        run("npm", &["ci", "--prefix", &dir, "--no-audit", "--no-fund"])?;
    }
    Ok(())
}

/// Whether `clients/js/node_modules` is missing or older than its lock file.
fn npm_install_needed(js: &Path) -> bool {
    let modified = |p: PathBuf| p.metadata().and_then(|m| m.modified()).ok();
    match (modified(js.join("node_modules/.package-lock.json")), modified(js.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

/// The cargo that runs this xtask.
fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a set-up command; Err with a message when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), ExitCode> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    if program == "apt-get" {
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
    }
    match cmd.args(args).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            eprintln!("xtask: {program} failed ({s})");
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("xtask: cannot run {program}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Every crate's tests in the workspace, with `args` passed on.
fn test(args: &[String]) -> ExitCode {
    let status = Command::new(cargo()).args(["test", "--workspace"]).args(args).status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| c.clamp(1, 255) as u8)),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_become_their_packages_once_in_order() {
        assert_eq!(missing_packages(|_| true), Vec::<&str>::new());
        assert_eq!(missing_packages(|p| p != "node" && p != "mosquitto"), ["mosquitto", "nodejs"]);
        assert_eq!(missing_packages(|p| p != "npm"), ["npm"]);
        assert_eq!(missing_packages(|_| false).len(), NEEDS.len());
    }

    #[test]
    fn the_effective_uid_is_the_second_of_four() {
        assert_eq!(effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n"), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Gid:\t0\n"), None);
    }

    #[test]
    fn npm_ci_runs_when_node_modules_is_missing() {
        let dir = env::temp_dir().join(format!("xtask-npm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("node_modules")).unwrap();
        std::fs::write(dir.join("package-lock.json"), "{}").unwrap();
        assert!(npm_install_needed(&dir));
        std::fs::write(dir.join("node_modules/.package-lock.json"), "{}").unwrap();
        assert!(!npm_install_needed(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_are_found_on_the_path_and_in_sbin() {
        assert!(find("sh").is_some());
        assert!(find("no-such-program-edgepush").is_none());
    }
}
