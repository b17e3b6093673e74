/*
 * Tests of libseamless through its C header, against a live containerd and
 * registry (run by tests/tests/ffi.rs):
 *   - N threads commit N containers through one client at once;
 *   - a wait that runs out returns SEAMLESS_TIMEOUT and still writes *out;
 *   - a failed commit leaves *out untouched and names the error;
 *   - a forked child is refused with SEAMLESS_FORKED_CHILD.
 *
 *   abi_test -a SOCKET -n NAMESPACE -s STATE_DIR REPO CONTAINER...
 *
 * Container i is pushed to REPO/<container>:1 (and REPO/<container>:timeout
 * by the timeout check). Prints one line per check; exit status 0 when all
 * passed.
 */
#include <seamless.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_THREADS 16

static int failures = 0;

static void check(int ok, const char *what) {
    char msg[512] = "";
    if (!ok) {
        seamless_last_error(msg, sizeof msg);
        failures++;
    }
    printf("%s: %s%s%s\n", ok ? "ok" : "FAILED", what, ok ? "" : ": last error: ", msg);
    fflush(stdout);
}

struct job {
    const seamless_client *client;
    char container[256];
    char target[512];
    seamless_result result;
    char snapshot_id[128];
    uint64_t pause_ns;
    char error[512];
};

static void *commit_one(void *arg) {
    struct job *j = arg;
    seamless_snapshot *snap = NULL;
    j->result = seamless_commit_with_wait(j->client, j->container, j->target, 300000, &snap);
    if (j->result != SEAMLESS_OK) {
        /* The last error is per thread: read it on this one. */
        seamless_last_error(j->error, sizeof j->error);
    }
    if (snap != NULL) {
        snprintf(j->snapshot_id, sizeof j->snapshot_id, "%s", seamless_snapshot_id(snap));
        j->pause_ns = seamless_snapshot_pause_ns(snap);
        seamless_snapshot_free(snap);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *address = NULL, *namespace_ = NULL, *state_dir = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "a:n:s:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'n': namespace_ = optarg; break;
        case 's': state_dir = optarg; break;
        default: return 2;
        }
    }
    int n = argc - optind - 1;
    if (address == NULL || namespace_ == NULL || n < 1 || n > MAX_THREADS) {
        fprintf(stderr, "usage: %s -a SOCKET -n NAMESPACE -s STATE_DIR REPO CONTAINER...\n",
                argv[0]);
        return 2;
    }
    const char *repo = argv[optind];
    char **containers = argv + optind + 1;

    seamless_client *client = NULL;
    seamless_result r = seamless_client_new(address, namespace_, state_dir, &client);
    check(r == SEAMLESS_OK && client != NULL, "seamless_client_new");
    if (client == NULL) {
        return 1;
    }

    /* N threads, one client. */
    struct job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    for (int i = 0; i < n; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].client = client;
        snprintf(jobs[i].container, sizeof jobs[i].container, "%s", containers[i]);
        snprintf(jobs[i].target, sizeof jobs[i].target, "%s/%s:1", repo, containers[i]);
        if (pthread_create(&threads[i], NULL, commit_one, &jobs[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        char what[1400];
        snprintf(what, sizeof what, "thread %d committed %s as snapshot %s (pause %.3f ms) %s", i,
                 jobs[i].container, jobs[i].snapshot_id, jobs[i].pause_ns / 1e6, jobs[i].error);
        check(jobs[i].result == SEAMLESS_OK && jobs[i].snapshot_id[0] != '\0', what);
    }

    /* A wait that runs out still hands over the snapshot, which goes on. */
    char target[512];
    snprintf(target, sizeof target, "%s/%s:timeout", repo, containers[0]);
    seamless_snapshot *snap = NULL;
    r = seamless_commit_with_wait(client, containers[0], target, 1, &snap);
    check(r == SEAMLESS_TIMEOUT, "a 1 ms wait returns SEAMLESS_TIMEOUT");
    check(snap != NULL, "... and writes *out");
    if (snap != NULL) {
        seamless_status *status = NULL;
        r = seamless_wait(client, seamless_snapshot_id(snap), 300000, &status);
        check(r == SEAMLESS_OK && seamless_status_state(status) == SEAMLESS_STATE_COMPLETED,
              "... and the snapshot completes");
        seamless_status_free(status);
        seamless_snapshot_free(snap);
    }

    /* Any other failure leaves *out as it was. */
    seamless_snapshot *untouched = (seamless_snapshot *)&failures;
    r = seamless_commit_with_wait(client, "no-such-container", target, 1000, &untouched);
    check(r == SEAMLESS_CONTAINER_NOT_FOUND, "an unknown container is SEAMLESS_CONTAINER_NOT_FOUND");
    check(untouched == (seamless_snapshot *)&failures, "... and leaves *out untouched");
    char msg[512];
    size_t len = seamless_last_error(msg, sizeof msg);
    check(len > 0 && strstr(msg, "no-such-container") != NULL, "... and names the container");
    check(strcmp(seamless_result_name(r), "container_not_found") == 0, "seamless_result_name");

    /* A forked child may not use the parent's client. */
    pid_t pid = fork();
    if (pid == 0) {
        seamless_status *status = NULL;
        seamless_result cr = seamless_get_status(client, jobs[0].snapshot_id, &status);
        seamless_client_free(client); /* releases nothing in the child */
        _exit(cr == SEAMLESS_FORKED_CHILD && status == NULL ? 0 : 1);
    }
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    check(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0,
          "a forked child gets SEAMLESS_FORKED_CHILD");
    seamless_status *status = NULL;
    r = seamless_get_status(client, jobs[0].snapshot_id, &status);
    check(r == SEAMLESS_OK && seamless_status_state(status) == SEAMLESS_STATE_COMPLETED,
          "the parent's client works on");
    seamless_status_free(status);

    seamless_client_free(client);
    printf("abi_test: %d check(s) failed\n", failures);
    return failures == 0 ? 0 : 1;
}
