// kind: eventfd counters (plain and EFD_SEMAPHORE, one non-blocking)
// area: event fds
// expect: restored
#include "conform.h"
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int e = eventfd(7, EFD_NONBLOCK);
	int s = eventfd(0, EFD_SEMAPHORE);
	SETUP(e >= 0 && s >= 0, "eventfd");
	uint64_t v = 3;
	SETUP(write(s, &v, 8) == 8, "write");
	cs_ready();
	cs_wait_check();
	CHECK(fcntl(e, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	CHECK(!(fcntl(s, F_GETFL) & O_NONBLOCK), "O_NONBLOCK gained");
	CHECK(read(e, &v, 8) == 8 && v == 7, "count %llu, not 7", (unsigned long long)v);
	CHECK(read(e, &v, 8) < 0 && errno == EAGAIN, "count not drained");
	int ok = 1;
	for (int i = 0; i < 3; i++)
		ok &= read(s, &v, 8) == 8 && v == 1;
	CHECK(ok, "semaphore semantics lost");
	cs_finish();
}
