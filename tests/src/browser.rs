//! A headless Chromium for tests of the web UI, driven over the DevTools
//! protocol through a pipe (`--remote-debugging-pipe`): the browser reads
//! commands on its file descriptor 3 and writes replies and events on 4, each
//! a JSON text ended by a NUL byte. No port, no WebSocket, no race to find the
//! browser: the pipe is ours from the start.
//!
//! Every wait polls a condition in the page with the harness's long bound
//! ([`PATIENCE`]); nothing sleeps a fixed time. Screenshots go to
//! `target/test-artifacts/web-ui/`. The browser is `/usr/bin/chromium`
//! (Debian's package), or the one `APIARY_TEST_CHROMIUM` names.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::PATIENCE;

const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const VIEWPORT_WIDTH: u32 = 1280;
const VIEWPORT_HEIGHT: u32 = 860;
/// A full-page screenshot is cut here: a long list is not worth a huge image.
const SCREENSHOT_MAX_HEIGHT: f64 = 3000.0;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The browser's side of the pipe must not collide with 3 and 4 while it is
/// moved there, so the pipe's descriptors are put at or above this first.
const FIRST_SAFE_FD: RawFd = 10;

/// One headless Chromium with one page, closed (its whole process group)
/// when dropped.
pub struct Browser {
    child: Child,
    commands: File,
    replies: Receiver<Value>,
    next_id: u64,
    session_id: String,
    /// Console messages, uncaught exceptions and log entries of the page.
    console: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with an empty page of 1280x860.
    pub fn start() -> Browser {
        let executable =
            std::env::var_os("APIARY_TEST_CHROMIUM").map_or(PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
        assert!(
            executable.exists(),
            "{} is missing: install Debian's chromium package (.ci/run does), or set APIARY_TEST_CHROMIUM",
            executable.display()
        );
        let profile = crate::temp();
        let (commands_read, commands_write) = pipe();
        let (replies_read, replies_write) = pipe();
        let mut command = Command::new(&executable);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--allow-file-access-from-files",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let (child_reads, child_writes) = (commands_read.as_raw_fd(), replies_write.as_raw_fd());
        // SAFETY: between fork and exec the closure only calls dup2, which is
        // async-signal-safe; both descriptors are at or above FIRST_SAFE_FD, so
        // moving them to 3 and 4 overwrites neither. The copies at 3 and 4 lose
        // close-on-exec, the originals keep it and close at exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_reads, 3) < 0 || libc::dup2(child_writes, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| panic!("start {}: {error}", executable.display()));
        drop((commands_read, replies_write));
        let console = Arc::new(Mutex::new(Vec::new()));
        let replies = read_messages(File::from(replies_read), console.clone());
        let mut browser = Browser {
            child,
            commands: File::from(commands_write),
            replies,
            next_id: 0,
            session_id: String::new(),
            console,
            _profile: profile,
        };
        browser.open_page();
        browser
    }

    /// Makes a page of its own and attaches to it.
    fn open_page(&mut self) {
        let target = self.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_string();
        let attached = self.send(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        self.session_id = attached["sessionId"].as_str().expect("a session id").to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(domain, json!({}));
        }
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// Calls a DevTools method on the page; panics on an error reply.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session_id = self.session_id.clone();
        self.send(Some(&session_id), method, params)
    }

    fn send(&mut self, session_id: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session_id) = session_id {
            message["sessionId"] = json!(session_id);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap_or_else(|error| panic!("send {method} to chromium: {error}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(reply) if reply["id"] == id => {
                    if let Some(error) = reply.get("error") {
                        panic!("{method} failed: {error}");
                    }
                    return reply["result"].clone();
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited before answering {method}"),
            }
        }
    }

    /// Loads `url` and waits until the document is complete.
    pub fn navigate(&mut self, url: &str) {
        let navigated = self.call("Page.navigate", json!({"url": url}));
        if let Some(error) = navigated.get("errorText") {
            panic!("navigate to {url}: {error}");
        }
        self.wait_until(&format!("{url} to load"), "document.readyState === 'complete'");
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) and
    /// returns its value; panics when it throws.
    pub fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression) {
            Ok(value) => value,
            Err(error) => panic!("{expression} threw: {error}\nconsole: {:#?}", self.console()),
        }
    }

    fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let reply = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        if let Some(details) = reply.get("exceptionDetails") {
            let description = details["exception"]["description"].as_str().unwrap_or_default();
            return Err(format!("{} {description}", details["text"].as_str().unwrap_or_default()));
        }
        Ok(reply["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `expression` until its value is truthy and returns that value; a
    /// throw counts as not yet (the page may be between two drawings). On
    /// giving up it saves a screenshot and says what the page showed.
    pub fn wait_until(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.try_eval(expression);
            if let Ok(value) = &value
                && truthy(value)
            {
                return value.clone();
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("gave-up-{}", file_name(what)));
                let text = self.try_eval("document.body ? document.body.innerText : ''");
                panic!(
                    "gave up waiting for {what} (last: {value:?})\npage text: {text:?}\nscreenshot: {}\nconsole: {:#?}",
                    shot.display(),
                    self.console()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until an element matches `selector`.
    pub fn wait_for(&mut self, selector: &str) {
        self.wait_until(&format!("{selector} to appear"), &format!("!!document.querySelector({})", js(selector)));
    }

    /// Waits until the element `selector` shows `text` (in its visible text).
    pub fn wait_for_text(&mut self, selector: &str, text: &str) {
        let expression =
            format!("(document.querySelector({}) || {{}}).innerText?.includes({}) || false", js(selector), js(text));
        self.wait_until(&format!("{selector} to show {text:?}"), &expression);
    }

    /// The visible text of the element `selector`, once there is one.
    pub fn text(&mut self, selector: &str) -> String {
        self.wait_for(selector);
        let value = self.eval(&format!("document.querySelector({}).innerText", js(selector)));
        value.as_str().unwrap_or_default().to_string()
    }

    /// Whether an element matches `selector` now.
    pub fn exists(&mut self, selector: &str) -> bool {
        self.eval(&format!("!!document.querySelector({})", js(selector))) == Value::Bool(true)
    }

    /// Clicks the middle of the element `selector` with the mouse, once it is
    /// there, enabled, and on top at that point (not under a dialog).
    pub fn click(&mut self, selector: &str) {
        let expression = format!(
            "(() => {{ const element = document.querySelector({});
               if (!element || element.disabled) return null;
               element.scrollIntoView({{block: 'center'}});
               const box = element.getBoundingClientRect();
               if (box.width === 0 || box.height === 0) return null;
               const point = {{x: box.left + box.width / 2, y: box.top + box.height / 2}};
               const hit = document.elementFromPoint(point.x, point.y);
               return hit && (hit === element || element.contains(hit)) ? point : null; }})()",
            js(selector)
        );
        let point = self.wait_until(&format!("{selector} to be clickable"), &expression);
        for event in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": event, "x": point["x"], "y": point["y"], "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Clicks the input `selector`, clears it and types `text` into it.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.eval(&format!("document.querySelector({}).select()", js(selector)));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Saves the page (all of it, up to a bound) as `NAME.png` in the
    /// artifacts directory, prints and returns the path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let width = metrics["cssContentSize"]["width"].as_f64().unwrap_or(VIEWPORT_WIDTH as f64);
        let height = metrics["cssContentSize"]["height"].as_f64().unwrap_or(VIEWPORT_HEIGHT as f64);
        let clip = json!({"x": 0, "y": 0, "width": width.max(VIEWPORT_WIDTH as f64),
            "height": height.clamp(VIEWPORT_HEIGHT as f64, SCREENSHOT_MAX_HEIGHT), "scale": 1});
        let shot =
            self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true, "clip": clip}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("a base64 screenshot");
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir).expect("the artifacts directory");
        let path = dir.join(format!("{}.png", file_name(name)));
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// What the page wrote to its console, threw, or logged, so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser, its renderers and helpers share its process group.
        // SAFETY: kill only sends a signal to the group we started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `target/test-artifacts/web-ui/`, beside the profile directories of the build.
pub fn artifacts_dir() -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test knows its path");
    let target = test_exe.ancestors().nth(3).expect("target/<profile>/deps/<test>");
    target.join("test-artifacts").join("web-ui")
}

/// A JavaScript string literal of `text`.
pub fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string is JSON")
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|number| number != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn file_name(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(80).collect()
}

/// A pipe whose two ends are close-on-exec and at or above FIRST_SAFE_FD.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(result, 0, "pipe2: {}", std::io::Error::last_os_error());
    (move_up(fds[0]), move_up(fds[1]))
}

fn move_up(fd: RawFd) -> OwnedFd {
    // SAFETY: fd is a descriptor this process just opened and owns; F_DUPFD_CLOEXEC
    // makes a copy, and the original is closed once, here.
    unsafe {
        let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_SAFE_FD);
        assert!(moved >= 0, "fcntl: {}", std::io::Error::last_os_error());
        libc::close(fd);
        OwnedFd::from_raw_fd(moved)
    }
}

/// Reads the browser's messages: replies go to the returned channel, console
/// output and errors of the page to `console`.
fn read_messages(mut from_browser: File, console: Arc<Mutex<Vec<String>>>) -> Receiver<Value> {
    let (replies, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buffer = [0u8; 64 * 1024];
        loop {
            let count = match from_browser.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(count) => count,
            };
            pending.extend_from_slice(&buffer[..count]);
            while let Some(end) = pending.iter().position(|byte| *byte == 0) {
                let message: Value = serde_json::from_slice(&pending[..end]).unwrap_or(Value::Null);
                pending.drain(..=end);
                if message.get("id").is_some() {
                    if replies.send(message).is_err() {
                        return;
                    }
                } else if let Some(line) = console_line(&message) {
                    console.lock().unwrap().push(line);
                }
            }
        }
    });
    receiver
}

/// A line for what the page said, threw or logged; None for other events.
fn console_line(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()?
                .iter()
                .map(|arg| arg.get("value").map_or_else(|| arg["description"].to_string(), Value::to_string))
                .collect();
            Some(format!("console.{}: {}", params["type"].as_str().unwrap_or("log"), args.join(" ")))
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            Some(format!(
                "uncaught: {} {}",
                details["text"].as_str().unwrap_or_default(),
                details["exception"]["description"].as_str().unwrap_or_default()
            ))
        }
        "Log.entryAdded" => {
            let entry = &params["entry"];
            Some(format!(
                "log {}: {} {}",
                entry["level"].as_str().unwrap_or_default(),
                entry["text"].as_str().unwrap_or_default(),
                entry["url"].as_str().unwrap_or_default()
            ))
        }
        _ => None,
    }
}

/// Writes the web UI's files as the daemon serves them into `dir` (the page
/// as `index.html`), and returns the page's `file://` URL.
pub fn write_ui_copy(dir: &Path) -> String {
    for path in apiary_daemon::web_ui::paths() {
        let asset = apiary_daemon::web_ui::asset(&path).expect("a listed path is an asset");
        let relative = if path == "/" { "index.html".to_string() } else { path.trim_start_matches('/').to_string() };
        let file = dir.join(relative);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, asset.bytes).unwrap();
    }
    format!("file://{}/index.html", dir.display())
}
