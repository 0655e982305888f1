// kind: listening unix socket with a connection waiting to be accepted (from a peer outside the program)
// area: unix sockets
// expect: refused
// refusal: waiting to be accepted
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
	int x = accept4(s, NULL, NULL, SOCK_NONBLOCK);
	CHECK(x >= 0, "the queued connection is gone: %s", strerror(errno));
	char b[16] = { 0 };
	for (int i = 0; x >= 0 && i < 200 && read(x, b, 15) < 0; i++)
		cs_sleep_ms(10);
	CHECK(strcmp(b, "queued-hello") == 0, "queued connection's data: %s", b);
	cs_finish();
}
