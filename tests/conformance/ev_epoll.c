// kind: epoll set with registrations (pipe, eventfd; events and user data; EPOLLET)
// area: event fds
// expect: restored
#include "conform.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int p[2];
	SETUP(pipe(p) == 0, "pipe");
	int e = eventfd(1, 0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1111 };
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0, "add pipe");
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 0xabcdef0123;
	SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) == 0, "add eventfd");
	cs_ready();
	cs_wait_check();
	CHECK(fcntl(ep, F_GETFD) & FD_CLOEXEC, "EPOLL_CLOEXEC lost");
	struct epoll_event out[4];
	int n = epoll_wait(ep, out, 4, 1000);
	CHECK(n == 1 && out[0].data.u64 == 0xabcdef0123, "ready events: %d", n);
	n = epoll_wait(ep, out, 4, 0);
	CHECK(n == 0, "edge-triggered registration fired again (%d)", n);
	SETUP(write(p[1], "x", 1) == 1, "write");
	n = epoll_wait(ep, out, 4, 1000);
	CHECK(n == 1 && out[0].data.u64 == 0x1111 && (out[0].events & EPOLLIN), "pipe registration");
	ev.events = EPOLLIN;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) < 0 && errno == EEXIST, "pipe no longer registered");
	cs_finish();
}
