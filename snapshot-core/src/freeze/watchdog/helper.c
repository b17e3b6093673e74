/*
 * seamless-watchdog: the dead-man switch of seamless-snapshot's frozen window,
 * as a program of its own (see mod.rs for why it is exec'd). build.rs compiles
 * it; the library embeds it and runs it from a memfd.
 *
 *   seamless-watchdog DEADLINE_SEC DEADLINE_NSEC THAW_BYTES
 *
 * fd 0: our end of the committer's socket; fd 1: the cgroup's thaw file,
 * opened by the committer. We say "R" (ready) on the socket, then wait until
 * the committer sends "D" (disarm: exit 0), or its end closes (it died), or
 * CLOCK_MONOTONIC passes the deadline: then we write THAW_BYTES to fd 1 and
 * exit 10 (11 when the write failed). Exit 12: bad arguments or no socket,
 * before "R", so nothing is frozen yet. Every exit is _exit: fd 1 is the
 * thaw file, never to receive a stdio flush.
 *
 * The protocol and the exit codes are mod.rs's; its forked fallback
 * (child.rs) runs the same loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum {
	EXIT_DISARMED = 0,
	EXIT_FIRED = 10,
	EXIT_FIRED_WRITE_FAILED = 11,
	EXIT_USAGE = 12,
};

#define SOCK 0
#define THAW 1

/* Milliseconds (rounded up, clamped to int) until the deadline; 0 if passed. */
static int ms_until(const struct timespec *deadline)
{
	struct timespec now;
	long long ns, ms;

	if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
		return 0;
	if (deadline->tv_sec - now.tv_sec > 1000000)
		return 1000000000; /* > 11 days: poll again then */
	ns = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL +
	     (deadline->tv_nsec - now.tv_nsec);
	if (ns <= 0)
		return 0;
	ms = (ns + 999999) / 1000000;
	return ms > 1000000000 ? 1000000000 : (int)ms;
}

static int parse(const char *s, long long max, long long *out)
{
	char *end;

	errno = 0;
	*out = strtoll(s, &end, 10);
	return errno == 0 && end != s && *end == '\0' && *out >= 0 && *out <= max;
}

int main(int argc, char **argv)
{
	static const int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};
	struct timespec deadline;
	long long sec, nsec;
	const char *thaw;
	size_t len, i;
	ssize_t n;
	char byte;

	if (argc != 4 || !parse(argv[1], 0x7fffffffffffffffLL, &sec) ||
	    !parse(argv[2], 999999999, &nsec))
		_exit(EXIT_USAGE);
	deadline.tv_sec = (time_t)sec;
	deadline.tv_nsec = (long)nsec;
	thaw = argv[3];
	len = strlen(thaw);

	/* Hold nothing of the committer's but our two fds (fd 2 is /dev/null). */
	syscall(SYS_close_range, 3U, ~0U, 0U);
	/* Our own session: a signal to the committer's process group or terminal
	 * does not reach us. We live at most until the deadline, so ignoring the
	 * usual termination signals is safe too. */
	setsid();
	for (i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
		signal(ignored[i], SIG_IGN);

	do
		n = write(SOCK, "R", 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(EXIT_USAGE);

	for (;;) {
		struct pollfd pfd = {.fd = SOCK, .events = POLLIN};
		int ms = ms_until(&deadline);
		int rc;

		if (ms == 0)
			break; /* bound overrun */
		rc = poll(&pfd, 1, ms);
		if (rc == 0 || (rc < 0 && errno == EINTR))
			continue;
		if (rc < 0)
			break; /* cannot watch any more: thaw rather than risk it */
		n = read(SOCK, &byte, 1);
		if (n == 1 && byte == 'D')
			_exit(EXIT_DISARMED);
		if (n < 0 && errno == EINTR)
			continue;
		break; /* EOF: the committer is gone (or sent garbage) */
	}
	do
		n = write(THAW, thaw, len);
	while (n < 0 && errno == EINTR);
	_exit(n == (ssize_t)len ? EXIT_FIRED : EXIT_FIRED_WRITE_FAILED);
}
