// kind: listening unix socket whose socket file the program removed
// area: unix sockets
// expect: refused
// refusal: socket file is gone
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("gone.sock");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0, "bind");
	SETUP(unlink(path) == 0, "unlink");
	cs_ready();
	cs_wait_check();
	CHECK(access(path, F_OK) != 0, "the removed socket file is back");
	int acc = 0;
	socklen_t l = sizeof acc;
	CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) == 0 && acc == 1, "not listening");
	cs_finish();
}
