// kind: pipe capacity set with F_SETPIPE_SZ
// area: files and pipes
// expect: refused
// refusal: F_SETPIPE_SZ
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int p[2];
	SETUP(pipe(p) == 0, "pipe");
	SETUP(fcntl(p[1], F_SETPIPE_SZ, 1 << 18) >= (1 << 18), "F_SETPIPE_SZ");
	cs_ready();
	cs_wait_check();
	CHECK(fcntl(p[0], F_GETPIPE_SZ) == (1 << 18), "capacity %d, not %d", fcntl(p[0], F_GETPIPE_SZ), 1 << 18);
	cs_finish();
}
