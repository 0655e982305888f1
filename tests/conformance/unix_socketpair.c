// kind: unix socketpair (stream) with both ends in the program, data queued
// area: unix sockets
// expect: refused
// refusal: both ends
#include "conform.h"
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int sv[2];
	SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	SETUP(write(sv[0], "queued", 6) == 6, "write");
	cs_ready();
	cs_wait_check();
	char b[16];
	CHECK(recv(sv[1], b, 16, MSG_DONTWAIT) == 6 && memcmp(b, "queued", 6) == 0, "queued data lost");
	CHECK(write(sv[1], "back", 4) == 4, "write back: %s", strerror(errno));
	CHECK(recv(sv[0], b, 16, MSG_DONTWAIT) == 4, "the ends are no longer connected");
	cs_finish();
}
