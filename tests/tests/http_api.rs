//! Swarming's v2 API driven end to end over plain HTTP, as a Swarming user's
//! script drives it: trigger, wait, read the output, list, count and cancel
//! tasks; list, inspect, terminate and delete bots; and the same calls under
//! bearer tokens and per-pool permissions. Every call goes to the real
//! `apiaryd`, and tasks run on real `apiary-bot`s. The answers are checked as
//! Swarming's v2 protojson prints them: lowerCamelCase names, int64 as
//! strings, RFC 3339 times, states by name, and the `)]}'` line and
//! `X-Prpc-Grpc-Code` header of LUCI's pRPC.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use apiary_tests::http::{HttpClient, Response};
use apiary_tests::{Bot, Daemon, PATIENCE, temp, token_hash_line};
use base64::Engine;
use serde_json::{Value, json};

/// A Swarming API client over one kept-alive HTTP connection.
struct Api {
    http: HttpClient,
    token: Option<String>,
}

impl Api {
    fn connect(daemon: &Daemon, token: Option<&str>) -> Api {
        Api { http: HttpClient::connect(&daemon.http_addr()), token: token.map(str::to_string) }
    }

    fn call(&mut self, method: &str, body: &Value) -> Response {
        self.http.call(&full_method(method), &body.to_string(), self.token.as_deref())
    }

    /// A call that must succeed: `200`, gRPC code 0, the pRPC prefix and headers.
    fn ok(&mut self, method: &str, body: Value) -> Value {
        let response = self.call(method, &body);
        assert_eq!((response.status, response.grpc_code()), (200, Some(0)), "{method} {body}: {}", response.text());
        assert_eq!(response.header("Content-Type"), Some("application/json"), "{method}");
        assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"), "{method}");
        assert!(response.text().starts_with(")]}'\n"), "{method}: the XSSI line first: {}", response.text());
        let answer = response.json();
        assert_protojson_names(&answer, method);
        answer
    }

    /// A call that must fail with `status` and gRPC `code`: returns the message.
    fn refused(&mut self, method: &str, body: Value, status: u16, code: u32) -> String {
        let response = self.call(method, &body);
        assert_eq!(
            (response.status, response.grpc_code()),
            (status, Some(code)),
            "{method} {body}: {}",
            response.text()
        );
        assert!(!response.text().starts_with(")]}'"), "a failure is plain text: {}", response.text());
        response.text()
    }

    /// Polls `GetResult` until the task is in `state`.
    fn wait_for_state(&mut self, task_id: &str, state: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let result = self.ok("Tasks/GetResult", json!({"task_id": task_id}));
            if result["state"] == state {
                return result;
            }
            assert!(Instant::now() < deadline, "task {task_id} never reached {state}: {result}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn new_task(&mut self, body: Value) -> String {
        let created = self.ok("Tasks/NewTask", body);
        let task_id = created["taskId"].as_str().expect("a taskId").to_string();
        assert_task_id(&task_id);
        task_id
    }
}

fn full_method(method: &str) -> String {
    format!("swarming.v2.{method}")
}

/// A one-slice request in Swarming's `task_slices` form.
fn request(command: &[&str], dimensions: &[(&str, &str)], tags: &[&str]) -> Value {
    let dimensions: Vec<Value> = dimensions.iter().map(|(key, value)| json!({"key": key, "value": value})).collect();
    json!({
        "name": "scenario",
        "priority": 100,
        "tags": tags,
        "task_slices": [{
            "expiration_secs": 600,
            "properties": {"command": command, "dimensions": dimensions, "execution_timeout_secs": 60},
        }],
    })
}

/// A request that waits in `pool` (where no bot is) until it is canceled or expires.
fn waiting_request(pool: &str, expiration_secs: u32, tags: &[&str]) -> Value {
    let mut body = request(&["true"], &[("pool", pool)], tags);
    body["task_slices"][0]["wait_for_capacity"] = json!(true);
    body["task_slices"][0]["expiration_secs"] = json!(expiration_secs);
    body
}

/// Every field name of an answer, at any depth, as protojson prints it:
/// lowerCamelCase, never the proto's snake_case.
fn assert_protojson_names(value: &Value, method: &str) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let camel = name.starts_with(|first: char| first.is_ascii_lowercase())
                    && name.chars().all(|char| char.is_ascii_alphanumeric());
                assert!(camel, "{method}: the field {name:?} is not lowerCamelCase in {value}");
                assert_protojson_names(field, method);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| assert_protojson_names(item, method)),
        _ => {}
    }
}

/// A task id as `apiary trigger` prints it: 16 lowercase hex digits.
fn assert_task_id(text: &str) {
    assert!(text.len() == 16 && text.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')), "{text:?}");
}

/// The run id of a task's first run: its id with 1 for the last digit.
fn first_run_of(task_id: &str) -> String {
    format!("{}1", &task_id[..15])
}

/// An RFC 3339 time in UTC, as protojson prints a Timestamp.
fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("a timestamp string: {value}"));
    let digits =
        |range: std::ops::Range<usize>| text.get(range).is_some_and(|part| part.bytes().all(|b| b.is_ascii_digit()));
    let fraction = text.get(19..text.len() - 1).unwrap_or("");
    assert!(
        text.len() >= 20
            && digits(0..4)
            && &text[4..5] == "-"
            && digits(5..7)
            && &text[7..8] == "-"
            && digits(8..10)
            && &text[10..11] == "T"
            && digits(11..13)
            && digits(14..16)
            && digits(17..19)
            && text.ends_with('Z')
            && (fraction.is_empty()
                || fraction.strip_prefix('.').is_some_and(|f| f.bytes().all(|b| b.is_ascii_digit()))),
        "not RFC 3339 in UTC: {text}"
    );
}

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The ids of a listing's items, in order: `field` is `taskId` or `botId`.
fn ids_in(listing: &Value, field: &str) -> Vec<String> {
    let items = listing["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    items.iter().map(|item| item[field].as_str().unwrap_or_else(|| panic!("{field} in {item}")).to_string()).collect()
}

fn ids_of(listing: &Value) -> Vec<String> {
    ids_in(listing, "taskId")
}

fn bot_ids_of(listing: &Value) -> Vec<String> {
    ids_in(listing, "botId")
}

fn start_with_http(data_dir: &Path, extra: &[&str]) -> Daemon {
    let args: Vec<&str> = ["--http-listen", "127.0.0.1:0"].iter().chain(extra).copied().collect();
    Daemon::start_with(data_dir, "127.0.0.1:0", &args)
}

#[test]
fn a_script_triggers_waits_reads_the_output_and_lists_tasks() {
    let data = temp();
    let daemon = start_with_http(data.path(), &[]);
    let work = temp();
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], work.path());
    let mut api = Api::connect(&daemon, None);

    // The body a Swarming Python client sends, unchanged: the older
    // single-slice form, dimensions as key/value pairs, tags.
    let swarming_py_body = json!({
        "name": "hello",
        "priority": 100,
        "user": "someone",
        "tags": ["purpose:scenario", "kind:hello"],
        "expiration_secs": 600,
        "service_account": "none",
        "properties": {
            "command": ["sh", "-c", "echo hello; sleep 0.05; echo world"],
            "dimensions": [{"key": "pool", "value": "ci"}],
            "env": [{"key": "GREETING", "value": "hi"}],
            "execution_timeout_secs": 60,
            "io_timeout_secs": 60,
            "grace_period_secs": 30,
            "idempotent": false,
        },
    });
    let created = api.ok("Tasks/NewTask", swarming_py_body);
    let hello = created["taskId"].as_str().unwrap().to_string();
    assert_task_id(&hello);
    assert!(hello.ends_with('0'), "a task id ends in 0: {hello}");
    let shown = &created["request"];
    assert_eq!(shown["taskId"], hello.as_str());
    assert_eq!(shown["name"], "hello");
    assert_eq!(shown["priority"], 100, "int32 is a JSON number");
    assert_eq!(shown["expirationSecs"], 600);
    assert_eq!(
        shown["taskSlices"][0]["properties"]["command"],
        json!(["sh", "-c", "echo hello; sleep 0.05; echo world"])
    );
    assert_eq!(shown["taskSlices"][0]["properties"]["dimensions"], json!([{"key": "pool", "value": "ci"}]));
    assert_eq!(shown["properties"]["executionTimeoutSecs"], 60, "the first slice's properties at the top too");
    assert_timestamp(&shown["createdTs"]);
    assert_eq!(created["taskResult"]["taskId"], hello.as_str());
    let state = &created["taskResult"]["state"];
    assert!(state == "PENDING" || state == "RUNNING", "handed to the parked bot at once, or not yet: {created}");
    assert!(created.get("task_id").is_none() && created.get("task_result").is_none(), "camelCase only: {created}");

    let result = api.wait_for_state(&hello, "COMPLETED");
    assert_eq!(result["taskId"], hello.as_str());
    assert_eq!(result["runId"], first_run_of(&hello).as_str(), "the run id as the CLI prints it");
    assert_eq!(result["botId"], "bot-1");
    assert_eq!(result["name"], "hello");
    assert_eq!(result["user"], "someone");
    for time in ["createdTs", "startedTs", "completedTs", "modifiedTs"] {
        assert_timestamp(&result[time]);
    }
    assert!(result.get("exitCode").is_none(), "exit code 0 is proto3's default, left out: {result}");
    assert!(result.get("failure").is_none(), "{result}");
    // It slept 50 ms: a duration of 0 would be left out.
    assert!(result["duration"].as_f64().is_some_and(|seconds| seconds >= 0.05), "a float of seconds: {result}");
    assert!(result.get("performanceStats").is_none(), "only when asked for");
    let with_stats = api.ok("Tasks/GetResult", json!({"taskId": hello, "includePerformanceStats": true}));
    assert!(with_stats["performanceStats"].is_object(), "JSON names are taken too: {with_stats}");

    let stdout = api.ok("Tasks/GetStdout", json!({"task_id": hello}));
    assert_eq!(stdout, json!({"output": base64("hello\nworld\n"), "state": "COMPLETED"}));
    let part = api.ok("Tasks/GetStdout", json!({"task_id": hello, "offset": "6", "length": 5}));
    assert_eq!(part["output"], base64("world"), "offset as an int64 string, length as a number");
    let past_the_end = api.ok("Tasks/GetStdout", json!({"task_id": hello, "offset": 100}));
    assert_eq!(past_the_end, json!({"state": "COMPLETED"}));

    let stored = api.ok("Tasks/GetRequest", json!({"task_id": hello}));
    assert_eq!(stored["taskId"], hello.as_str());
    assert!(stored["tags"].as_array().map(Vec::len).unwrap_or(0) >= 2, "{stored}");
    assert_eq!(stored["taskSlices"][0]["properties"]["env"], json!([{"key": "GREETING", "value": "hi"}]));
    assert_eq!(stored["taskSlices"][0]["expirationSecs"], 600);

    // The ids are the CLI's: each reads what the other created.
    assert_eq!(daemon.cli().show(&hello)["state"], "COMPLETED");
    let from_cli = daemon.cli().trigger(&["-d", "pool=ci", "--tag", "purpose:cli", "--", "true"]);
    assert_eq!(api.wait_for_state(&from_cli, "COMPLETED")["taskId"], from_cli.as_str());

    // A failing task: its exit code is an int64, so a string.
    let failing = api.new_task(request(&["sh", "-c", "exit 3"], &[("pool", "ci")], &["purpose:scenario"]));
    let failed = api.wait_for_state(&failing, "COMPLETED");
    assert_eq!((failed["exitCode"].clone(), failed["failure"].clone()), (json!("3"), json!(true)), "{failed}");

    let missing = "00000000000000a0";
    let batch = api.ok("Tasks/BatchGetResult", json!({"task_ids": [hello, failing, missing]}));
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["taskId"], hello.as_str());
    assert_eq!(results[0]["result"]["state"], "COMPLETED");
    assert_eq!(results[1]["result"]["exitCode"], "3");
    assert_eq!(results[2]["taskId"], missing);
    assert_eq!(results[2]["error"]["code"], 5, "NOT_FOUND for the one missing: {batch}");
    let states = api.ok("Tasks/ListTaskStates", json!({"task_id": [hello, failing]}));
    assert_eq!(states, json!({"states": ["COMPLETED", "COMPLETED"]}));

    // Listings: newest created first, paged by an opaque cursor.
    let all = json!({"state": "QUERY_ALL", "tags": ["purpose:scenario"]});
    let listed = api.ok("Tasks/ListTasks", all.clone());
    assert_eq!(ids_of(&listed), [failing.as_str(), hello.as_str()]);
    assert_timestamp(&listed["now"]);
    assert!(listed.get("cursor").is_none(), "no cursor on the last page: {listed}");
    let first_page = api.ok("Tasks/ListTasks", json!({"state": "QUERY_ALL", "tags": ["purpose:scenario"], "limit": 1}));
    assert_eq!(ids_of(&first_page), [failing.as_str()]);
    let cursor = first_page["cursor"].as_str().expect("a cursor for the next page");
    let body = json!({"state": "QUERY_ALL", "tags": ["purpose:scenario"], "limit": 1, "cursor": cursor});
    assert_eq!(ids_of(&api.ok("Tasks/ListTasks", body)), [hello.as_str()]);
    let requests = api.ok("Tasks/ListTaskRequests", all.clone());
    assert_eq!(ids_of(&requests), [failing.as_str(), hello.as_str()]);
    assert!(requests["items"][0]["taskSlices"].is_array(), "requests, not results: {requests}");
    let failures = api.ok("Tasks/ListTasks", json!({"state": "QUERY_COMPLETED_FAILURE"}));
    assert_eq!(ids_of(&failures), [failing.as_str()]);
    let counted = api.ok("Tasks/CountTasks", json!({"state": "QUERY_ALL", "tags": ["purpose:scenario"]}));
    assert_eq!(counted["count"], 2, "int32 is a number: {counted}");
    assert_timestamp(&counted["now"]);
    let successes = api.ok("Tasks/CountTasks", json!({"state": "QUERY_COMPLETED_SUCCESS"}));
    assert_eq!(successes["count"], 2, "hello and the one from the CLI");
    let none_pending = api.ok("Tasks/CountTasks", json!({}));
    assert!(none_pending.get("count").is_none(), "QUERY_PENDING by default; a count of 0 is left out: {none_pending}");

    // Mistakes are INVALID_ARGUMENT naming the field, a task nobody made NOT_FOUND.
    let malformed = api.refused("Tasks/GetResult", json!({"task_id": "not-a-task"}), 400, 3);
    assert!(malformed.contains("task_id"), "{malformed}");
    let unknown_field = api.refused("Tasks/GetResult", json!({"task_id": hello, "colour": "red"}), 400, 3);
    assert!(unknown_field.contains("colour"), "{unknown_field}");
    let bad_state = api.refused("Tasks/ListTasks", json!({"state": "QUERY_SOMETIMES"}), 400, 3);
    assert!(bad_state.contains("state"), "{bad_state}");
    let huge_limit = api.refused("Tasks/ListTasks", json!({"limit": 5000}), 400, 3);
    assert!(huge_limit.contains("limit") && huge_limit.contains("1000"), "{huge_limit}");
    let no_command = api.refused("Tasks/NewTask", json!({"task_slices": [{"properties": {}}]}), 400, 3);
    assert!(no_command.contains("command"), "{no_command}");
    let absent_tree = apiary_protocol::cas::Digest::of(b"never archived");
    let mut without_inputs = request(&["true"], &[("pool", "ci")], &[]);
    without_inputs["task_slices"][0]["properties"]["cas_input_root"] =
        json!({"digest": {"hash": absent_tree.hex(), "size_bytes": "14"}});
    let missing_inputs = api.refused("Tasks/NewTask", without_inputs, 400, 3);
    assert!(missing_inputs.contains(&format!("the store lacks 1 blob(s) of tree {absent_tree}")), "{missing_inputs}");
    let too_far = api.refused("Tasks/GetStdout", json!({"task_id": hello, "offset": "9223372036854775808"}), 400, 3);
    assert!(too_far.starts_with("offset: ") && too_far.contains("out of range"), "{too_far}");
    let not_found = api.refused("Tasks/GetResult", json!({"task_id": missing}), 404, 5);
    assert!(not_found.contains(missing), "{not_found}");
    api.refused("Tasks/GetStdout", json!({"task_id": missing}), 404, 5);
    api.refused("Tasks/GetRequest", json!({"task_id": missing}), 404, 5);
}

#[test]
fn waiting_tasks_are_canceled_one_by_one_or_by_tags_and_expire() {
    let data = temp();
    let daemon = start_with_http(data.path(), &[]);
    let mut api = Api::connect(&daemon, None);

    let lonely = api.new_task(waiting_request("nowhere", 600, &["batch:one"]));
    assert_eq!(api.ok("Tasks/GetResult", json!({"task_id": lonely}))["state"], "PENDING");
    let pending = api.ok("Tasks/ListTasks", json!({}));
    assert_eq!(ids_of(&pending), [lonely.as_str()], "QUERY_PENDING by default");
    assert_eq!(api.ok("Tasks/CancelTask", json!({"task_id": lonely})), json!({"canceled": true}));
    let canceled = api.ok("Tasks/GetResult", json!({"task_id": lonely}));
    assert_eq!(canceled["state"], "CANCELED");
    assert_timestamp(&canceled["abandonedTs"]);
    assert_eq!(api.ok("Tasks/CancelTask", json!({"task_id": lonely})), json!({}), "already ended: nothing done");

    let batch: Vec<String> = (0..3).map(|_| api.new_task(waiting_request("nowhere", 600, &["batch:many"]))).collect();
    let other = api.new_task(waiting_request("nowhere", 600, &["batch:other"]));
    let no_tags = api.refused("Tasks/CancelTasks", json!({}), 400, 3);
    assert!(no_tags.contains("tags"), "{no_tags}");
    let by_tags = api.ok("Tasks/CancelTasks", json!({"tags": ["batch:many"]}));
    assert_eq!(by_tags["matched"], 3, "{by_tags}");
    assert_timestamp(&by_tags["now"]);
    let states = api.ok("Tasks/ListTaskStates", json!({"task_id": [batch[0], batch[1], batch[2], other]}));
    assert_eq!(states, json!({"states": ["CANCELED", "CANCELED", "CANCELED", "PENDING"]}));
    let counted = api.ok("Tasks/CountTasks", json!({"state": "QUERY_CANCELED"}));
    assert_eq!(counted["count"], 4);

    // No bot can take it, and its slice waits one second.
    let expiring = api.new_task(waiting_request("nowhere", 1, &["batch:expiring"]));
    let expired = api.wait_for_state(&expiring, "EXPIRED");
    assert_timestamp(&expired["abandonedTs"]);
    assert_eq!(ids_of(&api.ok("Tasks/ListTasks", json!({"state": "QUERY_EXPIRED"}))), [expiring]);
    // Without wait_for_capacity, a task no bot could ever take ends at once.
    let mut hopeless = request(&["true"], &[("pool", "nowhere")], &[]);
    hopeless["task_slices"][0]["wait_for_capacity"] = json!(false);
    let created = api.ok("Tasks/NewTask", hopeless);
    assert_eq!(created["taskResult"]["state"], "NO_RESOURCE", "{created}");
}

#[test]
fn bots_are_listed_inspected_terminated_and_deleted() {
    let data = temp();
    let daemon = start_with_http(data.path(), &[]);
    let (work_1, work_2) = (temp(), temp());
    let _linux = Bot::start(&daemon.addr, "bot-linux", &["pool=ci", "os=Linux"], work_1.path());
    let mut mac = Bot::start(&daemon.addr, "bot-mac", &["pool=ci", "os=Mac"], work_2.path());
    let mut api = Api::connect(&daemon, None);

    let details = api.ok("Swarming/GetDetails", json!({}));
    assert!(details["serverVersion"].as_str().is_some_and(|version| !version.is_empty()), "{details}");

    let bot = api.ok("Bots/GetBot", json!({"bot_id": "bot-linux"}));
    assert_eq!(bot["botId"], "bot-linux");
    let dimensions = bot["dimensions"].as_array().expect("dimensions");
    let keys: Vec<&str> = dimensions.iter().map(|pair| pair["key"].as_str().unwrap()).collect();
    assert!(keys.is_sorted(), "StringListPairs, sorted by key: {bot}");
    for expected in [json!({"key": "id", "value": ["bot-linux"]}), json!({"key": "os", "value": ["Linux"]})] {
        assert!(dimensions.contains(&expected), "{expected} in {bot}");
    }
    assert_timestamp(&bot["firstSeenTs"]);
    assert_timestamp(&bot["lastSeenTs"]);
    assert!(bot.get("isDead").is_none() && bot.get("quarantined").is_none(), "{bot}");
    let state: Value = serde_json::from_str(bot["state"].as_str().expect("state is JSON text")).unwrap();
    assert_eq!(state["connected"], true, "{state}");

    let listed = api.ok("Bots/ListBots", json!({}));
    assert_eq!(bot_ids_of(&listed), ["bot-linux", "bot-mac"]);
    assert_timestamp(&listed["now"]);
    let linux_only = api.ok("Bots/ListBots", json!({"dimensions": [{"key": "os", "value": "Linux"}]}));
    assert_eq!(bot_ids_of(&linux_only), ["bot-linux"]);
    let first_page = api.ok("Bots/ListBots", json!({"limit": 1}));
    assert_eq!(bot_ids_of(&first_page), ["bot-linux"]);
    let next = json!({"limit": 1, "cursor": first_page["cursor"]});
    assert_eq!(bot_ids_of(&api.ok("Bots/ListBots", next)), ["bot-mac"]);
    assert_eq!(bot_ids_of(&api.ok("Bots/ListBots", json!({"is_dead": "TRUE"}))), Vec::<String>::new());
    let counts = api.ok("Bots/CountBots", json!({"dimensions": [{"key": "pool", "value": "ci"}]}));
    assert_eq!(counts["count"], 2, "{counts}");
    assert!(counts.get("busy").is_none() && counts.get("dead").is_none(), "{counts}");
    let aggregated = api.ok("Bots/GetBotDimensions", json!({"pool": "ci"}));
    let os = aggregated["botsDimensions"].as_array().unwrap().iter().find(|pair| pair["key"] == "os").cloned();
    assert_eq!(os, Some(json!({"key": "os", "value": ["Linux", "Mac"]})), "{aggregated}");
    assert_timestamp(&aggregated["ts"]);

    let task_id = api.new_task(request(&["true"], &[("pool", "ci"), ("os", "Linux")], &[]));
    api.wait_for_state(&task_id, "COMPLETED");
    let ran = api.ok("Bots/ListBotTasks", json!({"bot_id": "bot-linux", "state": "QUERY_ALL"}));
    assert_eq!(ids_of(&ran), [task_id.as_str()]);
    let by_default = api.refused("Bots/ListBotTasks", json!({"bot_id": "bot-linux"}), 400, 3);
    assert!(by_default.contains("state") && by_default.contains("QUERY_PENDING"), "{by_default}");
    let events = api.ok("Bots/ListBotEvents", json!({"bot_id": "bot-linux"}));
    let kinds: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"bot_connected") && kinds.contains(&"task_assigned"), "{events}");
    let assigned = events["items"].as_array().unwrap().iter().find(|e| e["eventType"] == "task_assigned").unwrap();
    assert_eq!(assigned["taskId"], first_run_of(&task_id).as_str());
    assert_timestamp(&assigned["ts"]);

    // Terminated, the bot exits; once gone it can be deleted, and then it is not there.
    let connected = api.refused("Bots/DeleteBot", json!({"bot_id": "bot-mac"}), 400, 3);
    assert!(connected.contains("bot-mac"), "only a dead or disconnected bot: {connected}");
    assert_eq!(api.ok("Bots/TerminateBot", json!({"bot_id": "bot-mac", "reason": "retired"})), json!({}));
    assert!(mac.wait_exit().success(), "a terminated bot exits cleanly");
    let deadline = Instant::now() + PATIENCE;
    let gone = loop {
        let bot = api.ok("Bots/GetBot", json!({"bot_id": "bot-mac"}));
        let state: Value = serde_json::from_str(bot["state"].as_str().unwrap()).unwrap();
        if state["shut_down"] == true && state["connected"] == false {
            break bot;
        }
        assert!(Instant::now() < deadline, "the bot never showed as shut down: {bot}");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gone["botId"], "bot-mac");
    let events = api.ok("Bots/ListBotEvents", json!({"bot_id": "bot-mac"}));
    assert!(events.to_string().contains("bot_terminate_requested"), "{events}");
    assert_eq!(api.ok("Bots/DeleteBot", json!({"bot_id": "bot-mac"})), json!({"deleted": true}));
    let deleted = api.refused("Bots/GetBot", json!({"bot_id": "bot-mac"}), 404, 5);
    assert!(deleted.contains("bot-mac"), "{deleted}");
    assert_eq!(bot_ids_of(&api.ok("Bots/ListBots", json!({}))), ["bot-linux"]);

    // Quarantined (by the CLI), the bot says so, and the filters find it.
    daemon.cli().ok(&["bots", "quarantine", "--reason", "flaky disk", "bot-linux"]);
    let quarantined = api.ok("Bots/GetBot", json!({"bot_id": "bot-linux"}));
    assert_eq!(quarantined["quarantined"], true, "{quarantined}");
    let state: Value = serde_json::from_str(quarantined["state"].as_str().unwrap()).unwrap();
    assert_eq!(state["quarantined"], "flaky disk");
    assert_eq!(bot_ids_of(&api.ok("Bots/ListBots", json!({"quarantined": "TRUE"}))), ["bot-linux"]);
    assert_eq!(
        bot_ids_of(&api.ok("Bots/ListBots", json!({"quarantined": 1}))),
        Vec::<String>::new(),
        "FALSE by number"
    );
    assert_eq!(api.ok("Bots/CountBots", json!({}))["quarantined"], 1);
    api.refused("Bots/GetBot", json!({"bot_id": "no-such-bot"}), 404, 5);
    let no_id = api.refused("Bots/GetBot", json!({}), 400, 3);
    assert!(no_id.contains("bot_id"), "{no_id}");
}

/// A daemon whose principals are `admin` (every grant, every pool), `carol`
/// (create, read tasks and bots in pool `ci` only; no `cancel_task`) and the
/// bots (`ci-*` in pool ci, `prod-*` in pool prod).
struct Secured {
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Secured {
    fn start() -> Secured {
        let dir = temp();
        let mut text = String::from("http_listen = \"127.0.0.1:0\"\n");
        for name in ["admin", "carol", "bots"] {
            let token_file = dir.path().join(format!("{name}.token"));
            std::fs::write(&token_file, Secured::token(name)).unwrap();
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token_file)));
        }
        text.push_str(
            "\n[[bot_groups]]\nprincipal = \"bots\"\nbot_id_prefixes = [\"ci-\"]\ndimensions = { pool = \"ci\" }\n\
             \n[[bot_groups]]\nprincipal = \"bots\"\nbot_id_prefixes = [\"prod-\"]\ndimensions = { pool = \"prod\" }\n\
             \n[[permissions]]\nprincipal = \"admin\"\npools = [\"*\"]\ngrants = [\"create_task\", \"cancel_task\", \
             \"read_tasks\", \"read_bots\", \"manage_bots\", \"delete_bot\"]\n\
             \n[[permissions]]\nprincipal = \"carol\"\npools = [\"ci\"]\ngrants = [\"create_task\", \"read_tasks\", \
             \"read_bots\"]\n\
             \n[[permissions]]\nprincipal = \"bots\"\npools = [\"*\"]\ngrants = [\"read_bots\"]\n",
        );
        let config = dir.path().join("apiary.toml");
        std::fs::write(&config, text).unwrap();
        let daemon =
            Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
        Secured { dir, daemon }
    }

    fn token(name: &str) -> String {
        format!("token-of-{name}-0123456789")
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.token"))
    }

    fn api(&self, name: &str) -> Api {
        Api::connect(&self.daemon, Some(&Secured::token(name)))
    }

    fn bot(&self, bot_id: &str, pool: &str) -> Bot {
        let work = self.dir.path().join(format!("work-{bot_id}"));
        let token = self.token_file("bots");
        let dimension = format!("pool={pool}");
        Bot::start_with(&self.daemon.addr, bot_id, &[&dimension], &work, &["--token-file", token.to_str().unwrap()])
    }
}

#[test]
fn tokens_and_pool_permissions_govern_every_call() {
    let secured = Secured::start();
    let _ci_bot = secured.bot("ci-1", "ci");
    let _prod_bot = secured.bot("prod-1", "prod");
    let mut admin = secured.api("admin");
    let mut carol = secured.api("carol");

    let mut anonymous = Api::connect(&secured.daemon, None);
    let refusal = anonymous.call("Tasks/ListTasks", &json!({}));
    assert_eq!((refusal.status, refusal.grpc_code()), (401, Some(16)), "{}", refusal.text());
    assert_eq!(refusal.header("WWW-Authenticate"), Some("Bearer"));
    let mut forger = Api::connect(&secured.daemon, Some("token-of-nobody-0123456789"));
    forger.refused("Tasks/NewTask", request(&["true"], &[("pool", "ci")], &[]), 401, 16);
    forger.refused("Bots/ListBots", json!({}), 401, 16);
    let output = anonymous.http.get("/api/v1/tasks/00000000000000a0/output");
    assert_eq!(output.status, 401);
    let scraped = anonymous.http.get("/metrics");
    assert_eq!(scraped.status, 200, "metrics need no token");
    let refusals = Scrape::parse(&scraped.text());
    assert_eq!(refusals.get("apiary_refused_requests_total", &[("reason", "unauthenticated")]), 4.0);

    let ci_task = carol.new_task(request(&["true"], &[("pool", "ci")], &["who:carol"]));
    let prod_task = admin.new_task(request(&["true"], &[("pool", "prod")], &["who:admin"]));
    carol.wait_for_state(&ci_task, "COMPLETED");
    admin.wait_for_state(&prod_task, "COMPLETED");
    let stored = carol.ok("Tasks/GetRequest", json!({"task_id": ci_task}));
    assert_eq!(stored["authenticated"], "carol", "{stored}");
    let denied = carol.refused("Tasks/NewTask", request(&["true"], &[("pool", "prod")], &[]), 403, 7);
    assert!(denied.contains("create_task") && denied.contains("prod"), "{denied}");

    // carol sees pool ci only: listings and counts skip prod, a prod task is not there.
    let all = json!({"state": "QUERY_ALL"});
    assert_eq!(ids_of(&carol.ok("Tasks/ListTasks", all.clone())), [ci_task.as_str()]);
    assert_eq!(ids_of(&admin.ok("Tasks/ListTasks", all.clone())), [prod_task.as_str(), ci_task.as_str()]);
    assert_eq!(carol.ok("Tasks/CountTasks", all.clone())["count"], 1);
    assert_eq!(ids_of(&carol.ok("Tasks/ListTaskRequests", all)), [ci_task.as_str()]);
    carol.refused("Tasks/GetResult", json!({"task_id": prod_task}), 404, 5);
    let batch = carol.ok("Tasks/BatchGetResult", json!({"task_ids": [ci_task, prod_task]}));
    assert_eq!(batch["results"][0]["result"]["state"], "COMPLETED");
    assert_eq!(batch["results"][1]["error"]["code"], 5, "{batch}");
    assert_eq!(bot_ids_of(&carol.ok("Bots/ListBots", json!({}))), ["ci-1"]);
    assert_eq!(bot_ids_of(&admin.ok("Bots/ListBots", json!({}))), ["ci-1", "prod-1"]);
    assert_eq!(carol.ok("Bots/CountBots", json!({}))["count"], 1);
    carol.refused("Bots/GetBot", json!({"bot_id": "prod-1"}), 404, 5);

    // Without cancel_task, carol cannot cancel even her own pool's tasks.
    let blocked = {
        let mut body = request(&["true"], &[("pool", "ci"), ("os", "none")], &["who:carol"]);
        body["task_slices"][0]["wait_for_capacity"] = json!(true);
        carol.new_task(body)
    };
    let refused = carol.refused("Tasks/CancelTask", json!({"task_id": blocked}), 403, 7);
    assert!(refused.contains("cancel_task"), "{refused}");
    assert_eq!(carol.ok("Tasks/GetResult", json!({"task_id": blocked}))["state"], "PENDING");
    carol.refused("Bots/TerminateBot", json!({"bot_id": "ci-1"}), 403, 7);
    carol.refused("Tasks/CancelTasks", json!({"tags": ["who:carol"]}), 403, 7);
    // What is in pool prod is not there for carol, whichever way she asks.
    let prod_pool = json!({"dimensions": [{"key": "pool", "value": "prod"}]});
    assert_eq!(bot_ids_of(&carol.ok("Bots/ListBots", prod_pool)), Vec::<String>::new());
    assert!(carol.ok("Bots/GetBotDimensions", json!({"pool": "prod"})).get("botsDimensions").is_none());
    carol.refused("Bots/ListBotEvents", json!({"bot_id": "prod-1"}), 404, 5);
    carol.refused("Bots/ListBotTasks", json!({"bot_id": "prod-1", "state": "QUERY_ALL"}), 404, 5);
    carol.refused("Swarming/GetPermissions", json!({"bot_id": "prod-1"}), 404, 5);
    carol.refused("Swarming/GetPermissions", json!({"task_id": prod_task}), 404, 5);
    carol.refused("Tasks/GetStdout", json!({"task_id": prod_task}), 404, 5);
    carol.refused("Tasks/GetRequest", json!({"task_id": prod_task}), 404, 5);
    assert_eq!(admin.ok("Tasks/CancelTask", json!({"task_id": blocked})), json!({"canceled": true}));

    // GetPermissions says the same.
    let carols = carol.ok("Swarming/GetPermissions", json!({"task_id": ci_task}));
    assert_eq!(carols, json!({"listBots": ["ci"], "listTasks": ["ci"]}), "nothing else granted");
    let admins = admin.ok("Swarming/GetPermissions", json!({"task_id": prod_task, "bot_id": "prod-1"}));
    for granted in ["cancelTask", "cancelTasks", "deleteBot", "deleteBots", "terminateBot"] {
        assert_eq!(admins[granted], true, "{granted}: {admins}");
    }
    assert_eq!(admins["listTasks"], json!(["*"]), "{admins}");
    let carols_pool = carol.ok("Swarming/GetPermissions", json!({"tags": ["pool:ci"]}));
    assert!(carols_pool.get("cancelTasks").is_none(), "{carols_pool}");

    // Each refusal was counted once, by its reason.
    let scraped = Scrape::parse(&anonymous.http.get("/metrics").text());
    let refused = |reason: &str| scraped.get("apiary_refused_requests_total", &[("reason", reason)]);
    assert_eq!(refused("permission_denied"), 4.0, "NewTask, CancelTask, TerminateBot and CancelTasks of carol");
    assert_eq!(refused("unauthenticated"), 4.0);
}

/// A scrape of `/metrics` in Prometheus' text format: each family's type, and
/// every sample with its labels.
struct Scrape {
    types: Vec<(String, String)>,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape { types: Vec::new(), samples: Vec::new() };
        for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with("# HELP ")) {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("# TYPE NAME KIND");
                scrape.types.push((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "an unknown comment: {line}");
            let sample = Sample::parse(line);
            assert!(scrape.family_of(&sample.name).is_some(), "a sample before its # TYPE: {line}");
            scrape.samples.push(sample);
        }
        scrape
    }

    /// The declared family a sample belongs to, and its type.
    fn family_of(&self, sample_name: &str) -> Option<&str> {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| sample_name.strip_suffix(suffix));
        self.types
            .iter()
            .find(|(name, kind)| name == sample_name || (kind == "histogram" && Some(name.as_str()) == base))
            .map(|(_, kind)| kind.as_str())
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let same = |sample: &Sample| {
            sample.name == name
                && sample.labels.len() == labels.len()
                && labels.iter().all(|(key, value)| sample.labels.iter().any(|(k, v)| k == key && v == value))
        };
        self.samples.iter().find(|sample| same(sample)).map(|sample| sample.value)
    }

    /// Every histogram's buckets count up with their bound, and the last
    /// (`+Inf`) is its `_count`.
    fn check_histograms(&self) {
        for (family, _) in self.types.iter().filter(|(_, kind)| kind == "histogram") {
            let buckets: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter(|sample| sample.name == format!("{family}_bucket"))
                .map(|sample| {
                    let bound = sample.labels.iter().find(|(key, _)| key == "le").expect("a bucket has le").1.as_str();
                    (if bound == "+Inf" { f64::INFINITY } else { bound.parse().expect("a bound") }, sample.value)
                })
                .collect();
            assert!(
                buckets.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1),
                "{family}: {buckets:?}"
            );
            assert_eq!(buckets.last().map(|last| last.0), Some(f64::INFINITY), "{family} ends with +Inf");
            assert_eq!(buckets.last().map(|last| last.1), Some(self.get(&format!("{family}_count"), &[])), "{family}");
            assert!(self.value(&format!("{family}_sum"), &[]).is_some(), "{family}_sum");
        }
    }

    /// A sample that must be there.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.samples))
    }
}

impl Sample {
    /// `name{key="value",...} value`, with `\\`, `\"` and `\n` escaped in values.
    fn parse(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("a sample line: {line}"));
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inside) = rest.strip_prefix('{') {
            let mut chars = inside.char_indices();
            let mut key = String::new();
            loop {
                let (at, char) = chars.next().unwrap_or_else(|| panic!("labels never closed: {line}"));
                match char {
                    '}' => {
                        rest = &inside[at + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, quote)| quote), Some('"'), "a quoted value: {line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, char)| char) {
                                Some('"') => break,
                                Some('\\') => match chars.next().map(|(_, char)| char) {
                                    Some('n') => value.push('\n'),
                                    Some(escaped @ ('\\' | '"')) => value.push(escaped),
                                    other => panic!("a bad escape {other:?}: {line}"),
                                },
                                Some(char) => value.push(char),
                                None => panic!("a value never closed: {line}"),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    char => key.push(char),
                }
            }
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number.parse().unwrap_or_else(|_| panic!("a sample value: {line}")),
        };
        Sample { name, labels, value }
    }
}

fn scrape(http: &mut HttpClient) -> Scrape {
    let response = http.get("/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    Scrape::parse(&response.text())
}

#[test]
fn metrics_count_what_was_run() {
    let data = temp();
    let daemon = start_with_http(data.path(), &["--snapshot-interval-secs", "1"]);
    let work = temp();
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], work.path());
    let mut api = Api::connect(&daemon, None);
    let mut scraper = HttpClient::connect(&daemon.http_addr());

    // Two tasks complete (one with exit code 1: still COMPLETED, as in Swarming).
    let succeeding = api.new_task(request(&["true"], &[("pool", "ci")], &[]));
    let failing = api.new_task(request(&["sh", "-c", "exit 1"], &[("pool", "ci")], &[]));
    api.wait_for_state(&succeeding, "COMPLETED");
    api.wait_for_state(&failing, "COMPLETED");
    // One runs, seen busy, then is killed.
    let sleeper = api.new_task(request(&["sleep", "60"], &[("pool", "ci")], &[]));
    api.wait_for_state(&sleeper, "RUNNING");
    let busy = scrape(&mut scraper);
    assert_eq!(busy.get("apiary_tasks_running", &[]), 1.0);
    assert_eq!(busy.get("apiary_bots", &[("status", "busy")]), 1.0);
    assert_eq!(busy.get("apiary_bots", &[("status", "idle")]), 0.0);
    assert_eq!(bot_ids_of(&api.ok("Bots/ListBots", json!({"is_busy": "TRUE"}))), ["bot-1"]);
    assert_eq!(api.ok("Bots/GetBot", json!({"bot_id": "bot-1"}))["taskId"], first_run_of(&sleeper).as_str());
    assert_eq!(api.ok("Bots/CountBots", json!({}))["busy"], 1);
    let left_running = api.ok("Tasks/CancelTask", json!({"task_id": sleeper}));
    assert_eq!(left_running, json!({"wasRunning": true}), "without kill_running a running task goes on");
    let killed = api.ok("Tasks/CancelTask", json!({"task_id": sleeper, "kill_running": true}));
    assert_eq!(killed, json!({"canceled": true, "wasRunning": true}));
    api.wait_for_state(&sleeper, "KILLED");
    // One canceled while it waits, one expired, one left waiting in pool gpu,
    // and one that no bot could ever take.
    let canceled = api.new_task(waiting_request("nowhere", 600, &[]));
    api.ok("Tasks/CancelTask", json!({"task_id": canceled}));
    let expiring = api.new_task(waiting_request("nowhere", 1, &[]));
    api.new_task(waiting_request("gpu", 600, &[]));
    let mut hopeless = request(&["true"], &[("pool", "nowhere")], &[]);
    hopeless["task_slices"][0]["wait_for_capacity"] = json!(false);
    assert_eq!(api.ok("Tasks/NewTask", hopeless)["taskResult"]["state"], "NO_RESOURCE");
    api.wait_for_state(&expiring, "EXPIRED");
    let _client = apiary_protocol::Client::connect(&daemon.addr, apiary_protocol::Role::Client, "metrics-test")
        .expect("a binary client connection");

    let before = scrape(&mut scraper);
    api.refused("Tasks/GetResult", json!({"task_id": "00000000000000a0"}), 404, 5);
    api.refused("Tasks/NewTask", json!({"task_slices": []}), 400, 3);
    // Refused by the HTTP listener itself, before the core sees them.
    api.refused("Tasks/GetResult", json!({"task_id": "not-a-task"}), 400, 3);
    assert_eq!(api.http.request("POST", "/prpc/swarming.v2.Tasks/GetResult", &[], b"{}").status, 400);
    assert_eq!(scraper.get("/no-such-page").status, 404);
    let after = scrape(&mut scraper);

    assert_eq!(after.family_of("apiary_tasks_created_total"), Some("counter"));
    assert_eq!(after.get("apiary_tasks_created_total", &[]), 7.0);
    let ended = |state: &str| after.get("apiary_tasks_ended_total", &[("state", state)]);
    assert_eq!(ended("COMPLETED"), 2.0);
    assert_eq!(ended("KILLED"), 1.0);
    assert_eq!(ended("CANCELED"), 1.0);
    assert_eq!(ended("EXPIRED"), 1.0);
    assert_eq!(ended("NO_RESOURCE"), 1.0);
    for state in ["TIMED_OUT", "BOT_DIED", "CLIENT_ERROR"] {
        assert_eq!(ended(state), 0.0, "{state}, there from zero on");
    }
    assert_eq!(after.get("apiary_tasks_pending", &[("pool", "gpu")]), 1.0);
    assert_eq!(after.value("apiary_tasks_pending", &[("pool", "ci")]).unwrap_or(0.0), 0.0);
    assert_eq!(after.get("apiary_tasks_running", &[]), 0.0);
    let bots = |status: &str| after.get("apiary_bots", &[("status", status)]);
    assert_eq!(
        (bots("alive"), bots("idle"), bots("busy"), bots("dead"), bots("quarantined")),
        (1.0, 1.0, 0.0, 0.0, 0.0)
    );
    let connections = |kind: &str| after.get("apiary_connections", &[("kind", kind)]);
    assert_eq!(connections("client"), 1.0, "the binary client held open");
    assert_eq!(connections("bot"), 1.0);
    assert_eq!(connections("http"), 2.0, "the API client and the scraper");
    assert_eq!(connections("awaiting_hello"), 0.0);
    let refused = |scrape: &Scrape, reason: &str| scrape.get("apiary_refused_requests_total", &[("reason", reason)]);
    assert_eq!(refused(&after, "not_found") - refused(&before, "not_found"), 2.0);
    assert_eq!(refused(&after, "invalid_request") - refused(&before, "invalid_request"), 3.0);

    assert_eq!(after.family_of("apiary_dispatch_latency_seconds"), Some("histogram"));
    assert_eq!(after.family_of("apiary_fsync_latency_seconds"), Some("histogram"));
    after.check_histograms();
    assert_eq!(after.get("apiary_dispatch_latency_seconds_count", &[]), 3.0, "three tasks were given to a bot");
    assert_eq!(after.get("apiary_dispatch_latency_seconds_bucket", &[("le", "+Inf")]), 3.0);
    assert!(after.get("apiary_fsync_latency_seconds_count", &[]) > 0.0);
    assert!(after.get("apiary_fsync_latency_seconds_sum", &[]) > 0.0);
    assert!(after.get("apiary_wal_bytes", &[]) > 0.0);
    assert!(after.get("apiary_wal_segments", &[]) >= 1.0);

    daemon.cli().ok(&["bots", "quarantine", "--reason", "checking the gauge", "bot-1"]);
    assert_eq!(scrape(&mut scraper).get("apiary_bots", &[("status", "quarantined")]), 1.0);

    // A closed HTTP connection is no longer counted.
    drop(api);
    let deadline = Instant::now() + PATIENCE;
    while scrape(&mut scraper).get("apiary_connections", &[("kind", "http")]) != 1.0 {
        assert!(Instant::now() < deadline, "the closed HTTP connection is still counted");
        thread::sleep(Duration::from_millis(20));
    }

    // Something changed: a snapshot follows within the second.
    let deadline = Instant::now() + PATIENCE;
    let age = loop {
        if let Some(age) = scrape(&mut scraper).value("apiary_snapshot_age_seconds", &[]) {
            break age;
        }
        assert!(Instant::now() < deadline, "no snapshot age after a snapshot");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(age >= 0.0 && age < PATIENCE.as_secs_f64(), "{age}");
}
