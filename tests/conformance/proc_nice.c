// kind: nice value (setpriority)
// area: process
// expect: refused
// refusal: nice
#include "conform.h"
#include <sys/resource.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(setpriority(PRIO_PROCESS, 0, 7) == 0, "setpriority");
	cs_ready();
	cs_wait_check();
	errno = 0;
	int n = getpriority(PRIO_PROCESS, 0);
	CHECK(n == 7, "nice is %d, not 7", n);
	cs_finish();
}
