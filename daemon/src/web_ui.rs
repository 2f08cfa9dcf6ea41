//! The web UI's files, built into the binary: plain HTML, CSS and JavaScript
//! modules from `daemon/ui/`, served as they are (no build step, nothing
//! fetched from elsewhere at run time). The UI is a single-page app with hash
//! routing (`/#/tasks`, `/#/task/ID`, `/#/bots`, `/#/bot/ID`, `/#/signin`), so
//! the daemon serves one page, `/`, and the files it loads.
//!
//! The HTTP listener's router calls [`asset`] for each `GET` (and `HEAD`) that is
//! not an API path, answers 404 when it returns `None`, and sends
//! [`SECURITY_HEADERS`] with every asset.
//!
//! Invariant: every file under `daemon/ui/` is listed in `FILES` (a test checks
//! it), and files are served only under `/ui/<version>/`, where the version is a
//! fingerprint of all of them: a file's URL changes whenever any file does, so
//! browsers may keep them forever, while `/` itself is revalidated each time.

use std::sync::OnceLock;

/// One file of the UI, ready to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    /// The `Content-Type` header.
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// The `Cache-Control` header.
    pub cache_control: &'static str,
}

/// Headers for every asset: the UI loads nothing from elsewhere and runs no
/// inline script, so a string that slipped into the page could not run either.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
];

/// The prefix of every file's URL; the version follows it.
pub const ASSET_PREFIX: &str = "/ui/";

const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";
const CACHE_REVALIDATE: &str = "no-cache";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Where `index.html` names the versioned directory of the files.
const VERSION_PLACEHOLDER: &str = "{{ASSETS}}";

const INDEX_TEMPLATE: &str = include_str!("../ui/index.html");

struct File {
    /// The path under `daemon/ui/` and under `/ui/<version>/`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! files {
    ($($name:literal => $content_type:expr),* $(,)?) => {
        const FILES: &[File] = &[
            $(File { name: $name, content_type: $content_type, bytes: include_bytes!(concat!("../ui/", $name)) }),*
        ];
    };
}

files! {
    "app.css" => CSS,
    "app.js" => JAVASCRIPT,
    "api.js" => JAVASCRIPT,
    "router.js" => JAVASCRIPT,
    "dom.js" => JAVASCRIPT,
    "format.js" => JAVASCRIPT,
    "widgets.js" => JAVASCRIPT,
    "output.js" => JAVASCRIPT,
    "pages/tasks.js" => JAVASCRIPT,
    "pages/task.js" => JAVASCRIPT,
    "pages/bots.js" => JAVASCRIPT,
    "pages/bot.js" => JAVASCRIPT,
    "pages/signin.js" => JAVASCRIPT,
    "favicon.svg" => SVG,
}

/// FNV-1a over the names and bytes of every file and the page: changes when
/// any of them does.
const FINGERPRINT: u64 = {
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, INDEX_TEMPLATE.as_bytes());
    let mut index = 0;
    while index < FILES.len() {
        hash = fnv1a(hash, FILES[index].name.as_bytes());
        hash = fnv1a(hash, FILES[index].bytes);
        index += 1;
    }
    hash
};

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

/// The version in the files' URLs: 16 hex digits.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| format!("{FINGERPRINT:016x}"))
}

/// The page, with the files' versioned directory filled in.
fn index_html() -> &'static [u8] {
    static INDEX: OnceLock<String> = OnceLock::new();
    let page = INDEX.get_or_init(|| {
        let directory = format!("{}{}", ASSET_PREFIX.trim_start_matches('/'), version());
        INDEX_TEMPLATE.replace(VERSION_PLACEHOLDER, &directory)
    });
    page.as_bytes()
}

/// The asset a request path names (a query string is ignored): `/` (and
/// `/index.html`) is the page; `/ui/<version>/<file>` one of its files.
/// `None` for anything else, including a file of another version.
pub fn asset(request_path: &str) -> Option<Asset> {
    let path = request_path.split(['?', '#']).next().unwrap_or_default();
    if path == "/" || path == "/index.html" {
        return Some(Asset { content_type: HTML, bytes: index_html(), cache_control: CACHE_REVALIDATE });
    }
    let name = path.strip_prefix(ASSET_PREFIX)?.strip_prefix(version())?.strip_prefix('/')?;
    let file = FILES.iter().find(|file| file.name == name)?;
    Some(Asset { content_type: file.content_type, bytes: file.bytes, cache_control: CACHE_FOREVER })
}

/// Every path [`asset`] answers, the page first: for tests that copy the UI
/// out, and for anyone who wants the list.
pub fn paths() -> Vec<String> {
    let mut paths = vec!["/".to_string()];
    paths.extend(FILES.iter().map(|file| format!("{ASSET_PREFIX}{}/{}", version(), file.name)));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn files_on_disk(dir: &Path, under: &str, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{under}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                files_on_disk(&entry.path(), &format!("{name}/"), found);
            } else if name != "index.html" {
                found.push(name);
            }
        }
    }

    #[test]
    fn every_file_of_the_ui_directory_is_served() {
        let mut on_disk = Vec::new();
        files_on_disk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("ui"), "", &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|file| file.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "daemon/ui/ and the files! list in web_ui.rs differ");
    }

    #[test]
    fn the_page_names_its_files_under_the_current_version() {
        let page = asset("/").unwrap();
        assert_eq!(page.content_type, HTML);
        assert_eq!(page.cache_control, CACHE_REVALIDATE);
        let text = std::str::from_utf8(page.bytes).unwrap();
        assert!(!text.contains(VERSION_PLACEHOLDER), "placeholder left in the page");
        assert!(text.contains(&format!("ui/{}/app.js", version())), "{text}");
        assert!(text.contains(&format!("ui/{}/app.css", version())), "{text}");
        assert_eq!(asset("/index.html"), Some(page));
        assert_eq!(asset("/?x=1"), Some(page));
    }

    #[test]
    fn files_are_served_under_the_version_only_and_cached_forever() {
        let script = asset(&format!("/ui/{}/pages/task.js", version())).unwrap();
        assert_eq!(script.content_type, JAVASCRIPT);
        assert_eq!(script.cache_control, CACHE_FOREVER);
        assert!(std::str::from_utf8(script.bytes).unwrap().contains("export"));
        assert_eq!(asset("/ui/app.js"), None);
        assert_eq!(asset("/ui/0000000000000000/app.js"), None);
        assert_eq!(asset(&format!("/ui/{}/../app.js", version())), None);
        assert_eq!(asset(&format!("/ui/{}/missing.js", version())), None);
        assert_eq!(asset("/prpc/swarming.v2.Tasks/ListTasks"), None);
    }

    #[test]
    fn every_listed_path_is_an_asset() {
        let paths = paths();
        assert_eq!(paths.len(), FILES.len() + 1);
        for path in paths {
            assert!(asset(&path).is_some(), "{path}");
        }
        assert_eq!(version().len(), 16);
    }
}
