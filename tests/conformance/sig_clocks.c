// kind: monotonic and boot-time clocks continue (no jump back), realtime is real
// area: signals and timers
// expect: restored
#include "conform.h"

static int64_t ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int64_t m0 = ns(CLOCK_MONOTONIC), b0 = ns(CLOCK_BOOTTIME), r0 = ns(CLOCK_REALTIME);
	cs_ready();
	cs_wait_check();
	int64_t m1 = ns(CLOCK_MONOTONIC), b1 = ns(CLOCK_BOOTTIME), r1 = ns(CLOCK_REALTIME);
	CHECK(m1 >= m0, "CLOCK_MONOTONIC went back by %lld ns", (long long)(m0 - m1));
	CHECK(b1 >= b0, "CLOCK_BOOTTIME went back by %lld ns", (long long)(b0 - b1));
	CHECK(r1 >= r0, "CLOCK_REALTIME went back");
	/* The clocks did not jump far ahead either (the harness finishes in seconds). */
	CHECK(m1 - m0 < 600LL * 1000000000, "CLOCK_MONOTONIC jumped ahead %lld s", (long long)((m1 - m0) / 1000000000));
	cs_finish();
}
