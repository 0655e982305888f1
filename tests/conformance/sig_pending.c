// kind: a pending (blocked) signal, process-wide and per thread
// area: signals and timers
// expect: refused
// refusal: pending signal
#include "conform.h"

static volatile sig_atomic_t got;
static void on_usr1(int sig) { (void)sig; got++; }

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	signal(SIGUSR1, on_usr1);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigprocmask(SIG_BLOCK, &s, NULL);
	kill(getpid(), SIGUSR1);
	cs_ready();
	cs_wait_check();
	sigset_t p;
	sigpending(&p);
	CHECK(sigismember(&p, SIGUSR1), "the pending SIGUSR1 is gone");
	sigprocmask(SIG_UNBLOCK, &s, NULL);
	CHECK(got == 1, "the pending signal was not delivered on unblock (%d)", (int)got);
	cs_finish();
}
