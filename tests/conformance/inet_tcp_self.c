// kind: established TCP connection with both ends in the program (loopback), data in flight
// area: inet sockets
// expect: refused
// refusal: both ends
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 16) == 0, "bind");
	socklen_t l = sizeof a;
	getsockname(s, (struct sockaddr *)&a, &l);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	SETUP(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect");
	int x = accept(s, NULL, NULL);
	SETUP(x >= 0, "accept");
	SETUP(write(c, "in flight", 9) == 9, "write");
	cs_ready();
	cs_wait_check();
	char b[16];
	CHECK(recv(x, b, 16, MSG_DONTWAIT) == 9 && memcmp(b, "in flight", 9) == 0, "data in flight lost");
	CHECK(write(x, "reply", 5) == 5, "write reply: %s", strerror(errno));
	for (int i = 0; i < 100 && recv(c, b, 16, MSG_DONTWAIT | MSG_PEEK) < 0; i++)
		cs_sleep_ms(10);
	CHECK(recv(c, b, 16, MSG_DONTWAIT) == 5, "the connection is broken");
	cs_finish();
}
