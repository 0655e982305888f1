// kind: CPU affinity (sched_setaffinity) narrower than the restorer's
// area: process
// expect: refused
// refusal: CPU affinity
#include "conform.h"
#include <sched.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(0, &s);
	SETUP(sched_setaffinity(0, sizeof s, &s) == 0, "sched_setaffinity");
	cs_ready();
	cs_wait_check();
	cpu_set_t now;
	CHECK(sched_getaffinity(0, sizeof now, &now) == 0 && CPU_COUNT(&now) == 1 && CPU_ISSET(0, &now),
	      "affinity has %d CPUs, not just CPU 0", CPU_COUNT(&now));
	cs_finish();
}
