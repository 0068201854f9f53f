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

/// `text` with each `"key_file": "PATH"` pointing at a new key in `dir`:
/// the README's tunnel examples name where a key would live on a server.
fn with_new_keys(text: &str, dir: &Path) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"key_file\": \"") {
        let start = at + "\"key_file\": \"".len();
        let end = start + rest[start..].find('"').unwrap();
        let key = dir.join(format!("key-{}", out.len()));
        sni_edge::tunnel::keys::PrivateKey::generate().write_new(&key).unwrap();
        out.push_str(&rest[..start]);
        out.push_str(key.to_str().unwrap());
        rest = &rest[end..];
    }
    out + rest
}

#[test]
fn the_readme_config_example_passes_check() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```json\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(!blocks.is_empty(), "the README has no JSON example");
    for (i, block) in blocks.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("sni-edge-readme-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, with_new_keys(block, &dir)).unwrap();
        let (ok, _, stderr) = check(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ok, "README JSON block {i} is refused: {stderr}");
    }
}

fn sni_edge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sni-edge")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// keygen writes a private key only its owner can read, never over another
/// file; pubkey prints the same public key; check reads both roles' files.
#[test]
fn keygen_pubkey_and_check_for_both_roles() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sni-edge-cli-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gateway_key = dir.join("gateway.key");
    let (ok, gateway_public, stderr) = sni_edge(&["keygen", "--out", gateway_key.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let gateway_public = gateway_public.trim().to_owned();
    assert!(gateway_public.starts_with("sni-edge-key:") && gateway_public.len() == 13 + 43, "{gateway_public}");
    assert_eq!(std::fs::metadata(&gateway_key).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, again, _) = sni_edge(&["pubkey", "--key", gateway_key.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(again.trim(), gateway_public);
    let before = std::fs::read(&gateway_key).unwrap();
    let (ok, _, stderr) = sni_edge(&["keygen", "--out", gateway_key.to_str().unwrap()]);
    assert!(!ok && stderr.contains("File exists"), "{stderr}");
    assert_eq!(std::fs::read(&gateway_key).unwrap(), before, "keygen replaced a key");

    let agent_key = dir.join("agent.key");
    let (ok, agent_public, _) = sni_edge(&["keygen", "--out", agent_key.to_str().unwrap()]);
    assert!(ok);
    let agent_public = agent_public.trim();
    let gateway = format!(
        r#"{{ "listeners": [{{ "address": "127.0.0.1:7443", "protocol": "tunnel" }}],
             "tunnel": {{ "key_file": "gateway.key", "agents": {{ "home": ["{agent_public}"] }} }},
             "routes": [{{ "names": ["app.example.test"], "backend": "home" }}],
             "backends": {{ "home": {{ "agents": "home", "target": "https" }} }} }}"#
    );
    std::fs::write(dir.join("gateway.json"), &gateway).unwrap();
    let (ok, stdout, stderr) = check(&dir.join("gateway.json"));
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    let agent = format!(
        r#"{{ "key_file": "agent.key", "gateways": [{{ "address": "gateway.example.test:7443", "public_key": "{gateway_public}" }}],
             "targets": {{ "https": "127.0.0.1:443" }} }}"#
    );
    std::fs::write(dir.join("agent.json"), &agent).unwrap();
    let (ok, stdout, stderr) = check(&dir.join("agent.json"));
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!("ok: {}: agent {agent_public} of 1 gateways, 1 targets\n", dir.join("agent.json").display())
    );

    // Errors name the file and the key, for both roles.
    std::fs::write(dir.join("agent.json"), agent.replace("agent.key", "missing.key")).unwrap();
    let (ok, _, stderr) = check(&dir.join("agent.json"));
    assert!(!ok);
    assert!(stderr.starts_with(&format!("error: {}: key_file: ", dir.join("agent.json").display())), "{stderr}");
    std::fs::write(dir.join("gateway.json"), gateway.replace(agent_public, "sni-edge-key:nope")).unwrap();
    let (ok, _, stderr) = check(&dir.join("gateway.json"));
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!("error: {}: tunnel.agents.home[0]: ", dir.join("gateway.json").display())),
        "{stderr}"
    );
    std::fs::write(dir.join("broken.key"), "hello\n").unwrap();
    let (ok, _, stderr) = sni_edge(&["pubkey", "--key", dir.join("broken.key").to_str().unwrap()]);
    assert!(!ok && stderr.contains("sni-edge-private-key:"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
