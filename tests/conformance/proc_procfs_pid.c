// kind: /proc/PID and /proc/self/task/TID of the program's own pid and tid (as getpid/gettid return them)
// area: process
// expect: restored
#include "conform.h"
#include <sys/syscall.h>

static int pid_in(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[256];
	int pid = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	cs_ready();
	cs_wait_check();
	char p[64];
	snprintf(p, sizeof p, "/proc/%d/status", getpid());
	int seen = pid_in(p);
	CHECK(seen == getpid(), "%s shows pid %d, not the program's %d", p, seen, getpid());
	snprintf(p, sizeof p, "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
	seen = pid_in(p);
	CHECK(seen == (int)syscall(SYS_gettid), "%s shows pid %d", p, seen);
	cs_finish();
}
