// kind: timer slack (PR_SET_TIMERSLACK)
// area: process
// expect: refused
// refusal: timer slack
#include "conform.h"
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) == 0, "PR_SET_TIMERSLACK");
	cs_ready();
	cs_wait_check();
	long s = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	CHECK(s == 123456, "timer slack %ld ns, not 123456", s);
	cs_finish();
}
