// kind: I/O priority (ioprio_set, idle class)
// area: process
// expect: refused
// refusal: I/O priority
#include "conform.h"
#include <sys/syscall.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_IDLE 3
#define IOPRIO_PRIO_VALUE(c, d) (((c) << 13) | (d))

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int want = IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0);
	SETUP(syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, want) == 0, "ioprio_set");
	cs_ready();
	cs_wait_check();
	long now = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
	CHECK(now == want, "I/O priority %#lx, not %#x", now, want);
	cs_finish();
}
