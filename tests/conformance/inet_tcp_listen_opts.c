// kind: TCP listener with socket options set (SO_KEEPALIVE, SO_RCVBUF, SO_PRIORITY, TCP_NODELAY, TCP_DEFER_ACCEPT), inherited by accepted connections
// area: inet sockets
// expect: refused
// refusal: option
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int get(int s, int lvl, int opt)
{
	int v = -1;
	socklen_t l = sizeof v;
	getsockopt(s, lvl, opt, &v, &l);
	return v;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1, buf = 200000, prio = 4, defer = 5;
	setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(s, SOL_SOCKET, SO_PRIORITY, &prio, sizeof prio);
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(s, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 16) == 0, "bind");
	int rcv = get(s, SOL_SOCKET, SO_RCVBUF), dfr = get(s, IPPROTO_TCP, TCP_DEFER_ACCEPT);
	cs_ready();
	cs_wait_check();
	CHECK(get(s, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE lost");
	CHECK(get(s, SOL_SOCKET, SO_RCVBUF) == rcv, "SO_RCVBUF %d, not %d", get(s, SOL_SOCKET, SO_RCVBUF), rcv);
	CHECK(get(s, SOL_SOCKET, SO_PRIORITY) == 4, "SO_PRIORITY lost");
	CHECK(get(s, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY lost");
	CHECK(get(s, IPPROTO_TCP, TCP_DEFER_ACCEPT) == dfr, "TCP_DEFER_ACCEPT lost");
	cs_finish();
}
