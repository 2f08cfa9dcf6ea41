//! Safe defaults: a daemon without principals admits anyone who can reach it.
//! That is what a daemon on a loopback address did before tokens existed, and
//! still does; on any other address it must be asked for by name
//! (`--insecure-no-auth`), or the daemon refuses to start.

use std::net::SocketAddr;

use super::Access;

/// Whether the daemon may listen on `listen` with `access`: `Ok` with the line
/// to log once when access is open, `Ok(None)` when tokens are required.
pub fn check_open_access(
    listen: SocketAddr,
    access: &Access,
    insecure_no_auth: bool,
) -> Result<Option<String>, String> {
    if matches!(access, Access::Tokens(_)) {
        return Ok(None);
    }
    if listen.ip().is_loopback() {
        return Ok(Some(format!(
            "access is open: no principals are configured, so anyone who can connect to {listen} may use this \
             daemon (configure [[principals]] in a file given with --config)"
        )));
    }
    if insecure_no_auth {
        return Ok(Some(format!(
            "access is open on {listen} (--insecure-no-auth): no principals are configured, so anyone who can \
             reach this address may use this daemon"
        )));
    }
    Err(format!(
        "refusing to listen on {listen} without authentication: that address is not loopback, and no principals \
         are configured; configure [[principals]] in a configuration file given with --config FILE (README, \
         \"Configuration\"), or pass --insecure-no-auth to accept open access"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Principals};

    #[test]
    fn only_loopback_is_open_without_being_asked() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(check_open_access(at("127.0.0.1:7420"), &Access::Open, false).unwrap().is_some());
        assert!(check_open_access(at("[::1]:7420"), &Access::Open, false).unwrap().is_some());
        let refused = check_open_access(at("0.0.0.0:7420"), &Access::Open, false).unwrap_err();
        assert!(refused.contains("--config") && refused.contains("--insecure-no-auth"), "{refused}");
        assert!(check_open_access(at("10.1.2.3:7420"), &Access::Open, false).is_err());
        assert!(check_open_access(at("0.0.0.0:7420"), &Access::Open, true).unwrap().is_some());
        let tokens = Access::Tokens(Principals::new(vec![Principal::new("a", [0; 32])]));
        assert_eq!(check_open_access(at("0.0.0.0:7420"), &tokens, false), Ok(None));
    }
}
