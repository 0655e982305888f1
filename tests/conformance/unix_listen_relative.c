// kind: listening unix socket bound to a relative path
// area: unix sockets
// expect: refused
// refusal: relative path
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(chdir(cs_dir) == 0, "chdir");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, "rel.sock");
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0, "bind");
	cs_ready();
	cs_wait_check();
	struct sockaddr_un g;
	socklen_t l = sizeof g;
	CHECK(getsockname(s, (struct sockaddr *)&g, &l) == 0 && strcmp(g.sun_path, "rel.sock") == 0, "bound name %s", g.sun_path);
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect to ./rel.sock: %s", strerror(errno));
	cs_finish();
}
