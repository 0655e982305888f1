// kind: signalfd
// area: event fds
// expect: refused
// refusal: signalfd
#include "conform.h"
#include <sys/signalfd.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigprocmask(SIG_BLOCK, &s, NULL);
	int fd = signalfd(-1, &s, SFD_NONBLOCK);
	SETUP(fd >= 0, "signalfd");
	cs_ready();
	cs_wait_check();
	kill(getpid(), SIGUSR1);
	struct signalfd_siginfo si;
	CHECK(read(fd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "signalfd read");
	cs_finish();
}
