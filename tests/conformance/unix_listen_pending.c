// kind: listening unix socket with a connection from outside waiting to be accepted (that connection breaks, as every connection to a peer outside does)
// area: unix sockets
// expect: restored
// peer: unix-connect
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	/* The harness connects to DIR/pending.sock once it exists and READY is out. */
	char *path = cs_path("pending.sock");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0, "bind");
	cs_ready();
	/* wait until the harness's connection is queued */
	for (int i = 0; i < 1000; i++) {
		struct timeval tv = { 0, 0 };
		fd_set r;
		FD_ZERO(&r);
		FD_SET(s, &r);
		if (select(s + 1, &r, NULL, NULL, &tv) == 1)
			break;
		cs_sleep_ms(5);
	}
	char *q = cs_path("queued");
	close(open(q, O_CREAT | O_WRONLY, 0644));
	cs_wait_check();
	/* The queued connection is either still there, data and all, or gone with
	 * its peer (a connection to a peer outside the program breaks at restore):
	 * never something else. The listener still accepts. */
	fcntl(s, F_SETFL, O_NONBLOCK);
	int x = accept(s, NULL, NULL);
	if (x >= 0) {
		char b[16] = { 0 };
		ssize_t n = recv(x, b, 15, MSG_DONTWAIT);
		CHECK(n == 12 && strcmp(b, "queued-hello") == 0, "queued connection's data: %zd %s", n, b);
	} else {
		CHECK(errno == EAGAIN, "accept: %s", strerror(errno));
	}
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
	CHECK(accept(s, NULL, NULL) >= 0, "accept a new connection: %s", strerror(errno));
	cs_finish();
}
