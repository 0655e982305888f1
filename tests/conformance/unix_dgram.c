// kind: unix datagram sockets: one bound to a path with a datagram queued, one unbound sender
// area: unix sockets
// expect: refused
// refusal: unix datagram socket
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("dgram.sock");
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
	int c = socket(AF_UNIX, SOCK_DGRAM, 0);
	SETUP(sendto(c, "dgram-1", 7, 0, (struct sockaddr *)&a, sizeof a) == 7, "sendto");
	cs_ready();
	cs_wait_check();
	char b[16];
	CHECK(recv(s, b, 16, MSG_DONTWAIT) == 7 && memcmp(b, "dgram-1", 7) == 0, "queued datagram lost");
	int type = 0;
	socklen_t l = sizeof type;
	CHECK(getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_DGRAM, "type %d", type);
	CHECK(sendto(c, "dgram-2", 7, 0, (struct sockaddr *)&a, sizeof a) == 7, "sendto after: %s", strerror(errno));
	CHECK(recv(s, b, 16, MSG_DONTWAIT) == 7, "bound socket does not receive");
	cs_finish();
}
