// kind: pid, thread name (PR_SET_NAME), command line, environment, executable
// area: process
// expect: restored
#include "conform.h"
#include <sys/prctl.h>

static char *slurp(const char *path, size_t *len)
{
	static char buf[3][8192];
	static int k;
	char *b = buf[k++ % 3];
	int fd = open(path, O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, b, sizeof b[0] - 1) : -1;
	if (fd >= 0)
		close(fd);
	*len = n > 0 ? (size_t)n : 0;
	b[*len] = 0;
	return b;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(prctl(PR_SET_NAME, "cs-conform-id") == 0, "PR_SET_NAME");
	setenv("CS_CONFORM_VAR", "value-42", 1);
	pid_t pid = getpid();
	size_t cl, el;
	char cmd[8192], env[8192], exe[4096] = "";
	memcpy(cmd, slurp("/proc/self/cmdline", &cl), sizeof cmd);
	memcpy(env, slurp("/proc/self/environ", &el), sizeof env);
	SETUP(readlink("/proc/self/exe", exe, sizeof exe - 1) > 0, "readlink exe");
	cs_ready();
	cs_wait_check();
	CHECK(getpid() == pid, "getpid %d, not %d", getpid(), pid);
	char comm[32] = "";
	prctl(PR_GET_NAME, comm);
	CHECK(strcmp(comm, "cs-conform-id") == 0, "comm is %s", comm);
	size_t l;
	char *c = slurp("/proc/self/cmdline", &l);
	CHECK(l == cl && memcmp(c, cmd, l) == 0, "/proc/self/cmdline differs");
	c = slurp("/proc/self/environ", &l);
	CHECK(l == el && memcmp(c, env, l) == 0, "/proc/self/environ differs");
	CHECK(strcmp(getenv("CS_CONFORM_VAR") ? getenv("CS_CONFORM_VAR") : "", "value-42") == 0, "getenv");
	char exe2[4096] = "";
	CHECK(readlink("/proc/self/exe", exe2, sizeof exe2 - 1) > 0 && strcmp(exe, exe2) == 0, "/proc/self/exe is %s, not %s", exe2, exe);
	cs_finish();
}
