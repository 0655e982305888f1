// kind: timerfd armed
// area: event fds
// expect: refused
// refusal: timerfd
#include "conform.h"
#include <sys/timerfd.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int t = timerfd_create(CLOCK_MONOTONIC, 0);
	struct itimerspec its = { { 1, 0 }, { 100, 0 } };
	SETUP(t >= 0 && timerfd_settime(t, 0, &its, NULL) == 0, "timerfd");
	cs_ready();
	cs_wait_check();
	struct itimerspec now;
	CHECK(timerfd_gettime(t, &now) == 0 && now.it_value.tv_sec > 0 && now.it_interval.tv_sec == 1, "timer not armed");
	cs_finish();
}
