//! The Debian package: `cargo deb` builds it, it is unpacked into a scratch
//! root, and every file, mode and owner is checked, with the maintainer
//! scripts, the conffile, the packaged binary and config, and both
//! `systemd-analyze` checks of the packaged units (verify clean, security
//! exposure at most 2.0). Needs cargo-deb (`cargo install cargo-deb`),
//! dpkg-deb and systemd-analyze (Debian packages dpkg and systemd).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// cargo-deb from PATH or cargo's own bin directory.
fn cargo_deb() -> Command {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let local = home.map(|h| h.join("bin/cargo-deb")).filter(|p| p.exists());
    let program = local.unwrap_or_else(|| PathBuf::from("cargo-deb"));
    let probe = Command::new(&program).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "cargo-deb is needed for this test: cargo install cargo-deb --locked"
    );
    Command::new(program)
}

/// Builds the amd64 (host) package into a scratch directory and returns its path.
fn build_package() -> PathBuf {
    let out_dir = scratch_dir("deb");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // As the README says: `-- -p edgepush` builds the server package alone
    // (in the workspace root cargo would select every member, and the
    // developer build turns the demo on).
    run(cargo_deb()
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--output")
        .arg(&out_dir)
        .arg("--quiet")
        .args(["--", "-p", "edgepush"]));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let name = debs[0].file_name().unwrap().to_string_lossy().into_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(name.starts_with(&format!("edgepush_{version}")) && name.ends_with("_amd64.deb"), "{name}");
    debs[0].clone()
}

/// Every file and directory of the package: (mode, owner/group, path).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("-rwxr-xr-x", "0/0", "./usr/bin/edgepush"),
    ("-rw-r-----", "0/0", "./etc/edgepush/edgepush.toml"),
    ("-rw-r--r--", "0/0", "./etc/mosquitto/conf.d/edgepush.conf"),
    ("-rw-r--r--", "0/0", "./usr/lib/systemd/system/edgepush.service"),
    ("-rw-r--r--", "0/0", "./usr/lib/systemd/system/edgepush.socket"),
    ("-rw-r--r--", "0/0", "./usr/share/doc/edgepush/PROTOCOL.md"),
    ("-rw-r--r--", "0/0", "./usr/share/doc/edgepush/README.md"),
    ("-rw-r--r--", "0/0", "./usr/share/doc/edgepush/copyright"),
    ("-rw-r--r--", "0/0", "./usr/share/edgepush/boards/beaglebone-black.toml"),
    ("-rw-r--r--", "0/0", "./usr/share/edgepush/boards/generic.toml"),
    ("-rw-r--r--", "0/0", "./usr/share/edgepush/boards/raspberry-pi-3.toml"),
    ("-rw-r--r--", "0/0", "./usr/share/edgepush/boards/raspberry-pi-4.toml"),
    ("-rw-r--r--", "0/0", "./usr/share/edgepush/boards/raspberry-pi-zero-2w.toml"),
];

#[test]
fn deb_package_installs_every_file_with_its_mode_and_owner_and_its_units_pass_systemd_analyze() {
    let deb = build_package();

    // Control: name, architecture, dependencies, conffile, maintainer scripts.
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    for field in ["Package: edgepush", "Architecture: amd64", "Section: net"] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }
    let depends = info.lines().find(|l| l.trim_start().starts_with("Depends:")).expect("a Depends field");
    assert!(depends.contains("adduser"), "{depends}");
    let declared = depends.split("libc6 (>= ").nth(1).and_then(|r| r.split(')').next()).expect("a libc6 version");

    let ctl = scratch_dir("deb-control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/edgepush/edgepush.toml\n/etc/mosquitto/conf.d/edgepush.conf");
    let script = |name: &str| {
        let path = ctl.join(name);
        run(Command::new("sh").arg("-n").arg(&path));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{name} mode");
        std::fs::read_to_string(path).unwrap()
    };
    let postinst = script("postinst");
    assert!(postinst.contains("adduser --system --group"), "postinst creates the user:\n{postinst}");
    assert!(postinst.contains("chown root:edgepush /etc/edgepush/edgepush.toml"), "{postinst}");
    assert!(postinst.contains("restart mosquitto"), "postinst says how the broker's drop-in applies:\n{postinst}");
    for unit in ["edgepush.service", "edgepush.socket"] {
        assert!(postinst.contains(&format!("deb-systemd-helper enable {unit}")), "postinst enables {unit}");
    }
    assert!(postinst.contains("deb-systemd-invoke $_dh_action edgepush.service edgepush.socket"), "and starts them");
    let prerm = script("prerm");
    assert!(prerm.contains("deb-systemd-invoke stop edgepush.service edgepush.socket"), "prerm stops:\n{prerm}");
    let postrm = script("postrm");
    assert!(postrm.contains("purge") && postrm.contains("deb-systemd-helper"), "{postrm}");
    assert!(!postinst.contains("#DEBHELPER#") && !prerm.contains("#DEBHELPER#"), "token left unexpanded");

    // Every file with its mode and owner, and nothing else.
    let listing = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let mut files: Vec<(String, String, String)> = Vec::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (cols[0], cols[1], *cols.last().unwrap());
        if mode.starts_with('d') {
            assert_eq!((mode, owner), ("drwxr-xr-x", "0/0"), "directory {path}");
            continue;
        }
        files.push((mode.to_owned(), owner.to_owned(), path.to_owned()));
    }
    files.sort_by(|a, b| a.2.cmp(&b.2));
    let mut expected: Vec<(String, String, String)> =
        EXPECTED.iter().map(|(m, o, p)| (m.to_string(), o.to_string(), p.to_string())).collect();
    expected.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(files, expected);

    // Unpacked into a scratch root: the binary runs and takes the packaged config.
    let root = scratch_dir("deb-root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let bin = root.join("usr/bin/edgepush");
    // The declared glibc is enough: no symbol of a newer version is needed.
    let symbols = text(&run(Command::new("objdump").arg("-T").arg(&bin)));
    let version = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<u32>>();
    let needed = symbols
        .split("GLIBC_")
        .skip(1)
        .filter_map(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .filter(|v| !v.is_empty())
        .map(version)
        .max()
        .expect("glibc symbols");
    assert!(needed <= version(declared), "needs glibc {needed:?}, declares {declared}");
    let version = text(&run(Command::new(&bin).arg("--version")));
    assert_eq!(version.trim(), format!("edgepush {}", env!("CARGO_PKG_VERSION")));
    // Bounded: a package built with the demo would serve it until stopped.
    let demo = output_within(Command::new(&bin).arg("demo"), b"", 10_000);
    assert_eq!(demo.status.code(), Some(64), "the gateway build has no demo");
    run(Command::new(&bin).arg("check-config").arg("--config").arg(root.join("etc/edgepush/edgepush.toml")));
    let packaged = std::fs::read_to_string(root.join("usr/lib/systemd/system/edgepush.service")).unwrap();
    assert_eq!(packaged, include_str!("../systemd/edgepush.service"));

    // systemd-analyze on the packaged units. The scratch root gets the host's
    // own units (sysinit.target and the like) and kill(1) for ExecReload=.
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd's units (Debian package systemd)") {
        let entry = entry.unwrap();
        let to = units.join(entry.file_name());
        if !to.exists() && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    std::fs::copy("/usr/bin/kill", root.join("usr/bin/kill")).unwrap();
    for link in ["bin", "lib"] {
        if !root.join(link).exists() {
            std::os::unix::fs::symlink(format!("usr/{link}"), root.join(link)).unwrap();
        }
    }
    let verify = |unit_text: Option<&str>| {
        if let Some(t) = unit_text {
            std::fs::write(units.join("edgepush.service"), t).unwrap();
        }
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(["/usr/lib/systemd/system/edgepush.service", "/usr/lib/systemd/system/edgepush.socket"])
            .output()
            .unwrap()
    };
    let clean = verify(None);
    let said = format!("{}{}", String::from_utf8_lossy(&clean.stdout), String::from_utf8_lossy(&clean.stderr));
    assert!(clean.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // The check can fail: a typo in a copy of the unit is reported.
    let broken = verify(Some(&packaged.replace("ProtectSystem=strict", "ProtectSystem=strcit")));
    let said = String::from_utf8_lossy(&broken.stderr).into_owned();
    assert!(said.contains("strcit"), "verify did not see a broken unit: {said}");
    verify(Some(&packaged));

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("edgepush.service")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for edgepush.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{report}\n{}", String::from_utf8_lossy(&security.stderr)));
    println!("systemd-analyze security --offline=true: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");
}

#[test]
fn annotated_config_is_valid_and_its_commented_values_are_the_defaults() {
    use edgepush::internals::Config;
    let annotated = include_str!("../systemd/edgepush.toml");
    let as_shipped = Config::from_toml(annotated, "systemd/edgepush.toml", None).unwrap_or_else(|e| panic!("{e}"));
    let defaults = Config::from_toml("", "defaults", None).unwrap();
    assert_eq!(as_shipped, defaults, "the shipped file changes nothing but documents");
    // Uncomment every `# key = value` line (but the examples without a default).
    let mut uncommented = String::new();
    let mut n = 0;
    for line in annotated.lines() {
        match line.strip_prefix("# ") {
            Some(kv) if kv.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => {
                let key = kv.split_once(" = ").unwrap().0;
                if ["client-id", "username", "password"].contains(&key) {
                    continue;
                }
                uncommented.push_str(kv.split("  #").next().unwrap());
                uncommented.push('\n');
                n += 1;
            }
            _ => {
                uncommented.push_str(line);
                uncommented.push('\n');
            }
        }
    }
    assert!(n >= 20, "only {n} documented keys");
    let all = Config::from_toml(&uncommented, "uncommented", None).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(all, defaults, "a commented value differs from the default");
}
