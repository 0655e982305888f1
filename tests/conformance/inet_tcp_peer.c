// kind: established TCP connection to a peer outside the program (breaks: closed by the peer)
// area: inet sockets
// expect: restored
// peer: tcp-listen
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* A connection whose peer is outside the program comes back closed by the peer
 * (docs/conformance.md): a TCP socket of the same family, end-of-file or a reset
 * on read, as after the peer went away; never a socket of another kind. */
int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(cs_peer, "no peer port");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				 .sin_port = htons((uint16_t)atoi(cs_peer)) };
	SETUP(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
	SETUP(write(c, "ping", 4) == 4, "write");
	signal(SIGPIPE, SIG_IGN);
	cs_ready();
	cs_wait_check();
	int v = 0;
	socklen_t l = sizeof v;
	CHECK(getsockopt(c, SOL_SOCKET, SO_DOMAIN, &v, &l) == 0 && v == AF_INET, "domain %d, not AF_INET", v);
	l = sizeof v;
	CHECK(getsockopt(c, SOL_SOCKET, SO_TYPE, &v, &l) == 0 && v == SOCK_STREAM, "type %d", v);
	l = sizeof v;
	CHECK(getsockopt(c, SOL_SOCKET, SO_PROTOCOL, &v, &l) == 0 && v == IPPROTO_TCP, "protocol %d, not TCP", v);
	struct tcp_info ti;
	l = sizeof ti;
	CHECK(getsockopt(c, IPPROTO_TCP, TCP_INFO, &ti, &l) == 0, "TCP_INFO: %s", strerror(errno));
	char b[8];
	ssize_t n = -1;
	for (int i = 0; i < 300; i++) {
		n = recv(c, b, 8, MSG_DONTWAIT);
		if (n >= 0 || errno != EAGAIN)
			break;
		cs_sleep_ms(10);
	}
	CHECK(n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)), "not closed by the peer: %zd %s", n,
	      n < 0 ? strerror(errno) : "");
	cs_finish();
}
