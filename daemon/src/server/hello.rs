//! The hello: the first frame of every connection, where the peer says which
//! protocol it speaks and what it is. Until it arrives a connection may send
//! only a small frame (`MAX_HELLO_PAYLOAD_BYTES`), and only for the hello
//! timeout. Each check below refuses with its own message; trust that is
//! settled at the hello (a token, the principal it maps to) is one more check
//! here and one more field of `Accepted`.

use apiary_protocol::{ErrorCode, Frame, FrameKind, MAGIC, PROTOCOL_VERSION, Role};

/// What a good hello settles for the rest of the connection.
pub struct Accepted {
    pub role: Role,
}

pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn bad_hello(message: String) -> Refusal {
        Refusal { code: ErrorCode::BadHello, message }
    }
}

pub fn check_hello(frame: &Frame) -> Result<Accepted, Refusal> {
    if frame.kind != FrameKind::Hello {
        return Err(Refusal::bad_hello(format!("the first frame must be a hello, not a {:?} frame", frame.kind)));
    }
    let hello = frame.decode_hello().map_err(|error| Refusal::bad_hello(error.to_string()))?;
    if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
        return Err(Refusal::bad_hello(format!(
            "this daemon speaks protocol version {PROTOCOL_VERSION}; the hello said version {} (magic {:?})",
            hello.version, hello.magic
        )));
    }
    Ok(Accepted { role: hello.role })
}
