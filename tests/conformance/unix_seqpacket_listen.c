// kind: listening unix SOCK_SEQPACKET socket
// area: unix sockets
// expect: restored
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("seq.sock");
	int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0, "bind");
	cs_ready();
	cs_wait_check();
	int type = 0;
	socklen_t l = sizeof type;
	CHECK(getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_SEQPACKET, "type %d", type);
	int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
	int x = accept(s, NULL, NULL);
	CHECK(x >= 0 && send(c, "ab", 2, 0) == 2 && send(c, "cde", 3, 0) == 3, "send");
	char b[8];
	CHECK(recv(x, b, 8, 0) == 2 && recv(x, b, 8, 0) == 3, "message boundaries");
	cs_finish();
}
