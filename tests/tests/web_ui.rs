//! The web UI in a real headless Chromium (`apiary_tests::browser`).
//!
//! The first tests load the UI's files as the daemon serves them from a
//! `file://` copy, with no daemon at all: the page boots, says it cannot reach
//! the daemon, signs in and out, and its modules read Swarming's JSON as they
//! should and never turn a server's string into markup. The others run the
//! real `apiaryd` with its HTTP listener, real bots and tasks, and click
//! through every page and action. Screenshots of each page go to
//! `target/test-artifacts/web-ui/`.

use std::path::{Path, PathBuf};

use apiary_tests::browser::{Browser, js, write_ui_copy};
use apiary_tests::{Bot, Cli, Daemon, message, temp, token_hash_line};
use serde_json::{Value, json};

/// The page of a `file://` copy of the UI, in a fresh browser.
fn ui_from_files(dir: &Path, route: &str) -> Browser {
    let page = write_ui_copy(dir);
    let mut browser = Browser::start();
    browser.navigate(&format!("{page}#{route}"));
    browser.wait_until("the UI to boot", "document.body.dataset.ready === 'true'");
    browser
}

#[test]
fn the_ui_boots_from_its_files_and_says_the_daemon_is_unreachable() {
    let dir = temp();
    let mut browser = ui_from_files(dir.path(), "/tasks");
    browser.wait_for_text("#task-list", "Cannot reach the Apiary daemon");
    assert!(browser.text("#session").contains("Sign in"), "no token yet: the header offers to sign in");
    assert_eq!(browser.eval("document.querySelector('[data-nav=tasks]').classList.contains('active')"), json!(true));
    browser.screenshot("unreachable-tasks");

    browser.navigate(&format!("{}#/bots", write_ui_copy(dir.path())));
    browser.wait_for_text("#bot-list", "Cannot reach the Apiary daemon");
    assert_eq!(browser.eval("document.querySelector('[data-nav=bots]').classList.contains('active')"), json!(true));

    browser.eval("location.hash = '#/task/6a0f3c1e2b4d5f60'");
    browser.wait_for_text("#main", "Cannot reach the Apiary daemon");
    browser.eval("location.hash = '#/nowhere'");
    browser.wait_until("an unknown route to lead to the task list", "location.hash === '#/tasks'");
    assert_quiet(&browser);
}

/// Insists the page threw nothing and broke none of its security policy.
fn assert_quiet(browser: &Browser) {
    let complaints: Vec<String> = browser
        .console()
        .into_iter()
        .filter(|line| line.starts_with("uncaught") || line.contains("Content Security Policy"))
        .collect();
    assert!(complaints.is_empty(), "the page complained: {complaints:#?}");
}

#[test]
fn signing_in_keeps_the_token_in_the_tab_and_signing_out_forgets_it() {
    let dir = temp();
    let mut browser = ui_from_files(dir.path(), "/signin");
    browser.wait_for("#signin-form");
    assert_eq!(browser.eval("document.activeElement.id"), json!("token"), "the token field has the focus");
    browser.type_into("#token", "  secret-token-1  ");
    browser.click("#signin-submit");
    // No daemon to check it with: the token is kept and the page says why it could not go on.
    browser.wait_for_text("#signin-message", "Cannot reach the Apiary daemon");
    assert_eq!(browser.eval("sessionStorage.getItem('apiary.token')"), json!("secret-token-1"));
    assert_eq!(browser.eval("localStorage.length"), json!(0), "nothing outlives the tab");
    browser.wait_for("#sign-out");
    browser.screenshot("signin");

    browser.click("#sign-out");
    browser.wait_for("#sign-in");
    assert_eq!(browser.eval("sessionStorage.getItem('apiary.token')"), Value::Null);
    browser.wait_until("the sign-in page", "location.hash === '#/signin'");
}

/// Runs `body` (an async function body, with `format`, `dom` and `task`
/// bound to the UI's modules) in the page and returns its value.
fn in_modules(browser: &mut Browser, body: &str) -> Value {
    browser.eval(&format!(
        "(async () => {{
           const base = document.querySelector('script[type=module]').src.replace(/app\\.js$/, '');
           const format = await import(base + 'format.js');
           const dom = await import(base + 'dom.js');
           const task = await import(base + 'pages/task.js');
           {body}
         }})()"
    ))
}

#[test]
fn server_strings_stay_text_and_swarming_values_read_right() {
    let dir = temp();
    let mut browser = ui_from_files(dir.path(), "/signin");
    let hostile = "<img src=x onerror=\"window.pwned=1\">";
    let shown = in_modules(
        &mut browser,
        &format!(
            "const node = dom.h('div', {{title: {hostile}}}, {hostile}, dom.taskLink({hostile}), dom.botLink('a/b?c'));
             document.body.append(node);
             return {{html: node.innerHTML, images: node.querySelectorAll('img').length,
                      text: node.textContent, bot: node.querySelector('a:last-child').getAttribute('href')}};",
            hostile = js(hostile)
        ),
    );
    assert_eq!(shown["images"], json!(0), "{shown}");
    assert!(shown["html"].as_str().unwrap().contains("&lt;img"), "{shown}");
    assert!(shown["text"].as_str().unwrap().starts_with(hostile), "{shown}");
    assert_eq!(shown["bot"], json!("#/bot/a%2Fb%3Fc"));
    assert_eq!(browser.eval("window.pwned === undefined"), json!(true));

    let read = in_modules(
        &mut browser,
        "return {
           success: format.taskState({state: 'COMPLETED'}).key,
           failure: format.taskState({state: 'COMPLETED', failure: true}).key,
           deduped: format.taskState({state: 'COMPLETED', dedupedFrom: '1'}).key,
           diedBadge: format.taskStateBadge({state: 'BOT_DIED'}).textContent,
           unknown: format.taskState({state: 'SOMETHING_NEW'}).label,
           durations: [0.25, 12.34, 30, 125, 3600, 7322].map(format.duration),
           ages: [3, 42, 300, 7200, 200000].map((s) => format.age(new Date(Date.now() - s * 1000))),
           exitCode: format.int64('-9') + format.int64(undefined),
           output: new TextDecoder().decode(format.base64Bytes('aGVsbG8K')),
           pairs: format.pairs([{key: 'os', value: ['Linux', 'Ubuntu']}, {key: 'pool', value: 'ci'}]),
           dead: format.botStatus({isDead: true, quarantined: true}).key,
           busy: format.botStatus({taskId: 'x'}).key,
           noTime: format.timeCell(undefined).textContent,
         };",
    );
    assert_eq!(read["success"], "success");
    assert_eq!(read["failure"], "failure");
    assert_eq!(read["deduped"], "deduped");
    assert_eq!(read["diedBadge"], "Bot died");
    assert_eq!(read["unknown"], "SOMETHING_NEW", "an unknown state is shown as it came");
    assert_eq!(read["durations"], json!(["250 ms", "12.3 s", "30 s", "2 min 5 s", "1 h", "2 h 2 min"]));
    assert_eq!(read["ages"], json!(["just now", "42 s ago", "5 min ago", "2 h ago", "2 d ago"]));
    assert_eq!(read["exitCode"], json!(-9));
    assert_eq!(read["output"], "hello\n");
    assert_eq!(read["pairs"], json!(["os:Linux", "os:Ubuntu", "pool:ci"]));
    assert_eq!(read["dead"], "dead", "dead wins over quarantined");
    assert_eq!(read["busy"], "busy");
    assert_eq!(read["noTime"], "-");

    let retried = in_modules(
        &mut browser,
        "return task.retryRequest({
           taskId: '6a0f3c1e2b4d5f60', name: 'build', priority: 30, user: 'alice', authenticated: 'alice',
           tags: ['authenticated:alice', 'build:42', 'parent_task_id:6a0f3c1e2b4d5f00'], createdTs: '2026-11-30T10:00:00Z',
           taskSlices: [{expirationSecs: 60, properties: {command: ['make'], idempotent: true,
                         dimensions: [{key: 'pool', value: 'ci'}], secretBytes: 'PFJFREFDVEVEPg=='}}],
         });",
    );
    assert_eq!(
        retried,
        json!({
            "name": "build", "priority": 30, "user": "alice", "tags": ["build:42"],
            "taskSlices": [{"expirationSecs": 60, "properties": {"command": ["make"], "idempotent": false,
                            "dimensions": [{"key": "pool", "value": "ci"}]}}],
        }),
        "retry: the same slices, never idempotent, without what the daemon sets itself nor the secret's placeholder"
    );
}

// ---------------------------------------------------------------------------
// Against the real daemon.

/// The daemon's HTTP listener, its bots, and a browser on its UI.
struct Ui {
    dir: tempfile::TempDir,
    daemon: Daemon,
    http: String,
    bots: Vec<Bot>,
    browser: Browser,
}

/// Where the daemon says its HTTP listener listens: its log line
/// `serving HTTP on ADDR (http://ADDR/)`.
fn http_address(daemon: &Daemon) -> String {
    daemon.log.wait_for("the HTTP listener", |line| {
        let rest = message(line)?.strip_prefix("serving HTTP on ")?;
        Some(rest.split_whitespace().next()?.to_string())
    })
}

/// A loopback address with a port nobody listens on now.
fn free_local_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("its address").to_string()
}

impl Ui {
    fn start(config: Option<&str>) -> Ui {
        let dir = temp();
        // A fixed port, so that a restarted daemon is where the page left it.
        let mut args = vec!["--http-listen".to_string(), free_local_address()];
        if let Some(text) = config {
            let file = dir.path().join("apiary.toml");
            std::fs::write(&file, text).unwrap();
            args.extend(["--config".to_string(), file.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &args);
        let http = http_address(&daemon);
        Ui { dir, daemon, http, bots: Vec::new(), browser: Browser::start() }
    }

    fn add_bot(&mut self, bot_id: &str, extra: &[&str]) {
        let work_dir = self.dir.path().join(bot_id);
        self.bots.push(Bot::start_with(&self.daemon.addr, bot_id, &["pool=ci", "os=Linux"], &work_dir, extra));
    }

    fn cli(&self) -> Cli {
        self.daemon.cli()
    }

    fn open(&mut self, route: &str) {
        let url = format!("http://{}/#{route}", self.http);
        self.browser.navigate(&url);
        self.browser.wait_until("the UI to boot", "document.body.dataset.ready === 'true'");
    }

    fn flag(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Waits for the task page's state badge to read `label`.
fn wait_for_state(browser: &mut Browser, label: &str) {
    browser.wait_for_text("#task-state", label);
}

fn confirm(browser: &mut Browser) {
    browser.wait_until("the confirm dialog", "document.getElementById('confirm').open");
    browser.click("#confirm-ok");
}

#[test]
fn each_page_shows_tasks_and_bots_with_links_between_them() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    // With an input tree, and an output: both show on its page.
    let inputs = ui.dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("input.txt"), b"an input\n").unwrap();
    let input_root = ui.cli().ok(&["cas", "archive", "--dir", inputs.to_str().unwrap()]).trim().to_string();
    let script = "echo hello from apiary; cp input.txt \"$APIARY_OUTDIR/\"";
    let done = ui.cli().trigger(&[
        "--name",
        "hello-task",
        "--dimension",
        "pool=ci",
        "--cas-input-root",
        &input_root,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let shown = ui.cli().wait_for_state(&done, "COMPLETED");
    let digest = &shown["cas_output_root"]["digest"];
    let output_root = format!("{}/{}", digest["hash"].as_str().unwrap(), digest["size_bytes"].as_str().unwrap());
    let waiting =
        ui.cli().trigger(&["--name", "gpu-task", "--dimension", "pool=gpu", "--wait-for-capacity", "--", "true"]);

    ui.open("/tasks");
    ui.browser.wait_for_text("#task-list", "hello-task");
    ui.browser.wait_for_text("#task-list", "gpu-task");
    ui.browser.wait_for_text("#task-counts [data-count=ALL]", "2");
    ui.browser.wait_for_text("#task-counts [data-count=PENDING]", "1");
    ui.browser.wait_for_text("#task-counts [data-count=COMPLETED_SUCCESS]", "1");
    ui.browser.wait_for("#open-access");
    ui.browser.screenshot("task-list");

    // The state filter, from the count bar: only the pending task is left.
    ui.browser.click("#task-counts [data-count=PENDING]");
    ui.browser.wait_until(
        "the list to show only pending tasks",
        "!document.querySelector('#task-list').innerText.includes('hello-task')",
    );
    assert!(ui.browser.text("#task-list").contains("gpu-task"));
    assert_eq!(ui.browser.eval("location.hash"), json!("#/tasks?state=PENDING"), "the filter is in the address");

    // The pending task says why it waits.
    ui.browser.click(&format!("#task-list a[href='#/task/{waiting}']"));
    ui.browser.wait_for_text("#pending", "No bot has these dimensions");
    ui.browser.wait_for_text("#pending", "0 live bots could run it (0 busy); 0 tasks are ahead of it in its queue.");
    wait_for_state(&mut ui.browser, "Pending");
    ui.browser.screenshot("task-pending");

    // The finished task: result, output and a link to its bot.
    ui.open(&format!("/task/{done}"));
    wait_for_state(&mut ui.browser, "Success");
    ui.browser.wait_for_text("#output", "hello from apiary");
    ui.browser.wait_for_text("#summary", "linux-1");
    ui.browser.wait_for_text("#request", "echo");
    ui.browser.wait_for_text("#summary", &output_root);
    ui.browser.wait_for_text("#request", &input_root);
    ui.browser.screenshot("task-success");

    ui.browser.click("#summary a[href='#/bot/linux-1']");
    ui.browser.wait_for_text("#bot-status", "Idle");
    ui.browser.wait_for("#dimensions a[href='#/bots?dimension=pool%3Aci']");
    ui.browser.wait_for_text("#bot-tasks", "hello-task");
    ui.browser.wait_for(&format!("#bot-tasks a[href='#/task/{done}']"));
    ui.browser.wait_for("#bot-events tbody tr");
    ui.browser.screenshot("bot-page");

    ui.browser.click("[data-nav=bots]");
    ui.browser.wait_for_text("#bot-list", "linux-1");
    ui.browser.wait_for_text("#bot-counts [data-count=alive]", "1");
    ui.browser.wait_for_text("#bot-counts [data-count=idle]", "1");
    ui.browser.wait_for_text("#bot-counts [data-count=dead]", "0");
    ui.browser.screenshot("bot-list");
    ui.browser.type_into("#filter-dimensions", "pool:nothing-here");
    ui.browser.wait_for_text("#bot-list", "No bot matches");
    ui.browser.screenshot("bot-list-filtered");

    // The tag filter of the task list, and its counts.
    ui.open("/tasks");
    ui.browser.wait_for_text("#task-list", "gpu-task");
    ui.browser.type_into("#filter-tags", "pool:ci");
    ui.browser.wait_until(
        "the list to show only the tasks of pool ci",
        "!document.querySelector('#task-list').innerText.includes('gpu-task')",
    );
    assert!(ui.browser.text("#task-list").contains("hello-task"));
    ui.browser.wait_for_text("#task-counts [data-count=ALL]", "1");
    assert_eq!(ui.browser.eval("location.hash"), json!("#/tasks?tag=pool%3Aci"));
    assert_quiet(&ui.browser);
}

#[test]
fn cancel_and_kill_from_the_task_page_end_the_task() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    let waiting =
        ui.cli().trigger(&["--name", "never-runs", "--dimension", "pool=gpu", "--wait-for-capacity", "--", "true"]);
    ui.open(&format!("/task/{waiting}"));
    wait_for_state(&mut ui.browser, "Pending");
    assert!(!ui.browser.exists("#kill"), "a pending task is canceled, not killed");
    ui.browser.click("#cancel");
    confirm(&mut ui.browser);
    wait_for_state(&mut ui.browser, "Canceled");
    assert_eq!(ui.cli().show(&waiting)["state"], "CANCELED");
    assert!(!ui.browser.exists("#cancel"), "nothing left to cancel");

    let running = ui.cli().trigger(&["--name", "sleeper", "--dimension", "pool=ci", "--", "sleep", "600"]);
    ui.cli().wait_for_state(&running, "RUNNING");
    ui.open(&format!("/task/{running}"));
    wait_for_state(&mut ui.browser, "Running");
    ui.browser.screenshot("task-running");
    ui.browser.click("#kill");
    confirm(&mut ui.browser);
    wait_for_state(&mut ui.browser, "Killed");
    assert_eq!(ui.cli().show(&running)["state"], "KILLED");
    ui.browser.screenshot("task-killed");
}

#[test]
fn retry_runs_the_request_again_as_a_new_task_that_is_not_deduplicated() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    let first =
        ui.cli().trigger(&["--name", "again", "--idempotent", "--dimension", "pool=ci", "--", "echo", "once more"]);
    ui.cli().wait_for_state(&first, "COMPLETED");
    ui.open(&format!("/task/{first}"));
    wait_for_state(&mut ui.browser, "Success");
    ui.browser.click("#retry");
    confirm(&mut ui.browser);
    let hash = ui.browser.wait_until(
        "the page of the new task",
        &format!("location.hash.startsWith('#/task/') && location.hash !== '#/task/{first}' && location.hash"),
    );
    let second = hash.as_str().unwrap().trim_start_matches("#/task/").to_string();
    // An idempotent retry would be deduplicated against the first run; this one runs.
    wait_for_state(&mut ui.browser, "Success");
    ui.browser.wait_for_text("#output", "once more");
    let shown = ui.cli().show(&second);
    assert_eq!(shown["name"], "again");
    assert_eq!(shown["deduped_from"], Value::Null, "the retry ran: {shown}");
    assert_ne!(shown["run_id"], ui.cli().show(&first)["run_id"]);
}

#[test]
fn a_retry_runs_without_the_secret_bytes_it_cannot_read_back() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    let secret = ui.flag("secret");
    std::fs::write(&secret, "sesame").unwrap();
    let show_secret = r#"cat "$APIARY_SECRET_BYTES_PATH" 2>/dev/null || echo no-secret"#;
    let first = ui.cli().trigger(&[
        "--name",
        "secretive",
        "--secret-bytes-file",
        secret.to_str().unwrap(),
        "--dimension",
        "pool=ci",
        "--",
        "sh",
        "-c",
        show_secret,
    ]);
    ui.cli().wait_for_state(&first, "COMPLETED");
    ui.open(&format!("/task/{first}"));
    ui.browser.wait_for_text("#output", "sesame");
    ui.browser.click("#retry");
    ui.browser.wait_for_text("#confirm-message", "secret bytes cannot be read back");
    confirm(&mut ui.browser);
    ui.browser.wait_until("the page of the new task", &format!("location.hash !== '#/task/{first}'"));
    wait_for_state(&mut ui.browser, "Success");
    ui.browser.wait_for_text("#output", "no-secret");
    assert!(!ui.browser.text("#output").contains("REDACTED"), "the placeholder is not a secret to pass on");
}

#[test]
fn a_running_task_output_appears_in_the_page_as_it_is_written() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    let go_on = ui.flag("go-on");
    let script = format!("echo first-line; while [ ! -e {} ]; do sleep 0.05; done; echo second-line", go_on.display());
    let task = ui.cli().trigger(&["--name", "talker", "--dimension", "pool=ci", "--", "sh", "-c", &script]);
    ui.open(&format!("/task/{task}"));
    ui.browser.wait_for_text("#output", "first-line");
    wait_for_state(&mut ui.browser, "Running");
    assert!(!ui.browser.text("#output").contains("second-line"));
    std::fs::write(&go_on, "").unwrap();
    ui.browser.wait_for_text("#output", "second-line");
    wait_for_state(&mut ui.browser, "Success");
    ui.browser.wait_for_text("#output-status", "complete");
    assert_eq!(ui.browser.text("#output").trim(), "first-line\nsecond-line", "each byte once, in order");
    ui.browser.wait_until(
        "the page to have read the output stream",
        "performance.getEntriesByType('resource').some((entry) => entry.name.includes('/output/stream'))",
    );
    ui.browser.screenshot("task-output-live");
}

#[test]
fn the_output_resumes_from_its_offset_after_the_daemon_restarts() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    let go_on = ui.flag("go-on");
    let script =
        format!("echo before-restart; while [ ! -e {} ]; do sleep 0.05; done; echo after-restart", go_on.display());
    let task = ui.cli().trigger(&["--name", "survivor", "--dimension", "pool=ci", "--", "sh", "-c", &script]);
    ui.open(&format!("/task/{task}"));
    ui.browser.wait_for_text("#output", "before-restart");

    ui.daemon.restart();
    http_address(&ui.daemon);
    std::fs::write(&go_on, "").unwrap();
    ui.browser.wait_for_text("#output", "after-restart");
    wait_for_state(&mut ui.browser, "Success");
    assert_eq!(
        ui.browser.text("#output").trim(),
        "before-restart\nafter-restart",
        "the page went on from the bytes it had: nothing lost, nothing twice"
    );
}

#[test]
fn quarantine_and_unquarantine_from_the_bot_page() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    ui.open("/bot/linux-1");
    ui.browser.wait_for_text("#bot-status", "Idle");
    ui.browser.click("#quarantine");
    ui.browser.wait_until("the reason field", "!document.getElementById('confirm-reason-label').hidden");
    ui.browser.type_into("#confirm-reason", "disk is flaky");
    confirm(&mut ui.browser);
    ui.browser.wait_for_text("#bot-status", "Quarantined");
    ui.browser.wait_for("#unquarantine");
    let shown: Value = serde_json::from_str(&ui.cli().ok(&["bots", "show", "--json", "linux-1"])).unwrap();
    assert_eq!(shown["status"], "quarantined", "{shown}");
    assert!(shown["quarantine_reason"].as_str().is_some_and(|reason| reason.contains("disk is flaky")), "{shown}");
    ui.browser.screenshot("bot-quarantined");

    ui.browser.click("#unquarantine");
    confirm(&mut ui.browser);
    ui.browser.wait_for_text("#bot-status", "Idle");
    ui.browser.wait_for("#quarantine");
}

#[test]
fn terminate_and_delete_from_the_bot_page() {
    let mut ui = Ui::start(None);
    ui.add_bot("linux-1", &[]);
    ui.open("/bot/linux-1");
    ui.browser.wait_for_text("#bot-status", "Idle");
    ui.browser.click("#terminate");
    confirm(&mut ui.browser);
    let status = ui.bots[0].wait_exit();
    assert!(status.success(), "a terminated bot exits cleanly: {status:?}");
    ui.browser.wait_for_text("#bot-status", "Shut down");
    assert_eq!(ui.browser.eval("document.querySelector('#terminate').disabled"), json!(true));
    ui.browser.click("#delete");
    confirm(&mut ui.browser);
    ui.browser.wait_for_text("#actions", "This bot was deleted");
    ui.cli().ok(&["bots", "list"]).lines().for_each(|line| assert!(!line.contains("linux-1"), "{line}"));
}

#[test]
fn sign_in_with_a_token_and_actions_follow_the_permissions() {
    let dir = temp();
    let mut config = String::new();
    let mut tokens = Vec::new();
    for (name, grants) in [
        ("alice", r#"["create_task", "cancel_task", "read_tasks", "read_bots", "manage_bots", "delete_bot"]"#),
        ("bob", r#"["read_tasks", "read_bots"]"#),
    ] {
        let token = dir.path().join(format!("{name}.token"));
        std::fs::write(&token, format!("token-of-{name}-0123456789\n")).unwrap();
        config.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token)));
        config.push_str(&format!("\n[[permissions]]\nprincipal = \"{name}\"\npools = [\"*\"]\ngrants = {grants}\n"));
        tokens.push(token);
    }
    let mut ui = Ui::start(Some(&config));
    let alice = tokens[0].display().to_string();
    ui.add_bot("linux-1", &["--token-file", &alice]);
    let alice_cli = ui.daemon.cli_with_token(&tokens[0]);
    let waiting =
        alice_cli.trigger(&["--name", "guarded", "--dimension", "pool=gpu", "--wait-for-capacity", "--", "true"]);

    // Without a token, the first call is refused and the UI asks for one.
    ui.open("/tasks");
    ui.browser.wait_for("#signin-why");
    ui.browser.type_into("#token", "not-a-token-anyone-has");
    ui.browser.click("#signin-submit");
    ui.browser.wait_for_text("#signin-message", "does not accept this token");
    assert_eq!(ui.browser.eval("sessionStorage.getItem('apiary.token')"), Value::Null);
    ui.browser.screenshot("signin-refused");

    // Bob may read, not cancel nor manage bots: the actions are not offered.
    ui.browser.type_into("#token", "token-of-bob-0123456789");
    ui.browser.click("#signin-submit");
    ui.browser.wait_for_text("#task-list", "guarded");
    ui.open(&format!("/task/{waiting}"));
    wait_for_state(&mut ui.browser, "Pending");
    ui.browser.wait_for("#retry");
    assert!(!ui.browser.exists("#cancel"), "bob lacks cancel_task");
    ui.open("/bot/linux-1");
    ui.browser.wait_for_text("#bot-status", "Idle");
    for action in ["#quarantine", "#terminate", "#delete"] {
        assert!(!ui.browser.exists(action), "bob lacks the permission for {action}");
    }

    // Alice may.
    ui.browser.click("#sign-out");
    ui.browser.wait_for("#signin-form");
    ui.browser.type_into("#token", "token-of-alice-0123456789");
    ui.browser.click("#signin-submit");
    ui.browser.wait_for("#signed-in");
    ui.open(&format!("/task/{waiting}"));
    ui.browser.wait_for("#cancel");
    ui.open("/bot/linux-1");
    ui.browser.wait_for("#quarantine");
    ui.browser.wait_for("#terminate");
    ui.browser.wait_for("#delete");
}

/// How long the lists take to show with many tasks and bots: a measurement,
/// printed, not asserted (run with `--ignored --nocapture`; the README has
/// its figures). A daemon on a `state-fixture` of 100,000 ended and 10,000
/// pending tasks, `SCALE_BOTS` simulated bots (default 10,000) running tasks.
#[test]
#[ignore = "a measurement: run it by name, with --ignored"]
fn measure_the_lists_with_many_tasks_and_bots() {
    let dir = temp();
    let data = dir.path().join("data");
    let fixture = std::process::Command::new(apiary_tests::binary("apiary-load"))
        .args(["state-fixture", "--data-dir"])
        .arg(&data)
        .args(["--finished", "100000", "--pending", "10000", "--per-run", "20000"])
        .output()
        .unwrap();
    assert!(fixture.status.success(), "{}", apiary_tests::describe(&fixture));
    let http = free_local_address();
    let daemon = Daemon::start_with(&data, "127.0.0.1:0", &["--http-listen", &http]);
    http_address(&daemon);
    let bots = std::env::var("SCALE_BOTS").unwrap_or_else(|_| "10000".to_string());
    let mut load = std::process::Command::new(apiary_tests::binary("apiary-load"))
        .args(["--server", &daemon.addr, "--bots", &bots, "--submitters", "1", "--duration", "120"])
        .args(["--pool", "ci", "--task-ms", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wanted: u64 = bots.parse().expect("SCALE_BOTS is a number");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let counts: Value = serde_json::from_str(&daemon.cli().ok(&["bots", "count", "--json"])).unwrap();
        if counts["connected"].as_u64() >= Some(wanted) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the simulated bots never all connected: {counts}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut browser = Browser::start();
    let counted = |area: &str| {
        format!(
            "document.querySelector('{area}').innerText.trim() !== '' && !document.querySelector('{area}').innerText.includes('…')"
        )
    };
    for (route, counts) in [("/tasks", "#task-counts"), ("/tasks?created=7d", "#task-counts"), ("/bots", "#bot-counts")]
    {
        browser.navigate("about:blank");
        let loading = std::time::Instant::now();
        browser.navigate(&format!("http://{http}/#{route}"));
        browser.wait_until("a full page of rows", "document.querySelectorAll('tbody tr').length === 100");
        let listed = loading.elapsed();
        browser.wait_until("the counts", &counted(counts));
        eprintln!("{route}: list shown after {listed:?}, counts after {:?}", loading.elapsed());
        eprintln!("  counts: {}", browser.text(counts).replace('\n', " "));
        browser.screenshot(&format!("scale{}", route.replace(['/', '?', '='], "-")));
        let paging = std::time::Instant::now();
        browser.click("#page-next");
        browser.wait_until("page 2", "document.querySelector('.pager')?.innerText.includes('page 2')");
        eprintln!("  next page after {:?}", paging.elapsed());
    }
    let _ = load.kill();
    let _ = load.wait();
}
