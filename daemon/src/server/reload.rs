//! SIGHUP: the configuration file is read and checked again, as at a start,
//! and who may connect is replaced without dropping connections. A connection
//! whose principal lost the token it presented (revoked, or changed) is
//! closed, since everything it does is done as that principal; so is one that
//! connected before tokens were required. Every other connection goes on with
//! its principal's bot groups and permissions of the new file. Settings other
//! than these take effect at the next start. A file that is refused changes
//! nothing.

use super::startup::Reload;
use crate::auth::{Access, Principal};

/// The access the file gives now, unless it may not replace `current`.
pub fn read_again(reload: &Reload, current: &Access) -> Result<Access, String> {
    let access = (reload.load)(&reload.path)?;
    if let (Access::Tokens(_), Access::Open) = (current, &access) {
        return Err(format!(
            "{}: no principals are left in it, which would open access to anyone; restart the daemon to do that",
            reload.path.display()
        ));
    }
    Ok(access)
}

/// Whether a connection past its hello, as `principal`, is still admitted.
pub fn still_admitted(access: &Access, principal: Option<&Principal>) -> bool {
    match (access, principal) {
        (Access::Open, _) => true,
        (Access::Tokens(principals), Some(principal)) => principals.still_holds(principal),
        (Access::Tokens(_), None) => false,
    }
}

/// One line for the log: what the reload did.
pub fn describe(reload: &Reload, access: &Access, closed: usize) -> String {
    let principals = match access {
        Access::Open => "no principals: access is open".to_string(),
        Access::Tokens(principals) => principals.summary(),
    };
    format!(
        "reloaded the configuration from {} (SIGHUP): {principals}; closed {closed} connections whose token is no \
         longer accepted",
        reload.path.display()
    )
}
