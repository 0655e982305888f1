// kind: connected unix stream socket to a peer outside the program (the peer's end breaks)
// area: unix sockets
// expect: restored
// peer: unix-listen
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

/* A connection whose peer is outside the program comes back closed by the peer
 * (docs/conformance.md): the same family and type, end-of-file on read, EPIPE on
 * write, as if the peer had gone away. */
int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(cs_peer, "no peer path");
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, cs_peer);
	SETUP(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
	SETUP(write(c, "ping", 4) == 4, "write");
	signal(SIGPIPE, SIG_IGN);
	cs_ready();
	cs_wait_check();
	int type = 0, dom = 0;
	socklen_t l = sizeof type;
	CHECK(getsockopt(c, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_STREAM, "type %d", type);
	l = sizeof dom;
	CHECK(getsockopt(c, SOL_SOCKET, SO_DOMAIN, &dom, &l) == 0 && dom == AF_UNIX, "domain %d", dom);
	/* Either still connected to the same peer (it answers "pong") or closed by it. */
	char b[8] = { 0 };
	ssize_t n;
	for (int i = 0; i < 300; i++) {
		n = recv(c, b, 8, MSG_DONTWAIT);
		if (n >= 0 || errno != EAGAIN)
			break;
		cs_sleep_ms(10);
	}
	CHECK(n == 0 || (n == 4 && memcmp(b, "pong", 4) == 0), "neither the peer's data nor end-of-file: %zd %s", n,
	      n < 0 ? strerror(errno) : b);
	cs_finish();
}
