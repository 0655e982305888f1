// kind: TCP listener with SO_REUSEPORT
// area: inet sockets
// expect: refused
// refusal: SO_REUSEPORT
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 16) == 0, "bind");
	socklen_t l = sizeof a;
	getsockname(s, (struct sockaddr *)&a, &l);
	cs_ready();
	cs_wait_check();
	int v = 0;
	l = sizeof v;
	CHECK(getsockopt(s, SOL_SOCKET, SO_REUSEPORT, &v, &l) == 0 && v == 1, "SO_REUSEPORT lost");
	int t = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(t, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	CHECK(bind(t, (struct sockaddr *)&a, sizeof a) == 0, "a second SO_REUSEPORT bind fails: %s", strerror(errno));
	cs_finish();
}
