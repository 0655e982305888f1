// kind: POSIX timers (timer_create)
// area: signals and timers
// expect: refused
// refusal: timer_create
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	struct sigevent ev = { 0 };
	ev.sigev_notify = SIGEV_NONE;
	timer_t t;
	SETUP(timer_create(CLOCK_MONOTONIC, &ev, &t) == 0, "timer_create");
	struct itimerspec its = { { 1, 0 }, { 100, 0 } };
	SETUP(timer_settime(t, 0, &its, NULL) == 0, "timer_settime");
	cs_ready();
	cs_wait_check();
	struct itimerspec now;
	CHECK(timer_gettime(t, &now) == 0, "timer_gettime: %s", strerror(errno));
	CHECK(now.it_value.tv_sec > 0 && now.it_interval.tv_sec == 1, "timer no longer armed");
	cs_finish();
}
