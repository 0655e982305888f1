// kind: scheduling policy (SCHED_BATCH) of the main thread
// area: process
// expect: refused
// refusal: scheduling policy
#include "conform.h"
#include <sched.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	struct sched_param sp = { .sched_priority = 0 };
	SETUP(sched_setscheduler(0, SCHED_BATCH, &sp) == 0, "sched_setscheduler");
	cs_ready();
	cs_wait_check();
	int p = sched_getscheduler(0);
	CHECK(p == SCHED_BATCH, "policy is %d, not SCHED_BATCH", p);
	cs_finish();
}
