// kind: OOM score adjustment (/proc/self/oom_score_adj)
// area: process
// expect: refused
// refusal: oom_score_adj
#include "conform.h"

static int read_adj(void)
{
	FILE *f = fopen("/proc/self/oom_score_adj", "r");
	int v = -9999;
	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -9999;
		fclose(f);
	}
	return v;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	FILE *f = fopen("/proc/self/oom_score_adj", "w");
	SETUP(f && fprintf(f, "345\n") > 0 && fclose(f) == 0, "write oom_score_adj");
	cs_ready();
	cs_wait_check();
	CHECK(read_adj() == 345, "oom_score_adj is %d, not 345", read_adj());
	cs_finish();
}
