//! Commit a running container and follow the background push.
//!
//! ```sh
//! cargo run -p seamless-snapshot-core --example commit -- \
//!     /run/containerd/containerd.sock default my-container 127.0.0.1:5000/me/snap:1
//! ```

use std::time::Duration;

use seamless_snapshot::{Config, ContainerdSnapshotter, SeamlessSnapshot, SnapshotState};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, namespace, container, target] = args.as_slice() else {
        eprintln!("usage: commit SOCKET NAMESPACE CONTAINER TARGET_REF");
        std::process::exit(2);
    };
    let snap = ContainerdSnapshotter::new(Config {
        containerd_address: address.clone(),
        namespace: namespace.clone(),
        state_dir: std::env::temp_dir().join("seamless-snapshot-example"),
        ..Config::default()
    })?;
    // Any implementation of the trait would do here.
    let api: &dyn SeamlessSnapshot = &snap;

    let result = api.commit(container, target)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!(
        "the container was paused for {:.3} ms",
        result.pause_time.as_secs_f64() * 1e3
    );

    // The build and push run on the snapshotter's runtime; poll the status.
    loop {
        let status = api.get_status(&result.snapshot_id)?;
        println!(
            "{:<10} {:>12} / {:<12} bytes",
            status.state, status.progress.done, status.progress.total
        );
        match status.state {
            SnapshotState::Completed => {
                println!(
                    "pushed {target}@{}",
                    status.manifest_digest.unwrap_or_default()
                );
                return Ok(());
            }
            SnapshotState::Failed => {
                let e = status.error.map(|e| e.message).unwrap_or_default();
                return Err(format!("snapshot failed: {e}").into());
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
