//! TLS end to end, with certificate authorities the tests make: the CLI, a
//! bot and apiary-load over TLS with tokens; clients that trust another
//! authority, or speak the wrong protocol, told why; the certificate replaced
//! on SIGHUP while open connections go on; bad certificate files refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use apiary_protocol::tls::TlsArgs;
use apiary_protocol::{Client, Request, Role};
use apiary_tests::pki::{ServerCert, TestCa};
use apiary_tests::{Bot, Cli, Daemon, binary, describe, send_signal, temp, token_hash_line};

/// Exit code of `apiary` when the daemon would not talk to it.
const CONNECTION_FAILED: i32 = 89;

struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    config: PathBuf,
}

impl Setup {
    /// A CA, a server certificate it signed, and a configuration that serves
    /// TLS with it to principals `alice` and `ci-bots`.
    fn new() -> Setup {
        let dir = temp();
        let ca = TestCa::new(dir.path(), "first");
        let ServerCert { cert_file, key_file } = ca.server_cert(dir.path(), "server");
        let mut text = format!("tls_cert_file = {cert_file:?}\ntls_key_file = {key_file:?}\n");
        for name in ["alice", "ci-bots"] {
            let token_file = dir.path().join(format!("{name}.token"));
            std::fs::write(&token_file, format!("token-of-{name}-0123456789\n")).unwrap();
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token_file)));
        }
        let config = dir.path().join("apiary.toml");
        std::fs::write(&config, text).unwrap();
        Setup { dir, ca, config }
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.token"))
    }

    fn start(&self, data_dir: &Path) -> Daemon {
        Daemon::start_with(data_dir, "127.0.0.1:0", &["--config", self.config.to_str().unwrap()])
    }

    fn cli(&self, daemon: &Daemon, ca_file: Option<&Path>) -> Cli {
        Cli {
            addr: daemon.addr.clone(),
            token_file: Some(self.token_file("alice")),
            ca_file: ca_file.map(Path::to_path_buf),
        }
    }
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn tasks_run_over_tls_with_tokens_and_a_new_certificate_serves_after_sighup() {
    let setup = Setup::new();
    let data = temp();
    let daemon = setup.start(data.path());
    assert!(daemon.log.all().iter().any(|line| line.contains("serving TLS with the certificate from")));
    let ca_file = setup.ca.cert_file.clone();
    let work = temp();
    let bot_token = setup.token_file("ci-bots");
    let bot_flags = ["--token-file", bot_token.to_str().unwrap(), "--ca-file", ca_file.to_str().unwrap()];
    let _bot = Bot::start_with(&daemon.addr, "bot-1", &["pool=ci"], work.path(), &bot_flags);
    let alice = setup.cli(&daemon, Some(&ca_file));
    let ran = alice.ok(&["run", "--dimension", "pool=ci", "--", "sh", "-c", "echo over-tls"]);
    assert_eq!(ran.trim(), "over-tls");
    // Megabytes of output cross rustls's 64 KiB of unsent records many times over.
    let large =
        alice.ok(&["run", "--dimension", "pool=ci", "--", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"]);
    assert!(large.len() == 3_000_000 && large.bytes().all(|byte| byte == b'x'), "{} bytes", large.len());

    // On loopback a client speaks plaintext unless told otherwise: it is told the daemon speaks TLS.
    let plaintext = setup.cli(&daemon, None).run(&["bots", "list"]);
    assert_eq!(plaintext.status.code(), Some(CONNECTION_FAILED), "{}", describe(&plaintext));
    assert!(stderr_of(&plaintext).contains("speaks TLS: pass --ca-file"), "{}", describe(&plaintext));

    // A client that trusts another authority refuses the daemon; the daemon logs why it closed.
    let other_ca = TestCa::new(setup.dir.path(), "other");
    let distrusting = setup.cli(&daemon, Some(&other_ca.cert_file)).run(&["bots", "list"]);
    assert_eq!(distrusting.status.code(), Some(CONNECTION_FAILED), "{}", describe(&distrusting));
    let stderr = stderr_of(&distrusting);
    assert!(stderr.contains("TLS with") && stderr.contains("invalid peer certificate"), "{stderr}");
    daemon
        .log
        .wait_for("the refused handshake in the log", |line| line.contains("TLS: received fatal alert").then_some(()));

    // A connection opened before the certificate changes goes on with it.
    let tls = TlsArgs { ca_file: Some(ca_file.clone()), ..TlsArgs::default() }.security(&daemon.addr).unwrap();
    let token = std::fs::read_to_string(setup.token_file("alice")).unwrap();
    let mut held = Client::connect_secure(&daemon.addr, Role::Client, "test", token.trim(), &tls).unwrap();
    let list = Request::ListBots { dimensions: Vec::new() };
    held.call(&list).unwrap();

    let second_ca = TestCa::new(setup.dir.path(), "second");
    second_ca.server_cert(setup.dir.path(), "server");
    send_signal(daemon.pid(), libc::SIGHUP);
    daemon.log.wait_for("the certificate reload", |line| line.contains("reloaded the TLS certificate").then_some(()));
    setup.cli(&daemon, Some(&second_ca.cert_file)).ok(&["bots", "list"]);
    let old_trust = alice.run(&["bots", "list"]);
    assert_eq!(old_trust.status.code(), Some(CONNECTION_FAILED), "{}", describe(&old_trust));
    held.call(&list).expect("a connection opened before the reload stays open");

    // A certificate file that cannot be used keeps the one in force.
    std::fs::write(setup.dir.path().join("server.pem"), "garbage\n").unwrap();
    send_signal(daemon.pid(), libc::SIGHUP);
    daemon
        .log
        .wait_for("the refused reload", |line| line.contains("keeping the TLS certificate in force").then_some(()));
    setup.cli(&daemon, Some(&second_ca.cert_file)).ok(&["bots", "list"]);
}

#[test]
fn apiary_load_runs_over_tls_with_tokens() {
    let setup = Setup::new();
    let data = temp();
    let daemon = setup.start(data.path());
    let output = Command::new(binary("apiary-load"))
        .args(["--server", &daemon.addr, "--bots", "2", "--submitters", "2", "--tasks", "40", "--token-file"])
        .arg(setup.token_file("alice"))
        .arg("--bot-token-file")
        .arg(setup.token_file("ci-bots"))
        .arg("--ca-file")
        .arg(&setup.ca.cert_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("completed: 40"), "{}", describe(&output));
}

#[test]
fn a_tls_client_of_a_plaintext_daemon_is_told_so_and_so_is_the_log() {
    let data = temp();
    let daemon = Daemon::start(data.path());
    let dir = temp();
    let ca = TestCa::new(dir.path(), "unused");
    let cli = Cli { addr: daemon.addr.clone(), token_file: None, ca_file: Some(ca.cert_file.clone()) };
    let output = cli.run(&["bots", "list"]);
    assert_eq!(output.status.code(), Some(CONNECTION_FAILED), "{}", describe(&output));
    assert!(stderr_of(&output).contains("does not seem to speak TLS"), "{}", describe(&output));
    assert!(stderr_of(&output).contains("--plaintext"), "{}", describe(&output));
    daemon.log.wait_for("the daemon's side", |line| line.contains("starts like a TLS handshake").then_some(()));
    // Told to, a client speaks plaintext whatever else it was given.
    let told = Command::new(binary("apiary"))
        .args(["--server", &daemon.addr, "--plaintext", "bots", "list"])
        .output()
        .unwrap();
    assert!(told.status.success(), "{}", describe(&told));
}

#[test]
fn certificate_files_that_cannot_serve_are_refused_by_name() {
    let dir = temp();
    let ca = TestCa::new(dir.path(), "ca");
    let first = ca.server_cert(dir.path(), "first");
    let second = ca.server_cert(dir.path(), "second");
    let flags = |cert: &Path, key: &Path| {
        vec![
            "--tls-cert-file".to_string(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
        ]
    };
    let data = temp();
    let start_refused = |flags: Vec<String>| {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (status, log) = Daemon::start_refused(data.path(), &flags);
        assert_eq!(status.code(), Some(1), "{log}");
        log
    };
    let log = start_refused(flags(&first.cert_file, &second.key_file));
    assert!(log.contains("does not go with the certificate file"), "{log}");
    let log = start_refused(flags(&dir.path().join("missing.pem"), &first.key_file));
    assert!(log.contains("cannot read the TLS certificate file") && log.contains("missing.pem"), "{log}");
    let log = start_refused(flags(&first.key_file, &first.key_file));
    assert!(log.contains("holds no PEM certificate"), "{log}");

    let config = dir.path().join("apiary.toml");
    let text = format!("tls_cert_file = {:?}\ntls_key_file = {:?}\n", first.cert_file, second.key_file);
    std::fs::write(&config, text).unwrap();
    let checked = Command::new(binary("apiaryd")).arg("--check-config").arg(&config).output().unwrap();
    assert_eq!(checked.status.code(), Some(1), "{}", describe(&checked));
    assert!(stderr_of(&checked).contains("does not go with the certificate file"), "{}", describe(&checked));

    let alone = Command::new(binary("apiaryd")).arg("--tls-cert-file").arg(&first.cert_file).output().unwrap();
    assert!(!alone.status.success() && stderr_of(&alone).contains("go together"), "{}", describe(&alone));
}
