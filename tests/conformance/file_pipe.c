// kind: pipes: buffered data, O_NONBLOCK on one end only, both ends held
// area: files and pipes
// expect: restored
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int p[2], q[2];
	SETUP(pipe(p) == 0 && pipe2(q, O_NONBLOCK) == 0, "pipe");
	SETUP(write(p[1], "hello pipe", 10) == 10, "write");
	SETUP(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0, "F_SETFL");
	SETUP(fcntl(q[1], F_SETFL, 0) == 0, "F_SETFL q");
	cs_ready();
	cs_wait_check();
	CHECK(fcntl(p[0], F_GETFL) & O_NONBLOCK, "read end lost O_NONBLOCK");
	CHECK(!(fcntl(p[1], F_GETFL) & O_NONBLOCK), "write end gained O_NONBLOCK");
	CHECK(fcntl(q[0], F_GETFL) & O_NONBLOCK, "q read end lost O_NONBLOCK");
	CHECK(!(fcntl(q[1], F_GETFL) & O_NONBLOCK), "q write end gained O_NONBLOCK");
	CHECK(fcntl(p[0], F_GETPIPE_SZ) == 65536, "capacity %d, not the default 65536", fcntl(p[0], F_GETPIPE_SZ));
	char b[32];
	CHECK(read(p[0], b, 32) == 10 && memcmp(b, "hello pipe", 10) == 0, "buffered data");
	CHECK(read(p[0], b, 32) < 0 && errno == EAGAIN, "more data than was buffered");
	CHECK(write(p[1], "x", 1) == 1 && read(p[0], b, 1) == 1 && b[0] == 'x', "the ends are no longer one pipe");
	CHECK(read(q[0], b, 1) < 0 && errno == EAGAIN, "empty pipe q is not empty");
	cs_finish();
}
