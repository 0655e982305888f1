// kind: listening TCP sockets (IPv4 with SO_REUSEADDR, IPv6 loopback), accepting after restore
// area: inet sockets
// expect: restored
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 16) == 0, "bind");
	socklen_t l = sizeof a;
	getsockname(s, (struct sockaddr *)&a, &l);
	int s6 = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	SETUP(bind(s6, (struct sockaddr *)&a6, sizeof a6) == 0 && listen(s6, 16) == 0, "bind6");
	l = sizeof a6;
	getsockname(s6, (struct sockaddr *)&a6, &l);
	cs_ready();
	cs_wait_check();
	struct sockaddr_in b;
	l = sizeof b;
	CHECK(getsockname(s, (struct sockaddr *)&b, &l) == 0 && b.sin_port == a.sin_port && b.sin_addr.s_addr == a.sin_addr.s_addr,
	      "bound address changed");
	int v = 0;
	l = sizeof v;
	CHECK(getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, &l) == 0 && v == 1, "SO_REUSEADDR lost");
	l = sizeof v;
	CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 1, "not listening");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
	int x = accept(s, NULL, NULL);
	CHECK(x >= 0 && write(c, "tcp", 3) == 3, "accept");
	char buf[4];
	CHECK(read(x, buf, 3) == 3, "read accepted");
	int c6 = socket(AF_INET6, SOCK_STREAM, 0);
	CHECK(connect(c6, (struct sockaddr *)&a6, sizeof a6) == 0, "connect6: %s", strerror(errno));
	CHECK(accept(s6, NULL, NULL) >= 0, "accept6");
	cs_finish();
}
