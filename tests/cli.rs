//! The `sni-edge` binary itself: `check` on every example, and on broken files.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sni-edge")).args(["check", "--config"]).arg(path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{} was refused: {stderr}", path.display());
            assert!(stdout.starts_with("ok: "), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} examples found");
}

#[test]
fn check_refuses_broken_files_naming_the_place() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let expected = [
        ("unknown-backend.json", "routes[0].backend: no backend named \"clustre\" (backends: cluster)"),
        (
            "bad-proxy-version.json",
            "backends.cluster.proxy_protocol (line 7): unknown variant `2`, expected one of `none`, `v1`, `v2`",
        ),
        ("bad-name.json", "routes[0].names[1]: \"kube.*.example.com\": a wildcard must be the whole first label"),
        ("timeout-too-long.json", "timeouts.client_hello: must be at most 365 days"),
        (
            "wildcard-and-specific.json",
            "listeners[1].address: 192.0.2.10:443 and listeners[0] (0.0.0.0:443) share a port",
        ),
        ("ipv4-mapped-listener.json", "listeners[0].address: [::ffff:192.0.2.10]:443 is an IPv4-mapped IPv6 address"),
        ("proxy-protocol-from-anyone.json", "listeners[0].proxy_protocol_from[0]: 0.0.0.0/0 lets anyone"),
    ];
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), expected.len(), "every invalid example has an expectation");
    for (file, message) in expected {
        let path = dir.join(file);
        let (ok, _, stderr) = check(&path);
        assert!(!ok, "{file} was accepted");
        assert!(stderr.starts_with(&format!("error: {}: {message}", path.display())), "{file}: {stderr}");
    }
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_sni-edge")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "SIGHUP", "SIGTERM"] {
        assert!(help.contains(word), "--help does not mention {word}:\n{help}");
    }
}

#[test]
fn the_readme_config_example_passes_check() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```json\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(!blocks.is_empty(), "the README has no JSON example");
    for (i, block) in blocks.iter().enumerate() {
        let path = std::env::temp_dir().join(format!("sni-edge-readme-{}-{i}.json", std::process::id()));
        std::fs::write(&path, block).unwrap();
        let (ok, _, stderr) = check(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(ok, "README JSON block {i} is refused: {stderr}");
    }
}
