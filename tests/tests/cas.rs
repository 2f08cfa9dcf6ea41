//! The content-addressed store end to end: `apiary cas archive` and
//! `apiary cas download` against the real daemon, its checks on what it
//! stores and serves, its limit, its permissions, and a resumed upload driven
//! on the protocol.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use apiary_protocol::cas::Digest;
use apiary_protocol::limits::MAX_CAS_CHUNK_BYTES;
use apiary_protocol::{Client, ClientError, ErrorCode, Reply, Request, Role};
use apiary_tests::{Bot, Cli, Daemon, describe, temp, token_hash_line};

/// Exit code of `apiary` when the daemon refused the request.
const REFUSED: i32 = 88;

/// Bytes that do not repeat within a chunk, so a misplaced chunk shows.
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|index| ((index * 31 + index / 251) as u8) ^ seed).collect()
}

/// A tree with nested directories, an executable, a symlink, an empty file
/// and a file over the chunk size.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("lib/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("lib/nested/deeper/data.txt"), b"deep data\n").unwrap();
    fs::write(root.join("lib/same.txt"), b"deep data\n").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("large.bin"), patterned(2 * MAX_CAS_CHUNK_BYTES + 12_345, 7)).unwrap();
    symlink("lib/nested/deeper/data.txt", root.join("link")).unwrap();
}

/// Insists the two trees hold the same names, bytes, executable bits and symlink targets.
fn assert_same_tree(expected: &Path, actual: &Path) {
    let mut names: Vec<PathBuf> = fs::read_dir(expected).unwrap().map(|entry| entry.unwrap().path()).collect();
    names.sort();
    let mut actual_names: Vec<PathBuf> = fs::read_dir(actual).unwrap().map(|entry| entry.unwrap().path()).collect();
    actual_names.sort();
    let file_names = |paths: &[PathBuf]| -> Vec<String> {
        paths.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(file_names(&names), file_names(&actual_names), "entries of {}", actual.display());
    for path in names {
        let other = actual.join(path.file_name().unwrap());
        let (metadata, other_metadata) = (fs::symlink_metadata(&path).unwrap(), fs::symlink_metadata(&other).unwrap());
        assert_eq!(metadata.file_type(), other_metadata.file_type(), "{}", other.display());
        if metadata.is_symlink() {
            assert_eq!(fs::read_link(&path).unwrap(), fs::read_link(&other).unwrap(), "{}", other.display());
        } else if metadata.is_dir() {
            assert_same_tree(&path, &other);
        } else {
            assert!(fs::read(&path).unwrap() == fs::read(&other).unwrap(), "bytes of {}", other.display());
            let executable = |mode: u32| mode & 0o111 != 0;
            assert_eq!(
                executable(metadata.permissions().mode()),
                executable(other_metadata.permissions().mode()),
                "executable bit of {}",
                other.display()
            );
        }
    }
}

/// Runs `cas archive` and returns the root digest and the summary line.
fn archive(cli: &Cli, args: &[&str]) -> (String, String) {
    let mut full = vec!["cas", "archive"];
    full.extend_from_slice(args);
    let output = cli.run(&full);
    assert!(output.status.success(), "{}", describe(&output));
    let digest = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(digest.parse::<Digest>().is_ok(), "a digest: {digest:?}");
    (digest, String::from_utf8(output.stderr).unwrap())
}

fn client(daemon: &Daemon) -> Client {
    Client::connect(&daemon.addr, Role::Client, "cas-test").unwrap()
}

fn find_missing(daemon: &Daemon, digests: &[Digest]) -> Vec<Digest> {
    match client(daemon).call(&Request::CasFindMissing { digests: digests.to_vec() }).unwrap() {
        Reply::CasMissing { digests } => digests,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn an_archived_tree_downloads_the_same_and_a_second_archive_uploads_nothing() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let tree = dir.path().join("tree");
    make_tree(&tree);

    let (root, summary) = archive(&cli, &[tree.to_str().unwrap()]);
    assert!(summary.contains("5 files, 2109535 bytes in the tree; uploaded 9 blobs"), "{summary}");
    let (again, summary) = archive(&cli, &[tree.to_str().unwrap()]);
    assert_eq!(again, root, "the same tree has the same digest");
    assert!(summary.contains("uploaded 0 blobs (0 bytes); 9 blobs"), "nothing moves the second time: {summary}");

    let out = dir.path().join("out");
    let output = cli.run(&["cas", "download", &root, out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_same_tree(&tree, &out.join("tree"));
    // The tree written out is the tree archived, as REAPI names it.
    let (rearchived, _) = archive(&cli, &["--dir", out.to_str().unwrap()]);
    assert_eq!(rearchived, root);

    let (contents, _) = archive(&cli, &["--dir", tree.to_str().unwrap()]);
    let only_contents = dir.path().join("only-contents");
    assert!(cli.run(&["cas", "download", &contents, only_contents.to_str().unwrap()]).status.success());
    assert_same_tree(&tree, &only_contents);
}

#[test]
fn a_corrupt_blob_is_detected_at_download_and_removed_from_the_store() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let bytes = b"these bytes will rot on the daemon's disk\n";
    fs::write(tree.join("file"), bytes).unwrap();
    let (root, _) = archive(&cli, &[tree.to_str().unwrap()]);

    let digest = Digest::of(bytes);
    let name = format!("{}-{}", digest.hex(), digest.size_bytes);
    let blob = daemon.data_dir.join("cas/blobs").join(&name[..2]).join(&name);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    let mut rotten = fs::read(&blob).unwrap();
    rotten[0] ^= 1;
    fs::write(&blob, rotten).unwrap();

    let output = cli.run(&["cas", "download", &root, dir.path().join("out").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("blob {digest} was corrupt in the store")), "{stderr}");
    assert!(!blob.exists(), "the corrupt blob is removed");
    assert_eq!(find_missing(&daemon, &[digest]), [digest], "and reported missing from then on");
    daemon.log.wait_for("the corruption in the log", |line| line.contains("was corrupt").then_some(()));

    let (again, summary) = archive(&cli, &[tree.to_str().unwrap()]);
    assert_eq!(again, root);
    assert!(summary.contains("uploaded 1 blobs"), "the lost blob is sent again: {summary}");
}

#[test]
fn a_download_of_a_digest_the_store_lacks_fails_naming_it() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let absent = Digest::of(b"never uploaded").to_string();
    let output = daemon.cli().run(&["cas", "download", &absent, dir.path().join("out").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("blob {absent} is not in the store")));
}

#[test]
fn an_upload_past_the_store_limit_is_refused_naming_the_limit() {
    let dir = temp();
    let limit = (1u64 << 20).to_string();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--cas-max-bytes", &limit]);
    let file = dir.path().join("big");
    fs::write(&file, patterned(MAX_CAS_CHUNK_BYTES + 1, 3)).unwrap();
    let output = daemon.cli().run(&["cas", "archive", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("over its limit of {limit} bytes (--cas-max-bytes)")), "{stderr}");

    let small = dir.path().join("small");
    fs::write(&small, b"fits").unwrap();
    archive(&daemon.cli(), &[small.to_str().unwrap()]);
}

#[test]
fn an_interrupted_large_upload_resumes_where_it_stopped() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let blob = patterned(3 * MAX_CAS_CHUNK_BYTES + 777, 11);
    let digest = Digest::of(&blob);
    let chunk = |offset: usize| {
        let end = (offset + MAX_CAS_CHUNK_BYTES).min(blob.len());
        Request::CasUploadChunk { digest, offset: offset as u64, data: blob[offset..end].to_vec() }
    };
    let offset_of = |reply: Reply| match reply {
        Reply::CasUploadOffset { offset } => offset,
        other => panic!("unexpected reply {other:?}"),
    };

    let mut first = client(&daemon);
    assert_eq!(offset_of(first.call(&Request::CasUploadStart { digest }).unwrap()), 0);
    for offset in [0, MAX_CAS_CHUNK_BYTES] {
        let reached = offset_of(first.call(&chunk(offset)).unwrap());
        assert_eq!(reached, (offset + MAX_CAS_CHUNK_BYTES) as u64);
    }
    drop(first);
    daemon.restart();

    let mut second = client(&daemon);
    let half = 2 * MAX_CAS_CHUNK_BYTES;
    assert_eq!(offset_of(second.call(&Request::CasUploadStart { digest }).unwrap()), half as u64);
    let refused = second.call(&chunk(0)).unwrap_err();
    assert!(
        matches!(&refused, ClientError::Refused { code: ErrorCode::InvalidRequest, message }
            if message.contains(&format!("continues at offset {half}, not 0"))),
        "{refused}"
    );
    assert_eq!(offset_of(second.call(&chunk(half)).unwrap()), half as u64 + MAX_CAS_CHUNK_BYTES as u64);
    assert_eq!(offset_of(second.call(&chunk(3 * MAX_CAS_CHUNK_BYTES)).unwrap()), digest.size_bytes, "stored");
    assert_eq!(find_missing(&daemon, &[digest]), []);

    let read = Request::CasRead { digest, offset: half as u64, max_bytes: 100 };
    assert_eq!(second.call(&read).unwrap(), Reply::CasData { data: blob[half..half + 100].to_vec() });
    let too_large = Request::CasRead { digest, offset: 0, max_bytes: MAX_CAS_CHUNK_BYTES as u32 + 1 };
    let refused = second.call(&too_large).unwrap_err().to_string();
    assert!(refused.contains("max_bytes: 1048577 bytes, over the limit of 1048576 (MAX_CAS_CHUNK_BYTES)"), "{refused}");
}

#[test]
fn a_token_without_write_cas_cannot_archive() {
    let dir = temp();
    let mut text = String::new();
    for (name, grants) in [("writer", "\"read_cas\", \"write_cas\""), ("reader", "\"read_cas\"")] {
        let token = dir.path().join(format!("{name}.token"));
        fs::write(&token, format!("token-of-{name}-0123456789\n")).unwrap();
        text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token)));
        text.push_str(&format!("\n[[permissions]]\nprincipal = \"{name}\"\npools = [\"ci\"]\ngrants = [{grants}]\n"));
    }
    let config = dir.path().join("apiary.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
    let (writer, reader) = (
        daemon.cli_with_token(&dir.path().join("writer.token")),
        daemon.cli_with_token(&dir.path().join("reader.token")),
    );
    let tree = dir.path().join("tree");
    make_tree(&tree);

    let output = reader.run(&["cas", "archive", tree.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission write_cas: principal reader lacks it in every pool"), "{stderr}");

    let (root, _) = archive(&writer, &[tree.to_str().unwrap()]);
    let out = dir.path().join("out");
    let output = reader.run(&["cas", "download", &root, out.to_str().unwrap()]);
    assert!(output.status.success(), "read_cas is enough to download: {}", describe(&output));
    assert_same_tree(&tree, &out.join("tree"));
}

#[test]
fn a_task_whose_input_tree_is_not_whole_in_the_store_is_refused_naming_what_is_missing() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("kept"), b"kept\n").unwrap();
    fs::write(tree.join("lost"), b"this blob goes missing\n").unwrap();
    let (root, _) = archive(&cli, &["--dir", tree.to_str().unwrap()]);
    let trigger =
        |root: &str| cli.run(&["trigger", "--cas-input-root", root, "--dimension", "pool=ci", "--", "cat", "kept"]);
    let whole = trigger(&root);
    assert!(whole.status.success(), "a whole tree is accepted: {}", describe(&whole));

    let lost = Digest::of(b"this blob goes missing\n");
    let name = format!("{}-{}", lost.hex(), lost.size_bytes);
    // Lost behind the daemon's back: it learns what its store holds when it starts.
    fs::remove_file(daemon.data_dir.join("cas/blobs").join(&name[..2]).join(&name)).unwrap();
    daemon.restart();
    let output = trigger(&root);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cas_input_root: the store lacks 1 blob(s) of tree {root}: {lost}")), "{stderr}");

    let absent = Digest::of(b"no such tree").to_string();
    let output = trigger(&absent);
    assert_eq!(output.status.code(), Some(REFUSED), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("lacks 1 blob(s) of tree {absent}: {absent}")));
}

/// The whole way: a tree archived, a task that reads it on a bot and writes
/// outputs, `collect --output-dir` bringing the outputs back; the same
/// inputs again come from the bot's cache, and an idempotent task with the
/// same input root is deduplicated and returns the same outputs.
#[test]
fn a_task_reads_its_input_tree_and_its_outputs_come_back_with_collect() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let (root, _) = archive(&cli, &["--dir", tree.to_str().unwrap()]);
    let _bot = Bot::start(&daemon.addr, "cas-bot", &["pool=cas"], &dir.path().join("bot"));

    // The inputs are in the work directory; everything goes back out, plus a new file.
    let script = "set -e; cp -a . \"$APIARY_OUTDIR/inputs\"; ./run.sh > \"${ISOLATED_OUTDIR}/ran.txt\"";
    let trigger = |extra: &[&str]| {
        let mut args = vec!["--cas-input-root", &root, "--dimension", "pool=cas"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        cli.trigger(&args)
    };
    let first = trigger(&["--idempotent"]);
    let collected = dir.path().join("collected");
    let output = cli.run(&["collect", "--output-dir", collected.to_str().unwrap(), &first]);
    assert!(output.status.success(), "{}", describe(&output));
    let outputs = collected.join(&first);
    assert_same_tree(&tree, &outputs.join("inputs"));
    assert_eq!(fs::read(outputs.join("ran.txt")).unwrap(), b"hi\n");
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(collected.join("summary.json")).unwrap()).unwrap();
    let results = &summary[&first]["results"];
    let output_root = results["cas_output_root"]["digest"].clone();
    assert!(output_root["hash"].is_string(), "{results}");
    // Three distinct blobs downloaded; the second copy of one, and the empty file, cost nothing.
    let download = &results["cas_stats"]["download"];
    assert_eq!((download["items_cold"].as_u64(), download["items_hot"].as_u64()), (Some(3), Some(2)), "{results}");
    // Only ran.txt and the new root directory were not in the store already.
    assert_eq!(results["cas_stats"]["upload"]["items_cold"].as_u64(), Some(2), "{results}");

    // The same inputs, not idempotent: from the bot's cache this time.
    let second = trigger(&[]);
    let shown = cli.wait_for_state(&second, "COMPLETED");
    let download = &shown["cas_stats"]["download"];
    assert_eq!((download["items_cold"].as_u64(), download["items_hot"].as_u64()), (Some(0), Some(5)), "{shown}");
    assert_eq!(shown["cas_output_root"]["digest"], output_root, "the same inputs made the same outputs");
    assert_eq!(shown["cas_stats"]["upload"]["items_cold"].as_u64(), Some(0), "and moved nothing: {shown}");

    // Idempotent with the same input root: the first run's result and outputs.
    let deduped = trigger(&["--idempotent"]);
    let shown = cli.wait_for_state(&deduped, "COMPLETED");
    assert_eq!(shown["deduped_from"].as_str().map(|id| &id[..15]), Some(&first[..15]), "{shown}");
    let again = dir.path().join("again");
    let output = cli.run(&["collect", "--output-dir", again.to_str().unwrap(), &deduped]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_same_tree(&outputs, &again.join(&deduped));

    // `reproduce` sets the inputs up here as the bot did.
    let here = dir.path().join("here");
    let output = cli.run(&["reproduce", "--work-dir", here.to_str().unwrap(), &first]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_same_tree(&tree, &here.join("out/inputs"));
}
