// kind: unix stream socket neither listening nor connected (created, bound, not yet used)
// area: unix sockets
// expect: refused
// refusal: neither listening nor connected
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("later.sock");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
	cs_ready();
	cs_wait_check();
	CHECK(listen(s, 4) == 0, "listen on the bound socket: %s", strerror(errno));
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
	cs_finish();
}
