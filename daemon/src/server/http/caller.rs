//! Who makes an HTTP request: its `Authorization: Bearer TOKEN` header,
//! resolved with the same `Access` as a binary hello, at every request (HTTP
//! has no hello), and what that principal may do as `apiary_swarming` asks it.

use std::sync::Arc;

use apiary_protocol::limits::MAX_TOKEN_BYTES;

use crate::auth::{Access, EVERY_POOL, Grants, Permission, Principal};

/// The principal a request's `Authorization` header names: `None` while
/// access is open; `Err` with why when tokens are required and it names none.
pub fn authenticate(access: &Access, authorization: Option<&str>) -> Result<Option<Arc<Principal>>, String> {
    let Access::Tokens(principals) = access else { return Ok(None) };
    let Some(authorization) = authorization else {
        return Err("Authorization: missing; this daemon admits only principals with a token \
                    (send Authorization: Bearer TOKEN)"
            .to_string());
    };
    let token = authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| "Authorization: expected Bearer TOKEN".to_string())?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("Authorization: a token of {} bytes is over the limit of {MAX_TOKEN_BYTES}", token.len()));
    }
    principals
        .authenticate(token.as_bytes())
        .map(|principal| Some(Arc::clone(principal)))
        .ok_or_else(|| "Authorization: not the token of any principal in the daemon's configuration".to_string())
}

/// A request's principal's grants as `apiary_swarming::Caller`: everything
/// everywhere while access is open.
pub struct GrantsCaller<'a> {
    pub grants: Option<&'a Grants>,
}

impl apiary_swarming::Caller for GrantsCaller<'_> {
    fn allows(&self, permission: &str, pool: &str) -> bool {
        let Some(permission) = Permission::parse(permission) else { return false };
        self.grants.is_none_or(|grants| grants.allows(permission, pool))
    }

    fn pools_with(&self, permission: &str) -> Vec<String> {
        let Some(permission) = Permission::parse(permission) else { return Vec::new() };
        match self.grants {
            None => vec![EVERY_POOL.to_string()],
            Some(grants) if grants.allows_everywhere(permission) => vec![EVERY_POOL.to_string()],
            Some(grants) => grants.pools_with(permission),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principals, hash_token};
    use apiary_swarming::Caller;

    #[test]
    fn a_bearer_token_names_its_principal_and_anything_else_is_refused() {
        let access = Access::Tokens(Principals::new(vec![Principal::new("alice", hash_token(b"secret"))]));
        let named = authenticate(&access, Some("Bearer secret")).unwrap().unwrap();
        assert_eq!(&*named.name, "alice");
        assert!(authenticate(&access, Some("bearer  secret")).is_ok());
        assert!(authenticate(&access, None).unwrap_err().contains("missing"));
        assert!(authenticate(&access, Some("Basic secret")).unwrap_err().contains("Bearer"));
        assert!(authenticate(&access, Some("Bearer other")).unwrap_err().contains("not the token"));
        assert_eq!(authenticate(&Access::Open, None), Ok(None));
    }

    #[test]
    fn the_caller_reports_the_pools_of_its_grants() {
        let mut grants = Grants::default();
        grants.grant(Permission::CancelTask, "ci");
        grants.grant(Permission::ReadTasks, EVERY_POOL);
        let caller = GrantsCaller { grants: Some(&grants) };
        assert!(caller.allows("cancel_task", "ci") && !caller.allows("cancel_task", "prod"));
        assert!(!caller.allows("no_such_permission", "ci"));
        assert_eq!(caller.pools_with("cancel_task"), ["ci"]);
        assert_eq!(caller.pools_with("read_tasks"), ["*"]);
        assert!(caller.pools_with("delete_bot").is_empty());
        let open = GrantsCaller { grants: None };
        assert!(open.allows("delete_bot", "any") && open.pools_with("delete_bot") == ["*"]);
    }
}
