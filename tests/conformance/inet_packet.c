// kind: packet socket (AF_PACKET) and a netlink socket
// area: inet sockets
// expect: refused
// refusal: socket of domain
#include "conform.h"
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int p = socket(AF_PACKET, SOCK_DGRAM, htons(0x88b5));
	SETUP(p >= 0, "packet socket (needs CAP_NET_RAW)");
	int n = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	SETUP(n >= 0, "netlink socket");
	cs_ready();
	cs_wait_check();
	int v = 0;
	socklen_t l = sizeof v;
	CHECK(getsockopt(p, SOL_SOCKET, SO_DOMAIN, &v, &l) == 0 && v == AF_PACKET, "packet domain %d", v);
	l = sizeof v;
	CHECK(getsockopt(n, SOL_SOCKET, SO_DOMAIN, &v, &l) == 0 && v == AF_NETLINK, "netlink domain %d", v);
	cs_finish();
}
