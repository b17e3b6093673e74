#!/usr/bin/env python3
"""Commit a running container, follow the background push, print the result.

    python examples/python/commit.py CONTAINER TARGET_REF \\
        [--address SOCK] [--namespace NS] [--state-dir DIR] [--timeout SECONDS]

Needs the ``seamless_snapshot`` wheel (``snapshot-py/``) and root.
"""

import argparse
import json
import sys
import time

import seamless_snapshot as ss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("container")
    p.add_argument("target")
    p.add_argument("--address", default=ss.DEFAULT_CONTAINERD_ADDRESS)
    p.add_argument("--namespace", default=ss.DEFAULT_NAMESPACE)
    p.add_argument("--state-dir", default=ss.DEFAULT_STATE_DIR)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the push")
    args = p.parse_args()

    client = ss.SeamlessSnapshot(address=args.address, namespace=args.namespace,
                                 state_dir=args.state_dir)
    try:
        result = client.commit(args.container, args.target)
    except ss.SeamlessSnapshotError as e:
        print(f"commit failed [{e.kind}, code {e.code}]: {e}", file=sys.stderr)
        return 1
    print(f"captured {result.snapshot_id}: {result.files_captured} files, "
          f"container paused {result.pause_time.total_seconds() * 1e3:.3f} ms")

    # The build and push run on the client's threads: keep it alive and poll.
    # (client.wait() would block until done, without a progress line.)
    deadline = time.monotonic() + args.timeout
    while True:
        status = client.get_status(result.snapshot_id)
        line = f"{status.state:<10} {status.progress * 100:5.1f}%  {status.done_bytes}/{status.total_bytes} bytes"
        print(f"\r{line:<60}", end="", file=sys.stderr, flush=True)
        if status.is_terminal:
            break
        if time.monotonic() > deadline:
            print(f"\nstill {status.state} after {args.timeout} s; "
                  f"it goes on as long as this process runs", file=sys.stderr)
            return 3
        time.sleep(0.2)
    print(file=sys.stderr)

    if status.state == "failed":
        err = status.error
        print(f"snapshot failed [{err.kind if err else '?'}]: {err.message if err else ''}",
              file=sys.stderr)
        return 4
    out = result.to_dict()
    out["manifest_digest"] = status.manifest_digest
    out["layer"] = status.layer.to_dict() if status.layer else None
    print(json.dumps(out, indent=2))
    print(f"pushed {args.target}@{status.manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
