//! HTTP clients beside the binary load (`--http-server ADDR --http-clients N`):
//! each thread keeps one keep-alive connection to the daemon's HTTP listener
//! and makes `--http-call` pRPC calls back to back for as long as the
//! submitters run, so that the binary protocol's figures are taken while the
//! HTTP side is busy. It reports HTTP calls a second, by status, and their
//! latency.
//!
//! `new-task` creates tasks in the pool `<--pool>-http`, which no simulated bot
//! serves, so they never count among the binary run's tasks; `get-result`
//! creates one such task first and then reads its result again and again.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

use apiary_benches::stats::{Summary, rate_per_sec};
use apiary_protocol::tls::Transport;

use crate::{LoadArgs, Shared};

/// The pRPC call each HTTP client makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HttpCall {
    /// `swarming.v2.Tasks/GetResult` of one task the client created first.
    GetResult,
    /// `swarming.v2.Tasks/NewTask` in the pool `<--pool>-http`.
    NewTask,
}

/// Bytes a response head may take before the client calls it broken.
const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;

/// What one HTTP client saw.
#[derive(Default)]
pub(crate) struct HttpLog {
    by_status: BTreeMap<u16, u64>,
    latencies_ns: Vec<u64>,
}

/// Starts the HTTP clients; each runs until `shared.stop_http`.
pub(crate) fn start(args: &LoadArgs, shared: &Arc<Shared>) -> Vec<thread::JoinHandle<HttpLog>> {
    (0..args.http_clients)
        .map(|index| {
            let (args, shared) = (args.clone(), Arc::clone(shared));
            thread::Builder::new()
                .name(format!("http-{index}"))
                .spawn(move || {
                    let mut log = HttpLog::default();
                    if let Err(error) = call_until_stopped(&args, index, &shared, &mut log) {
                        shared.fail(format!("HTTP client {index}: {error}"));
                    }
                    log
                })
                .expect("spawn an HTTP client thread")
        })
        .collect()
}

fn call_until_stopped(args: &LoadArgs, index: usize, shared: &Shared, log: &mut HttpLog) -> Result<(), String> {
    let server = args.http_server.as_deref().expect("HTTP clients need --http-server");
    let security = args.tls.security(server).map_err(|error| error.to_string())?;
    let socket = TcpStream::connect(server).map_err(|error| format!("cannot connect to {server}: {error}"))?;
    let _ = socket.set_nodelay(true);
    let mut stream = Transport::new(server, socket, &security).map_err(|error| error.to_string())?;
    let mut buffer = Vec::new();
    let task_id = match args.http_call {
        HttpCall::GetResult => Some(create_task_to_read(args, index, &mut stream, &mut buffer)?),
        HttpCall::NewTask => None,
    };
    let mut number = 0u64;
    while !shared.stop_http.load(Ordering::Relaxed) && !shared.stop_bots.load(Ordering::Relaxed) {
        number += 1;
        let request = request_bytes(args, index, number, task_id.as_deref());
        let sent_ns = shared.now_ns();
        stream.write_all(&request).map_err(|error| format!("cannot send a request: {error}"))?;
        let (status, _) = read_response(&mut stream, &mut buffer)?;
        log.latencies_ns.push(shared.now_ns() - sent_ns);
        *log.by_status.entry(status).or_default() += 1;
    }
    Ok(())
}

/// Creates the task a `get-result` client reads; returns its id.
fn create_task_to_read(
    args: &LoadArgs,
    index: usize,
    stream: &mut (impl Read + Write),
    buffer: &mut Vec<u8>,
) -> Result<String, String> {
    let request = request_bytes(&LoadArgs { http_call: HttpCall::NewTask, ..args.clone() }, index, 0, None);
    stream.write_all(&request).map_err(|error| format!("cannot send a request: {error}"))?;
    let (status, body) = read_response(stream, buffer)?;
    let body = String::from_utf8_lossy(&body);
    let task_id = body.split_once(r#""taskId":""#).and_then(|(_, rest)| rest.get(..16));
    match (status, task_id) {
        (200, Some(task_id)) => Ok(task_id.to_string()),
        _ => Err(format!("the task to read was not created: status {status}: {body}")),
    }
}

fn request_bytes(args: &LoadArgs, index: usize, number: u64, task_id: Option<&str>) -> Vec<u8> {
    let (method, body) = match args.http_call {
        HttpCall::GetResult => ("GetResult", format!(r#"{{"task_id": "{}"}}"#, task_id.unwrap_or_default())),
        HttpCall::NewTask => {
            let pool = format!("{}-http", args.pool);
            let body = format!(
                r#"{{"name": "http-load-{index}-{number}", "priority": 100, "task_slices": [{{"expiration_secs": 3600,
                "properties": {{"command": ["true"], "execution_timeout_secs": 60,
                "dimensions": [{{"key": "pool", "value": "{pool}"}}]}}}}]}}"#
            );
            ("NewTask", body)
        }
    };
    let mut request = format!(
        "POST /prpc/swarming.v2.Tasks/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        args.http_server.as_deref().unwrap_or_default(),
        body.len()
    );
    if !args.submitter_token.is_empty() {
        request.push_str(&format!("Authorization: Bearer {}\r\n", args.submitter_token));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    request.into_bytes()
}

/// Reads one response (a `Content-Length` body) and returns its status and body.
fn read_response(stream: &mut impl Read, buffer: &mut Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(format!("a response head over {MAX_RESPONSE_HEAD_BYTES} bytes"));
        }
        fill(stream, buffer)?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
    let status = status.ok_or_else(|| format!("not an HTTP response: {:?}", head.lines().next()))?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or_else(|| "a response without Content-Length".to_string())?;
    while buffer.len() < head_end + length {
        fill(stream, buffer)?;
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Ok((status, body))
}

fn fill(stream: &mut impl Read, buffer: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 << 10];
    match stream.read(&mut chunk) {
        Ok(0) => Err("the daemon closed the connection".to_string()),
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            Ok(())
        }
        Err(error) => Err(format!("cannot read a response: {error}")),
    }
}

/// Prints the HTTP clients' figures over `secs` seconds.
pub(crate) fn print(logs: Vec<HttpLog>, call: HttpCall, secs: f64) {
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut latencies_ns = Vec::new();
    let clients = logs.len();
    for log in logs {
        for (status, count) in log.by_status {
            *by_status.entry(status).or_default() += count;
        }
        latencies_ns.extend(log.latencies_ns);
    }
    let calls = latencies_ns.len() as u64;
    let statuses: Vec<String> = by_status.iter().map(|(status, count)| format!("{status}: {count}")).collect();
    println!(
        "http: {calls} {call:?} calls in {secs:.2} s, {:.0}/s over {clients} keep-alive connections (status {})",
        rate_per_sec(calls, secs),
        statuses.join(", ")
    );
    let micros: Vec<u64> = latencies_ns.iter().map(|ns| ns / 1000).collect();
    if let Some(summary) = Summary::of(&mut micros.clone()) {
        println!("http latency (us): {summary}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_one_after_another_by_their_length() {
        let bytes =
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n\r\n";
        let mut stream = &bytes[..];
        let mut buffer = Vec::new();
        assert_eq!(read_response(&mut stream, &mut buffer), Ok((200, b"abc".to_vec())));
        assert_eq!(read_response(&mut stream, &mut buffer), Ok((501, Vec::new())));
        assert!(buffer.is_empty());
        assert!(read_response(&mut stream, &mut buffer).unwrap_err().contains("closed"));
    }
}
