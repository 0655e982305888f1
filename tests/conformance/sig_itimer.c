// kind: interval timers (setitimer ITIMER_REAL)
// area: signals and timers
// expect: refused
// refusal: setitimer
#include "conform.h"
#include <sys/time.h>

static volatile sig_atomic_t alarms;
static void on_alrm(int sig) { (void)sig; alarms++; }

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	signal(SIGALRM, on_alrm);
	struct itimerval it = { { 0, 200000 }, { 30, 0 } };
	SETUP(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");
	cs_ready();
	cs_wait_check();
	struct itimerval now;
	getitimer(ITIMER_REAL, &now);
	CHECK(now.it_value.tv_sec > 0 || now.it_value.tv_usec > 0, "ITIMER_REAL is no longer armed");
	CHECK(now.it_interval.tv_usec == 200000, "ITIMER_REAL interval is %ld us", (long)now.it_interval.tv_usec);
	cs_finish();
}
