/*
 * Commits a running containerd container through libseamless, waits for the
 * push, and prints the result and the final status as JSON.
 *
 *   cc -o commit examples/c/commit.c $(pkg-config --cflags --libs seamless)
 *   ./commit [-a SOCKET] [-n NAMESPACE] [-s STATE_DIR] [-t TIMEOUT_S] CONTAINER TARGET
 *
 * Prints `result: {...}` and `status: {...}` on stdout. Exit status: 0 when
 * the image is pushed, 3 when the wait ran out (the background job stops when
 * the client is freed, and its status then reads failed), 1 on any other
 * error (the message on stderr).
 */
#include <seamless.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Prints what failed: the code's name and number, if any, and this thread's
 * last error message. */
static void report(const char *what, const seamless_result *r) {
    char msg[1024];
    size_t n = seamless_last_error(msg, sizeof msg);
    if (r != NULL) {
        fprintf(stderr, "%s: %s (%u): ", what, seamless_result_name(*r), (unsigned)*r);
    } else {
        fprintf(stderr, "%s: ", what);
    }
    fprintf(stderr, "%s%s\n", msg, n >= sizeof msg ? "..." : "");
}

/* Prints an owned JSON string and frees it. */
static int print_json(const char *label, char *json) {
    if (json == NULL) {
        report(label, NULL);
        return -1;
    }
    printf("%s: %s\n", label, json);
    seamless_string_free(json);
    return 0;
}

int main(int argc, char **argv) {
    const char *address = "/run/containerd/containerd.sock";
    const char *namespace_ = "default";
    const char *state_dir = NULL; /* the library's default */
    uint64_t timeout_s = 600;
    int opt;
    while ((opt = getopt(argc, argv, "a:n:s:t:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'n': namespace_ = optarg; break;
        case 's': state_dir = optarg; break;
        case 't': timeout_s = strtoull(optarg, NULL, 10); break;
        default: goto usage;
        }
    }
    if (argc - optind != 2) {
    usage:
        fprintf(stderr, "usage: %s [-a SOCKET] [-n NAMESPACE] [-s STATE_DIR] [-t TIMEOUT_S] "
                        "CONTAINER TARGET\n", argv[0]);
        return 2;
    }
    const char *container = argv[optind];
    const char *target = argv[optind + 1];

    seamless_client *client = NULL;
    seamless_result r = seamless_client_new(address, namespace_, state_dir, &client);
    if (r != SEAMLESS_OK) {
        report("seamless_client_new", &r);
        return 1;
    }

    int exit_code = 1;
    seamless_snapshot *snap = NULL;
    seamless_status *status = NULL;
    r = seamless_commit_with_wait(client, container, target, timeout_s * 1000, &snap);
    if (r != SEAMLESS_OK) {
        report("seamless_commit_with_wait", &r);
    }
    if (snap == NULL) { /* only SEAMLESS_OK and SEAMLESS_TIMEOUT write it */
        goto out;
    }
    fprintf(stderr, "snapshot %s: paused %.3f ms, %.3f s in all\n", seamless_snapshot_id(snap),
            seamless_snapshot_pause_ns(snap) / 1e6, seamless_snapshot_total_ns(snap) / 1e9);
    if (print_json("result", seamless_snapshot_to_json(snap)) != 0) {
        goto out;
    }

    seamless_result sr = seamless_get_status(client, seamless_snapshot_id(snap), &status);
    if (sr != SEAMLESS_OK) {
        report("seamless_get_status", &sr);
        goto out;
    }
    fprintf(stderr, "state %d, progress %.2f\n", (int)seamless_status_state(status),
            seamless_status_progress(status));
    if (print_json("status", seamless_status_to_json(status)) != 0) {
        goto out;
    }
    exit_code = r == SEAMLESS_OK ? 0 : r == SEAMLESS_TIMEOUT ? 3 : 1;

out:
    seamless_status_free(status);
    seamless_snapshot_free(snap);
    seamless_client_free(client);
    return exit_code;
}
