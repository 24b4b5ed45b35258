//! The command line as an operator meets it: the one-command demo, the
//! development PKI, and a clear refusal for every unusable flag or file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::process::Bridge;
use common::*;

async fn run(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut bridge = Bridge::spawn("cli", &args, &[]);
    // wait_exit reads the output to its end.
    let code = bridge.wait_exit(Duration::from_secs(60)).await;
    (code, bridge.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_smoke_session_passes_on_a_fresh_machine() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (code, output) = run(&["demo", "--smoke", "--dir", &demo_dir.display().to_string()]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("smoke: every step behaved"), "{output}");
    assert!(output.contains("--drivers demo --compute-driver-socket="), "{output}");
    for step in
        ["GetCapabilities", "CreateSandbox", "watch: Ready=True", "StopSandbox", "StartSandbox", "DeleteSandbox"]
    {
        assert!(output.lines().any(|l| l.contains("ok") && l.contains(step)), "step {step} missing:\n{output}");
    }
    // One log line per relayed call.
    assert!(output.contains("method=CreateSandbox"), "{output}");
    // Sockets are removed on exit.
    assert!(!demo_dir.join("shim/compute-driver.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_init_writes_a_private_pki_and_will_not_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let out_text = out.display().to_string();
    let (code, output) = run(&["certs", "init", "--out", &out_text, "--client-name", "edge-gw-1"]).await;
    assert_eq!(code, Some(0), "{output}");
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("server.pem", 0o644),
        ("server-key.pem", 0o600),
        ("client.pem", 0o644),
        ("client-key.pem", 0o600),
    ] {
        let meta = std::fs::metadata(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let client = openshell_driver_bridge::tls::material::load_cert_info("--cert", &out.join("client.pem")).unwrap();
    assert_eq!(client.identity.to_string(), "dns:edge-gw-1");
    let (code, output) = run(&["certs", "init", "--out", &out_text]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("--force"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_files_and_flags_are_refused_naming_flag_path_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let socket = dir.path().join("s/s.sock").display().to_string();
    let ca = pki.ca_file.display().to_string();
    let (cert, key) = (pki.client.0.display().to_string(), pki.client.1.display().to_string());
    let other = pki.issue("other", &openshell_driver_bridge::pki::LeafSpec::client("other"));
    let other_key = other.1.display().to_string();
    let loose = dir.path().join("loose-key.pem");
    std::fs::copy(&pki.client.1, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = loose.display().to_string();
    let missing = dir.path().join("nope.pem").display().to_string();

    let shim = |ca: &str, cert: &str, key: &str| {
        vec![
            "shim".to_string(),
            "--socket".into(),
            socket.clone(),
            "--upstream".into(),
            "https://127.0.0.1:9".into(),
            "--ca".into(),
            ca.into(),
            "--cert".into(),
            cert.into(),
            "--key".into(),
            key.into(),
        ]
    };
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (shim(&missing, &cert, &key), vec!["--ca".into(), missing.clone()]),
        (shim(&ca, &cert, &other_key), vec!["--key".into(), "does not match".into()]),
        (shim(&ca, &key, &cert), vec!["--cert".into(), "swap".into()]),
        (shim(&ca, &cert, &loose), vec!["--key".into(), loose.clone(), "readable by group or others".into()]),
        (
            {
                let mut args = shim(&ca, &cert, &key);
                args[4] = "http://relay:80".into();
                args
            },
            vec!["--upstream".into(), "only speaks mTLS".into()],
        ),
        (
            {
                let mut args = shim(&ca, &cert, &key);
                args.extend(["--connect-wait".into(), "soon".into()]);
                args
            },
            vec!["--connect-wait".into(), "not a duration".into()],
        ),
        (
            vec![
                "relay".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--driver-socket".into(),
                "/x.sock".into(),
                "--ca".into(),
                ca.clone(),
                "--cert".into(),
                pki.server.0.display().to_string(),
                "--key".into(),
                pki.server.1.display().to_string(),
            ],
            vec!["no client may call".into(), "--allow-any-client".into()],
        ),
        (
            vec![
                "relay".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--driver-url".into(),
                "http://192.0.2.1:80".into(),
                "--allow-client".into(),
                "dns:gw".into(),
                "--ca".into(),
                ca.clone(),
                "--cert".into(),
                pki.server.0.display().to_string(),
                "--key".into(),
                pki.server.1.display().to_string(),
            ],
            vec!["--driver-url".into(), "--unsafe-driver-target".into()],
        ),
        (
            vec![
                "relay".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--driver-socket".into(),
                "/x.sock".into(),
                "--allow-client".into(),
                "spiffe://corp/gw".into(),
                "--ca".into(),
                ca.clone(),
                "--cert".into(),
                cert.clone(),
                "--key".into(),
                key.clone(),
            ],
            vec!["--allow-client".into(), "uri:".into()],
        ),
    ];
    for (args, expected) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, output) = run(&refs).await;
        assert_eq!(code, Some(2), "{args:?} exited {code:?}:\n{output}");
        for part in &expected {
            assert!(output.contains(part.as_str()), "{args:?}: expected {part:?} in:\n{output}");
        }
        assert!(!output.contains("panicked"), "{output}");
    }
}
