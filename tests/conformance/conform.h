/* Shared protocol of the conformance programs (tests/tests/conformance.rs).
 *
 *   prog DIR [PEER]
 *
 * 1. The program sets up its kind of kernel state. A setup failure prints
 *    "SETUP-FAIL: <why>" on stdout and exits 2.
 * 2. It prints "READY" on stdout, then polls every 10 ms for the file DIR/check.
 *    Meanwhile the harness dumps it (kill mode) and restores it, or the dump
 *    refuses and the program was never touched.
 * 3. When DIR/check appears it checks every property of its state and writes
 *    "PASS" or "FAIL: <what>; <what>..." to DIR/result (written to a temporary
 *    name and renamed, so the harness never reads half of it), then exits 0.
 *
 * A regular file polled by path is the trigger because it needs nothing to
 * survive the restore except the program's memory.
 */
#ifndef CS_CONFORM_H
#define CS_CONFORM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static const char *cs_dir;
static const char *cs_peer;
static char cs_msg[8192];
static size_t cs_msg_len;
static int cs_failed;

/* The path DIR/name, in a static buffer per call site's copy. */
static __attribute__((unused)) char *cs_path(const char *name)
{
	char *p = malloc(strlen(cs_dir) + strlen(name) + 2);
	if (!p)
		abort();
	sprintf(p, "%s/%s", cs_dir, name);
	return p;
}

__attribute__((format(printf, 1, 2), unused)) static void cs_fail(const char *fmt, ...)
{
	va_list ap;
	cs_failed = 1;
	if (cs_msg_len + 3 >= sizeof cs_msg)
		return;
	if (cs_msg_len) {
		memcpy(cs_msg + cs_msg_len, "; ", 2);
		cs_msg_len += 2;
	}
	va_start(ap, fmt);
	int n = vsnprintf(cs_msg + cs_msg_len, sizeof cs_msg - cs_msg_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		cs_msg_len += (size_t)n < sizeof cs_msg - cs_msg_len ? (size_t)n : sizeof cs_msg - cs_msg_len - 1;
}

/* Records a failed property; the message says what and, with errno, why. */
#define CHECK(cond, ...)                  \
	do {                              \
		if (!(cond))              \
			cs_fail(__VA_ARGS__); \
	} while (0)

__attribute__((format(printf, 1, 2), noreturn, unused)) static void cs_setup_fail(const char *fmt, ...)
{
	va_list ap;
	printf("SETUP-FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" (errno %d %s)\n", errno, strerror(errno));
	fflush(stdout);
	exit(2);
}

/* Fails setup unless `cond`. */
#define SETUP(cond, ...)                        \
	do {                                    \
		if (!(cond))                    \
			cs_setup_fail(__VA_ARGS__); \
	} while (0)

static __attribute__((unused)) void cs_init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR [PEER]\n", argv[0]);
		exit(2);
	}
	cs_dir = argv[1];
	cs_peer = argc > 2 ? argv[2] : NULL;
}

static __attribute__((unused)) void cs_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static __attribute__((unused)) void cs_ready(void)
{
	printf("READY\n");
	fflush(stdout);
}

/* Polls for DIR/check every 10 ms. */
static __attribute__((unused)) void cs_wait_check(void)
{
	char *p = cs_path("check");
	while (access(p, F_OK) != 0)
		cs_sleep_ms(10);
	free(p);
}

/* Writes the verdict to DIR/result and exits. */
__attribute__((noreturn, unused)) static void cs_finish(void)
{
	char *tmp = cs_path("result.tmp");
	char *res = cs_path("result");
	FILE *f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, "cannot write %s: %s\n", tmp, strerror(errno));
		exit(3);
	}
	if (cs_failed)
		fprintf(f, "FAIL: %s\n", cs_msg);
	else
		fprintf(f, "PASS\n");
	fflush(f);
	fsync(fileno(f));
	fclose(f);
	if (rename(tmp, res) < 0)
		exit(3);
	exit(0);
}

/* A line of /proc/self/smaps ("VmFlags:") for the mapping that contains addr;
 * empty when not found. */
static __attribute__((unused)) void cs_vmflags(const void *addr, char *out, size_t outlen)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;
	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, ' ') &&
		    line[strspn(line, "0123456789abcdef")] == '-') {
			in = (uintptr_t)addr >= a && (uintptr_t)addr < b;
			continue;
		}
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(out, outlen, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

/* Whether the VmFlags of the mapping at addr contain the two-letter flag. */
static __attribute__((unused)) int cs_has_vmflag(const void *addr, const char *flag)
{
	char flags[512];
	cs_vmflags(addr, flags, sizeof flags);
	for (char *t = strtok(flags, " \n"); t; t = strtok(NULL, " \n"))
		if (strcmp(t, flag) == 0)
			return 1;
	return 0;
}

/* A field of /proc/self/status (e.g. "Umask:"), trimmed, into out. */
static __attribute__((unused)) int cs_status_field(const char *field, char *out, size_t outlen)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[512];
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, field, strlen(field)) == 0) {
			char *v = line + strlen(field);
			v += strspn(v, " \t");
			v[strcspn(v, "\n")] = 0;
			snprintf(out, outlen, "%s", v);
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

#endif
