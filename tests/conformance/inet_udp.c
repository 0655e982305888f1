// kind: UDP socket bound to a port, a datagram queued
// area: inet sockets
// expect: refused
// refusal: inet socket of type 2
#include "conform.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
	socklen_t l = sizeof a;
	getsockname(s, (struct sockaddr *)&a, &l);
	int c = socket(AF_INET, SOCK_DGRAM, 0);
	SETUP(sendto(c, "udp", 3, 0, (struct sockaddr *)&a, sizeof a) == 3, "sendto");
	cs_ready();
	cs_wait_check();
	char b[8];
	CHECK(recv(s, b, 8, MSG_DONTWAIT) == 3, "queued datagram lost");
	CHECK(sendto(c, "udp", 3, 0, (struct sockaddr *)&a, sizeof a) == 3 && recv(s, b, 8, 0) == 3, "port no longer bound");
	cs_finish();
}
