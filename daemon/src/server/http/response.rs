//! HTTP/1.1 responses as bytes: plain answers, pRPC's JSON and error
//! conventions (LUCI's `grpc/prpc`: the `)]}'` line before JSON against
//! cross-site script inclusion, the `X-Prpc-Grpc-Code` header on every reply,
//! errors as plain text), and the chunked body of an output stream.

use std::fmt::Write as _;

use apiary_swarming::GrpcCode;
use serde_json::Value;

/// The line pRPC puts before a JSON reply, so that a page including it as a
/// script gets a syntax error rather than the data.
pub const XSSI_PREFIX: &str = ")]}'\n";
/// The gRPC status code of a pRPC reply.
pub const GRPC_CODE_HEADER: &str = "X-Prpc-Grpc-Code";
const TEXT: &str = "text/plain; charset=utf-8";

/// A response whose whole body is known.
pub fn whole(status: u16, content_type: &str, headers: &[(&str, String)], body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut head = status_line(status);
    let _ = write!(head, "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    end_head(&mut head, keep_alive);
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A plain-text answer: the message and a new line.
pub fn text(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    let mut headers = Vec::new();
    if status == 401 {
        headers.push(("WWW-Authenticate", "Bearer".to_string()));
    }
    whole(status, TEXT, &headers, format!("{message}\n").as_bytes(), keep_alive)
}

/// 405, with the methods the path takes.
pub fn method_not_allowed(allowed: &str, keep_alive: bool) -> Vec<u8> {
    let message = format!("method not allowed here; use {allowed}");
    let headers = [("Allow", allowed.to_string())];
    whole(405, TEXT, &headers, format!("{message}\n").as_bytes(), keep_alive)
}

/// A pRPC call's answer in JSON.
pub fn prpc_answer(answer: &Value, keep_alive: bool) -> Vec<u8> {
    let mut body = XSSI_PREFIX.as_bytes().to_vec();
    serde_json::to_writer(&mut body, answer).expect("a JSON value always serializes");
    let headers = [(GRPC_CODE_HEADER, "0".to_string()), ("X-Content-Type-Options", "nosniff".to_string())];
    whole(200, "application/json", &headers, &body, keep_alive)
}

/// A pRPC call's failure: the HTTP status of its code, the code, the message.
pub fn prpc_error(code: GrpcCode, message: &str, keep_alive: bool) -> Vec<u8> {
    let mut headers =
        vec![(GRPC_CODE_HEADER, (code as i32).to_string()), ("X-Content-Type-Options", "nosniff".to_string())];
    if code == GrpcCode::Unauthenticated {
        headers.push(("WWW-Authenticate", "Bearer".to_string()));
    }
    whole(code.http_status(), TEXT, &headers, format!("{message}\n").as_bytes(), keep_alive)
}

/// The head of a task's output sent as a chunked body: where it starts, how
/// much the daemon held when it started, and whether the task had ended.
pub fn output_head(offset: u64, output_len: u64, task_ended: bool, keep_alive: bool) -> Vec<u8> {
    let mut head = status_line(200);
    let _ = write!(
        head,
        "Content-Type: {TEXT}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nX-Apiary-Output-Offset: {offset}\r\n\
         X-Apiary-Output-Length: {output_len}\r\nX-Apiary-Task-Ended: {task_ended}\r\n"
    );
    end_head(&mut head, keep_alive);
    head.into_bytes()
}

/// One chunk of a chunked body (nothing for no bytes: an empty chunk would
/// end the body), and the body's end after it when `last`.
pub fn chunk(data: &[u8], last: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(data.len() + 24);
    if !data.is_empty() {
        bytes.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
    }
    if last {
        bytes.extend_from_slice(b"0\r\n\r\n");
    }
    bytes
}

fn status_line(status: u16) -> String {
    format!("HTTP/1.1 {status} {}\r\n", reason(status))
}

fn end_head(head: &mut String, keep_alive: bool) {
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prpc_answer_is_prefixed_and_carries_its_code() {
        let bytes = prpc_answer(&serde_json::json!({"a": 1}), true);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nX-Prpc-Grpc-Code: 0") && head.contains("Content-Type: application/json"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, ")]}'\n{\"a\":1}");
        assert!(!head.contains("Connection: close"));
    }

    #[test]
    fn a_prpc_error_has_the_status_of_its_code_and_a_plain_message() {
        let text = String::from_utf8(prpc_error(GrpcCode::Unauthenticated, "no token", false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("X-Prpc-Grpc-Code: 16\r\n") && text.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(text.contains("Connection: close\r\n") && text.ends_with("\r\n\r\nno token\n"));
    }

    #[test]
    fn chunks_frame_their_bytes_and_the_last_ends_the_body() {
        assert_eq!(chunk(b"hello world, 16!", false), b"10\r\nhello world, 16!\r\n");
        assert_eq!(chunk(b"", false), b"");
        assert_eq!(chunk(b"", true), b"0\r\n\r\n");
        assert_eq!(chunk(b"ab", true), b"2\r\nab\r\n0\r\n\r\n");
    }
}
