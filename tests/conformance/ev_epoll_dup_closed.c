// kind: epoll set whose registered fd was dup'ed and closed (registration lives on the other number)
// area: event fds
// expect: refused
// refusal: epoll
#include "conform.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int ep = epoll_create1(0);
	int e = eventfd(1, 0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 42 };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) == 0, "add");
	int d = dup(e);
	close(e);
	cs_ready();
	cs_wait_check();
	struct epoll_event out[2];
	CHECK(epoll_wait(ep, out, 2, 1000) == 1 && out[0].data.u64 == 42, "registration lost");
	uint64_t v;
	CHECK(read(d, &v, 8) == 8 && v == 1, "eventfd count");
	cs_finish();
}
