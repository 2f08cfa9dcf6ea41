//! Which of the daemon's HTTP endpoints a request names (README, "HTTP API").

use apiary_protocol::ids::parse_task_id;

/// An endpoint the daemon serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// 200 while the event loop runs.
    Healthz,
    /// 200 once recovery is done and the listeners accept; 503 while shutting down.
    Readyz,
    /// Prometheus' text format.
    Metrics,
    /// The web UI's page (`/`, `/index.html`) and files (`/ui/...`: `crate::web_ui`).
    WebUi { path: &'a str },
    /// A pRPC call: `POST /prpc/<service>/<method>`.
    Prpc { service: &'a str, method: &'a str },
    /// A task's output from an offset: one read (`follow: false`), or pushed
    /// as it becomes durable until the task ends (`follow: true`).
    TaskOutput { task_id: u64, follow: bool },
}

/// Why a request names no endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path is served, with other methods (for the `Allow` header).
    MethodNotAllowed(&'static str),
    /// The path names a task by an id that is not one.
    BadTaskId(String),
}

pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, Miss> {
    let (route, allowed) = match path {
        "/healthz" => (Route::Healthz, "GET"),
        "/readyz" => (Route::Readyz, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        "/" | "/index.html" => (Route::WebUi { path }, "GET"),
        _ if path.starts_with("/ui/") => (Route::WebUi { path }, "GET"),
        _ => {
            if let Some(call) = path.strip_prefix("/prpc/") {
                let Some((service, method)) = call.split_once('/').filter(|(s, m)| !s.is_empty() && !m.is_empty())
                else {
                    return Err(Miss::NotFound);
                };
                (Route::Prpc { service, method }, "POST")
            } else if let Some(task) = path.strip_prefix("/api/v1/tasks/") {
                let (task_id, follow) = match task.split_once('/') {
                    Some((task_id, "output")) => (task_id, false),
                    Some((task_id, "output/stream")) => (task_id, true),
                    _ => return Err(Miss::NotFound),
                };
                let task_id = parse_task_id(task_id)
                    .map_err(|_| Miss::BadTaskId(format!("task id: {task_id:?} is not 16 hex digits")))?;
                (Route::TaskOutput { task_id, follow }, "GET")
            } else {
                return Err(Miss::NotFound);
            }
        }
    };
    if method != allowed {
        return Err(Miss::MethodNotAllowed(allowed));
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoints_with_their_methods() {
        assert_eq!(route("GET", "/healthz"), Ok(Route::Healthz));
        assert_eq!(route("POST", "/healthz"), Err(Miss::MethodNotAllowed("GET")));
        let call = Route::Prpc { service: "swarming.v2.Tasks", method: "NewTask" };
        assert_eq!(route("POST", "/prpc/swarming.v2.Tasks/NewTask"), Ok(call));
        assert_eq!(route("GET", "/prpc/swarming.v2.Tasks/NewTask"), Err(Miss::MethodNotAllowed("POST")));
        assert_eq!(route("POST", "/prpc/swarming.v2.Tasks/"), Err(Miss::NotFound));
        let stream = Route::TaskOutput { task_id: 0x0123_4567_89ab_cde0, follow: true };
        assert_eq!(route("GET", "/api/v1/tasks/0123456789abcde0/output/stream"), Ok(stream));
        assert!(matches!(route("GET", "/api/v1/tasks/12/output"), Err(Miss::BadTaskId(_))));
        assert_eq!(route("GET", "/api/v1/tasks/0123456789abcde0/other"), Err(Miss::NotFound));
        assert_eq!(route("GET", "/"), Ok(Route::WebUi { path: "/" }));
        assert_eq!(route("GET", "/ui/v/app.js"), Ok(Route::WebUi { path: "/ui/v/app.js" }));
        assert_eq!(route("POST", "/"), Err(Miss::MethodNotAllowed("GET")));
        assert_eq!(route("GET", "/other"), Err(Miss::NotFound));
        assert_eq!(route("GET", "/ui/tasks"), Ok(Route::WebUi { path: "/ui/tasks" }), "the UI says what it lacks");
    }
}
