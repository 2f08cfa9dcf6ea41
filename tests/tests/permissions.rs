//! Permissions per pool end to end: for each permission, a principal that
//! lacks it is refused by name (the permission and the pool), and a principal
//! that may not read a pool learns nothing of it.

use std::path::PathBuf;
use std::process::Output;

use apiary_protocol::{Client, ClientError, ErrorCode, Reply, Request, Role, TaskQuery};
use apiary_tests::{Bot, Cli, Daemon, describe, send_signal, temp, token_hash_line};

/// Exit code of `apiary` when the daemon refused the request.
const REFUSED: i32 = 88;

const EVERYTHING: [&str; 7] =
    ["create_task", "create_high_priority_task", "cancel_task", "read_tasks", "read_bots", "manage_bots", "delete_bot"];

/// Principals of the test: each holds every permission in pool ci but one.
const LACKING: [&str; 7] = EVERYTHING;

struct Setup {
    dir: tempfile::TempDir,
    daemon: Daemon,
    _bot: Bot,
}

impl Setup {
    fn start() -> Setup {
        let dir = temp();
        let mut text = String::new();
        let mut principal = |name: &str, pools: &str, grants: &[&str]| {
            let token = dir.path().join(format!("{name}.token"));
            std::fs::write(&token, format!("token-of-{name}-0123456789\n")).unwrap();
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token)));
            let grants: Vec<String> = grants.iter().map(|grant| format!("{grant:?}")).collect();
            text.push_str(&format!(
                "\n[[permissions]]\nprincipal = \"{name}\"\npools = [{pools}]\ngrants = [{}]\n",
                grants.join(", ")
            ));
        };
        principal("admin", "\"*\"", &EVERYTHING);
        principal("prod-user", "\"prod\"", &EVERYTHING);
        principal("ci-bots", "\"ci\"", &["read_bots"]);
        for lacking in LACKING {
            let grants: Vec<&str> = EVERYTHING.into_iter().filter(|grant| *grant != lacking).collect();
            principal(&format!("no-{lacking}"), "\"ci\"", &grants);
        }
        text.push_str(
            "\n[[bot_groups]]\nprincipal = \"ci-bots\"\nbot_id_prefixes = [\"ci-\"]\ndimensions = { pool = \"ci\" }\n",
        );
        let config = dir.path().join("apiary.toml");
        std::fs::write(&config, text).unwrap();
        let daemon =
            Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
        let token = dir.path().join("ci-bots.token");
        let bot = Bot::start_with(
            &daemon.addr,
            "ci-1",
            &["pool=ci"],
            &dir.path().join("bot"),
            &["--token-file", token.to_str().unwrap()],
        );
        Setup { dir, daemon, _bot: bot }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("apiary.toml")
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.token"))
    }

    fn cli(&self, name: &str) -> Cli {
        self.daemon.cli_with_token(&self.token_file(name))
    }

    fn lacking(&self, permission: &str) -> Cli {
        self.cli(&format!("no-{permission}"))
    }
}

/// Insists the command was refused with a message holding `needle`.
fn refused_with(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// The error text of a command, with `id` in it replaced, to compare answers about two ids.
fn answer_about(output: &Output, id: &str) -> String {
    assert!(!output.status.success(), "{}", describe(output));
    String::from_utf8_lossy(&output.stderr).replace(id, "ID")
}

fn missing(permission: &str, principal: &str, pool: &str) -> String {
    format!("permission {permission}: principal {principal} lacks it in pool \"{pool}\"")
}

#[test]
fn each_permission_is_needed_and_its_refusal_names_it_and_the_pool() {
    let setup = Setup::start();
    let admin = setup.cli("admin");
    let trigger =
        |cli: &Cli, priority: &str| cli.run(&["trigger", "-d", "pool=ci", "--priority", priority, "--", "true"]);

    refused_with(&trigger(&setup.lacking("create_task"), "100"), &missing("create_task", "no-create_task", "ci"));
    let no_high = setup.lacking("create_high_priority_task");
    refused_with(
        &trigger(&no_high, "10"),
        &format!(
            "priority: 10 is high priority (below 20); {}",
            missing("create_high_priority_task", "no-create_high_priority_task", "ci")
        ),
    );
    let normal = trigger(&no_high, "20");
    assert!(normal.status.success(), "priority 20 is not high: {}", describe(&normal));

    let pending = admin.trigger(&["-d", "pool=ci", "-d", "id=ci-nobody", "--wait-for-capacity", "--", "true"]);
    refused_with(
        &setup.lacking("cancel_task").run(&["cancel", &pending]),
        &missing("cancel_task", "no-cancel_task", "ci"),
    );
    admin.ok(&["cancel", &pending]);

    let no_read = setup.lacking("read_tasks");
    refused_with(
        &no_read.run(&["tasks", "list"]),
        "permission read_tasks: principal no-read_tasks lacks it in every pool",
    );
    let done = admin.trigger(&["-d", "pool=ci", "--", "echo", "hello"]);
    admin.wait_for_state(&done, "COMPLETED");
    let unknown = "0123456789abcde0";
    for command in [["tasks", "output"], ["tasks", "show"]] {
        let forbidden = no_read.run(&[command[0], command[1], &done]);
        let never_was = no_read.run(&[command[0], command[1], unknown]);
        assert_eq!(answer_about(&forbidden, &done), answer_about(&never_was, unknown), "{command:?} tells nothing");
    }

    let no_manage = setup.lacking("manage_bots");
    let needed = missing("manage_bots", "no-manage_bots", "ci");
    refused_with(&no_manage.run(&["bots", "quarantine", "--reason", "why", "ci-1"]), &needed);
    refused_with(&no_manage.run(&["bots", "terminate", "ci-1"]), &needed);
    refused_with(&no_manage.run(&["bots", "unquarantine", "ci-1"]), &needed);
    refused_with(
        &setup.lacking("delete_bot").run(&["bots", "delete", "ci-1"]),
        &missing("delete_bot", "no-delete_bot", "ci"),
    );
    let tagged =
        admin.trigger(&["-d", "pool=ci", "-d", "id=ci-nobody", "--wait-for-capacity", "--tag", "t:1", "--", "true"]);
    refused_with(
        &setup.lacking("cancel_task").run(&["cancel", "--tag", "t:1"]),
        "permission cancel_task: principal no-cancel_task lacks it in every pool",
    );
    assert_eq!(admin.ok(&["cancel", "--tag", "t:1"]), "canceled 1 pending task\n");
    assert_eq!(admin.show(&tagged)["state"], "CANCELED");
    refused_with(
        &no_read.run(&["tasks", "count"]),
        "permission read_tasks: principal no-read_tasks lacks it in every pool",
    );

    let no_bots = setup.lacking("read_bots");
    refused_with(
        &no_bots.run(&["bots", "list"]),
        "permission read_bots: principal no-read_bots lacks it in every pool",
    );
    let forbidden = no_bots.run(&["bots", "show", "ci-1"]);
    let never_was = no_bots.run(&["bots", "show", "ci-9"]);
    assert_eq!(answer_about(&forbidden, "ci-1"), answer_about(&never_was, "ci-9"));
    // Everything held: the same requests go through.
    admin.ok(&["bots", "quarantine", "--reason", "why", "ci-1"]);
    admin.ok(&["bots", "unquarantine", "ci-1"]);
}

#[test]
fn a_principal_learns_nothing_of_a_pool_it_may_not_read() {
    let setup = Setup::start();
    let admin = setup.cli("admin");
    let prod = setup.cli("prod-user");
    let ci_task = admin.trigger(&["-d", "pool=ci", "--", "echo", "ci"]);
    admin.wait_for_state(&ci_task, "COMPLETED");
    let prod_task = prod.trigger(&["-d", "pool=prod", "--wait-for-capacity", "--", "true"]);
    let unknown = "0123456789abcde0";
    for command in [vec!["tasks", "show"], vec!["tasks", "output"], vec!["cancel"], vec!["collect"]] {
        let with = |id: &str| {
            let mut args = command.clone();
            args.push(id);
            prod.run(&args)
        };
        assert_eq!(answer_about(&with(&ci_task), &ci_task), answer_about(&with(unknown), unknown), "{command:?}");
    }
    let listed = prod.ok(&["tasks", "list", "--json"]);
    assert!(listed.contains(&prod_task) && !listed.contains(&ci_task), "{listed}");
    let admin_listed = admin.ok(&["tasks", "list", "--json"]);
    assert!(admin_listed.contains(&prod_task) && admin_listed.contains(&ci_task), "{admin_listed}");
    let bots = prod.ok(&["bots", "list", "--json"]);
    assert!(!bots.contains("ci-1"), "{bots}");
    assert_eq!(prod.ok(&["tasks", "count"]), "1\n", "only the prod task is counted");
    assert_eq!(prod.ok(&["cancel", "--tag", "nothing:here"]), "canceled 0 pending tasks\n");
    let counted: serde_json::Value = serde_json::from_str(&prod.ok(&["bots", "count", "--json"])).unwrap();
    assert_eq!(counted["count"], 0, "ci-1 is not counted for prod: {counted}");
    let forbidden = prod.run(&["bots", "tasks", "ci-1"]);
    let never_was = prod.run(&["bots", "tasks", "ci-9"]);
    assert_eq!(answer_about(&forbidden, "ci-1"), answer_about(&never_was, "ci-9"));
    refused_with(&prod.run(&["trigger", "-d", "pool=ci", "--", "true"]), &missing("create_task", "prod-user", "ci"));
}

#[test]
fn a_reload_gives_open_connections_their_new_permissions() {
    let setup = Setup::start();
    let token = std::fs::read_to_string(setup.token_file("no-read_tasks")).unwrap();
    let mut client = Client::connect_with_token(&setup.daemon.addr, Role::Client, "test", token.trim()).unwrap();
    let list = Request::ListTasks(TaskQuery::default());
    match client.call(&list) {
        Err(ClientError::Refused { code: ErrorCode::PermissionDenied, message }) => {
            assert!(message.starts_with("permission read_tasks:"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut text = std::fs::read_to_string(setup.config()).unwrap();
    text.push_str("\n[[permissions]]\nprincipal = \"no-read_tasks\"\npools = [\"ci\"]\ngrants = [\"read_tasks\"]\n");
    std::fs::write(setup.config(), text).unwrap();
    send_signal(setup.daemon.pid(), libc::SIGHUP);
    setup.daemon.log.wait_for("the reload", |line| line.contains("reloaded the configuration from").then_some(()));
    // The same connection, kept open, now acts with the new grants.
    assert!(matches!(client.call(&list), Ok(Reply::Tasks { .. })));
}
