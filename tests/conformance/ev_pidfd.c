// kind: pidfd of the program itself
// area: event fds
// expect: refused
// refusal: pidfd
#include "conform.h"
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	SETUP(fd >= 0, "pidfd_open");
	cs_ready();
	cs_wait_check();
	CHECK(syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) == 0, "pidfd_send_signal: %s", strerror(errno));
	cs_finish();
}
