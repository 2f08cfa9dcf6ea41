//! One HTTP/1.1 request read from a connection's buffer with `httparse`,
//! within fixed bounds: the request line and headers together, the number of
//! headers, and the body (`Content-Length` only). A bound broken, or a
//! request this daemon does not take, becomes a `Refusal` with the status to
//! answer and a message naming the header or the limit; the connection is
//! closed after it, since what follows in its bytes cannot be trusted.

use super::limits::{MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEADERS};

/// The headers the daemon reads; any other is passed over, whatever its bytes.
const READ_HEADERS: [&str; 6] =
    ["content-length", "transfer-encoding", "content-type", "authorization", "connection", "expect"];

/// What the daemon needs of a request's head, copied out of the buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What follows `?`, if anything.
    pub query: String,
    /// HTTP/1.1 (`true`) or HTTP/1.0.
    pub http_11: bool,
    pub content_length: usize,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// The connection is to stay open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the peer waits for a word before it sends the body.
    pub expects_continue: bool,
    /// Bytes of the request line and headers, with the blank line.
    pub head_bytes: usize,
}

impl RequestHead {
    /// The whole request's bytes: head and body.
    pub fn total_bytes(&self) -> usize {
        self.head_bytes + self.content_length
    }
}

/// A request the daemon refuses to read, and how it answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

/// Reads the head at the front of `buffer`: `Ok(None)` while it is not whole.
pub fn parse_head(buffer: &[u8]) -> Result<Option<RequestHead>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buffer) {
        Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD_BYTES => {
            return Err(head_too_large());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, format!("headers: more than the limit of {MAX_HEADERS}")));
        }
        Err(error) => return Err(Refusal::new(400, format!("malformed request: {error}"))),
    };
    if head_bytes > MAX_HEAD_BYTES {
        return Err(head_too_large());
    }
    let http_11 = request.version == Some(1);
    let target = request.path.unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = RequestHead {
        method: request.method.unwrap_or_default().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        http_11,
        keep_alive: http_11,
        head_bytes,
        ..RequestHead::default()
    };
    let mut content_length = None;
    for header in request.headers.iter() {
        let name = header.name;
        if !READ_HEADERS.iter().any(|read| name.eq_ignore_ascii_case(read)) {
            continue;
        }
        let value = std::str::from_utf8(header.value)
            .map_err(|_| Refusal::new(400, format!("{name}: the value is not UTF-8")))?
            .trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(Refusal::new(400, "Content-Length: given twice with different values"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::new(
                411,
                format!("Transfer-Encoding: {value:?} request bodies are not taken; send the body with Content-Length"),
            ));
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expects_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            head.keep_alive = keeps_alive(value, http_11);
        }
    }
    head.content_length = content_length.unwrap_or(0);
    Ok(Some(head))
}

fn head_too_large() -> Refusal {
    Refusal::new(431, format!("request line and headers: over the limit of {MAX_HEAD_BYTES} bytes"))
}

fn parse_content_length(value: &str) -> Result<usize, Refusal> {
    let digits = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    let length = value.parse::<usize>().ok().filter(|_| digits);
    let Some(length) = length else {
        return Err(Refusal::new(400, format!("Content-Length: {value:?} is not a number of bytes")));
    };
    if length > MAX_BODY_BYTES {
        return Err(Refusal::new(413, format!("Content-Length: {length} bytes is over the limit of {MAX_BODY_BYTES}")));
    }
    Ok(length)
}

/// HTTP/1.1 keeps a connection unless it says `close`; HTTP/1.0 closes it
/// (this daemon does not take 1.0's `keep-alive`: one response, then close).
fn keeps_alive(connection_header: &str, http_11: bool) -> bool {
    let says_close = connection_header.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"));
    http_11 && !says_close
}

/// The value of `name` in a query string (`a=1&b=2`), if given; no
/// percent-decoding: the parameters this daemon takes are numbers.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == name).map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<RequestHead>, Refusal> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn a_whole_head_is_read_with_what_the_daemon_needs() {
        let text = "POST /prpc/swarming.v2.Tasks/GetResult?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\
                    Content-Type: application/json\r\nAuthorization: Bearer abc\r\n\r\n{\"task_id\":1}";
        let parsed = head(text).unwrap().unwrap();
        assert_eq!(parsed.method, "POST");
        assert_eq!((parsed.path.as_str(), parsed.query.as_str()), ("/prpc/swarming.v2.Tasks/GetResult", "x=1"));
        assert_eq!(parsed.content_length, 12);
        assert_eq!(parsed.content_type.as_deref(), Some("application/json"));
        assert_eq!(parsed.authorization.as_deref(), Some("Bearer abc"));
        assert!(parsed.keep_alive && parsed.http_11);
        assert_eq!(parsed.head_bytes, text.len() - "{\"task_id\":1}".len());
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None, "not whole yet");
    }

    #[test]
    fn connection_close_and_http_10_do_not_keep_the_connection() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(head("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap().keep_alive);
    }

    #[test]
    fn bounds_and_bodies_the_daemon_does_not_take_are_refused_naming_why() {
        let refusal = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(refusal.status, 411);
        assert!(refusal.message.contains("Content-Length"), "{}", refusal.message);
        let too_long = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        assert_eq!(head(&too_long).unwrap_err().status, 413);
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap_err().status, 400);
        let many: String = (0..=MAX_HEADERS).map(|index| format!("X-{index}: 1\r\n")).collect();
        assert_eq!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err().status, 431);
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&big).unwrap_err().status, 431, "a head over the limit, even unfinished");
        assert_eq!(head("NOT HTTP\r\n\r\n").unwrap_err().status, 400);
        let not_utf8 = parse_head(b"GET / HTTP/1.1\r\nContent-Type: \xff\r\n\r\n").unwrap_err();
        assert_eq!((not_utf8.status, not_utf8.message.as_str()), (400, "Content-Type: the value is not UTF-8"));
        assert!(parse_head(b"GET / HTTP/1.1\r\nUser-Agent: \xff\r\n\r\n").is_ok(), "a header not read");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            if let Ok(Some(head)) = parse_head(&bytes) {
                proptest::prop_assert!(head.head_bytes <= bytes.len() && head.content_length <= MAX_BODY_BYTES);
            }
        }

        #[test]
        fn a_head_cut_anywhere_is_not_whole_until_its_last_byte(cut in 0usize..120) {
            let text = b"POST /prpc/swarming.v2.Tasks/NewTask HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\
                         Authorization: Bearer t\r\n\r\n{}";
            let head_bytes = text.len() - 2;
            let cut = cut.min(text.len());
            let parsed = parse_head(&text[..cut]).expect("a prefix of a good request is not refused");
            proptest::prop_assert_eq!(parsed.map(|head| head.head_bytes), (cut >= head_bytes).then_some(head_bytes));
        }
    }

    #[test]
    fn query_values_are_found_by_name() {
        assert_eq!(query_value("offset=10&x=2", "offset"), Some("10"));
        assert_eq!(query_value("x=2", "offset"), None);
        assert_eq!(query_value("", "offset"), None);
    }
}
