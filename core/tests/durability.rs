//! A state made durable only after the files it records: the fsyncs `fsutil::sync_soon` runs on threads of their
//! own are waited for by every durable write of the state, and one that failed fails that write, which then
//! leaves the state as it was. Its own test binary (its own process): the queue of owed fsyncs is the process's.

use kip_core::state::State;

#[test]
fn an_owed_fsync_that_failed_fails_the_durable_state_write_and_leaves_the_state_alone() {
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let mut state = State::new();
    state.write(&kip_dir).unwrap();
    let before = std::fs::read_to_string(kip_dir.join("state.json")).unwrap();

    // A file an engine needs, whose fsync fails (it is gone before its thread opens it: a disk that lost it).
    let gone = dir.path().join("data/users.acl");
    kip_core::fsutil::sync_soon(&gone).unwrap();
    let error = state.write(&kip_dir).unwrap_err();
    let message = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(message.contains("state.json"), "{message}");
    assert!(
        message.contains("cannot make") && message.contains("users.acl durable"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(kip_dir.join("state.json")).unwrap(),
        before,
        "the state on disk is the one before"
    );

    // The same through `State::sync`, the end of an apply; and nothing is owed once it was reported.
    kip_core::fsutil::sync_soon(&gone).unwrap();
    let error = State::sync(&kip_dir).unwrap_err();
    assert!(
        std::error::Error::source(&error)
            .unwrap()
            .to_string()
            .contains("users.acl"),
        "{error}"
    );
    State::sync(&kip_dir).unwrap();
    state.write(&kip_dir).unwrap();
}
