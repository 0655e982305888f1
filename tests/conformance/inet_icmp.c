// kind: ICMP datagram ("ping") socket and a raw socket
// area: inet sockets
// expect: refused
// refusal: inet socket of type
#include "conform.h"
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	SETUP(raw >= 0, "raw socket (needs CAP_NET_RAW)");
	int ping = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	cs_ready();
	cs_wait_check();
	int v = 0;
	socklen_t l = sizeof v;
	CHECK(getsockopt(raw, SOL_SOCKET, SO_TYPE, &v, &l) == 0 && v == SOCK_RAW, "raw type %d", v);
	if (ping >= 0) {
		l = sizeof v;
		CHECK(getsockopt(ping, SOL_SOCKET, SO_PROTOCOL, &v, &l) == 0 && v == IPPROTO_ICMP, "ping protocol %d", v);
	}
	cs_finish();
}
