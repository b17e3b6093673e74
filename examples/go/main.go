// Command commit commits a running containerd container through libseamless
// (the Go binding in ./seamless), waits for the push, and prints the result
// and the final status as JSON, like examples/c/commit.c.
//
//	PKG_CONFIG_PATH=PREFIX/lib/pkgconfig go build -o commit .
//	./commit [-a SOCKET] [-n NAMESPACE] [-s STATE_DIR] [-t TIMEOUT] CONTAINER TARGET
//
// Exit status: 0 when the image is pushed, 3 when the wait ran out, 1 on any
// other error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"example/seamless/seamless"
)

func main() {
	os.Exit(run())
}

func run() int {
	address := flag.String("a", "/run/containerd/containerd.sock", "containerd socket")
	namespace := flag.String("n", "default", "containerd namespace")
	stateDir := flag.String("s", "", "state directory (default: the library's)")
	timeout := flag.Duration("t", 10*time.Minute, "how long to wait for the push")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: commit [-a SOCKET] [-n NAMESPACE] [-s STATE_DIR] [-t TIMEOUT] CONTAINER TARGET")
		return 2
	}

	client, err := seamless.NewClient(*address, *namespace, *stateDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer client.Close()

	snap, err := client.CommitWithWait(flag.Arg(0), flag.Arg(1), *timeout)
	var serr *seamless.Error
	timedOut := errors.As(err, &serr) && serr.Code == seamless.Timeout
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if !timedOut {
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "snapshot %s: paused %v, %v in all\n", snap.ID, snap.Pause, snap.Total)
	fmt.Println("result:", snap.JSON)

	status, err := client.Status(snap.ID)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("status:", status.JSON)
	if timedOut {
		return 3
	}
	return 0
}
