//! Status files: `status.json` (`SnapshotStatus`), a job's `job.json` and a
//! `SnapshotResult`, as read back from a state directory any process may
//! have written. Never a panic; what parses re-serializes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::{SnapshotResult, SnapshotStatus, fuzzing};

fuzz_target!(|data: &[u8]| {
    if let Ok(status) = serde_json::from_slice::<SnapshotStatus>(data) {
        let _ = status.failure();
        let _ = status.state.is_terminal();
        let text = serde_json::to_string(&status).expect("a status serializes");
        let again: SnapshotStatus = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(serde_json::to_string(&again).unwrap(), text);
    }
    if let Ok(result) = serde_json::from_slice::<SnapshotResult>(data) {
        let text = serde_json::to_string(&result).expect("a result serializes");
        let again: SnapshotResult = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(serde_json::to_string(&again).unwrap(), text);
    }
    if let Some((once, again)) = fuzzing::job_spec(data) {
        assert_eq!(once, again, "job spec does not round-trip");
    }
});
