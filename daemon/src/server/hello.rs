//! The hello: the first frame of every connection, where the peer says which
//! protocol it speaks, what it is, and who it is (its bearer token). Until it
//! arrives a connection may send only a small frame (`MAX_HELLO_PAYLOAD_BYTES`),
//! and only for the hello timeout. Each check below refuses with its own
//! message. The token is checked here and nowhere else: what the connection
//! does later is done as the principal settled here, at no cost per request.

use std::sync::Arc;

use apiary_protocol::limits::MAX_TOKEN_BYTES;
use apiary_protocol::{ErrorCode, FrameKind, FrameView, MAGIC, PROTOCOL_VERSION, Role};

use crate::auth::{Access, Principal};

/// What a good hello settles for the rest of the connection.
pub struct Accepted {
    pub role: Role,
    /// Who the peer is; `None` when access is open.
    pub principal: Option<Arc<Principal>>,
}

pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn bad_hello(message: String) -> Refusal {
        Refusal { code: ErrorCode::BadHello, message }
    }

    fn unauthenticated(message: String) -> Refusal {
        Refusal { code: ErrorCode::Unauthenticated, message }
    }
}

pub fn check_hello(frame: FrameView<'_>, access: &Access) -> Result<Accepted, Refusal> {
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
    let principal = match access {
        Access::Open => None,
        Access::Tokens(principals) => {
            if hello.token.is_empty() {
                return Err(Refusal::unauthenticated(
                    "token: the hello carries none, and this daemon admits only principals with a token \
                     (give it with --token-file FILE or APIARY_TOKEN_FILE)"
                        .to_string(),
                ));
            }
            if hello.token.len() > MAX_TOKEN_BYTES {
                let message = format!("token: {} bytes is over the limit of {MAX_TOKEN_BYTES}", hello.token.len());
                return Err(Refusal::unauthenticated(message));
            }
            let Some(principal) = principals.authenticate(hello.token.as_bytes()) else {
                return Err(Refusal::unauthenticated(
                    "token: not the token of any principal in the daemon's configuration".to_string(),
                ));
            };
            Some(Arc::clone(principal))
        }
    };
    Ok(Accepted { role: hello.role, principal })
}
