// kind: resource limits (setrlimit: NOFILE, CORE, STACK, NPROC soft limits)
// area: process
// expect: restored
#include "conform.h"
#include <sys/resource.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	struct rlimit r;
	int res[] = { RLIMIT_NOFILE, RLIMIT_CORE, RLIMIT_STACK, RLIMIT_NPROC };
	const char *names[] = { "NOFILE", "CORE", "STACK", "NPROC" };
	rlim_t want[] = { 200, 4096, 4 << 20, 777 };
	struct rlimit before[4];
	for (int i = 0; i < 4; i++) {
		SETUP(getrlimit(res[i], &r) == 0, "getrlimit");
		r.rlim_cur = want[i] < r.rlim_max ? want[i] : r.rlim_max;
		SETUP(setrlimit(res[i], &r) == 0, "setrlimit %s", names[i]);
		before[i] = r;
	}
	cs_ready();
	cs_wait_check();
	for (int i = 0; i < 4; i++) {
		CHECK(getrlimit(res[i], &r) == 0, "getrlimit");
		CHECK(r.rlim_cur == before[i].rlim_cur, "RLIMIT_%s soft %llu, not %llu", names[i],
		      (unsigned long long)r.rlim_cur, (unsigned long long)before[i].rlim_cur);
		CHECK(r.rlim_max == before[i].rlim_max, "RLIMIT_%s hard %llu, not %llu", names[i],
		      (unsigned long long)r.rlim_max, (unsigned long long)before[i].rlim_max);
	}
	cs_finish();
}
