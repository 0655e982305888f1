// kind: signal handlers (SA_SIGINFO, SA_RESTART, handler mask), ignored signals, blocked mask
// area: signals and timers
// expect: restored
#include "conform.h"

static volatile sig_atomic_t got_usr1, got_info_code;

static void on_usr1(int sig) { (void)sig; got_usr1++; }
static void on_info(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	got_info_code = si->si_code;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	struct sigaction a = { 0 };
	a.sa_handler = on_usr1;
	a.sa_flags = SA_RESTART;
	sigemptyset(&a.sa_mask);
	sigaddset(&a.sa_mask, SIGTERM);
	SETUP(sigaction(SIGUSR1, &a, NULL) == 0, "sigaction USR1");
	struct sigaction b = { 0 };
	b.sa_sigaction = on_info;
	b.sa_flags = SA_SIGINFO | SA_NODEFER;
	SETUP(sigaction(SIGRTMIN + 3, &b, NULL) == 0, "sigaction RT");
	signal(SIGPIPE, SIG_IGN);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGHUP);
	sigprocmask(SIG_BLOCK, &s, NULL);
	cs_ready();
	cs_wait_check();
	struct sigaction q;
	sigaction(SIGUSR1, NULL, &q);
	CHECK(q.sa_handler == on_usr1, "SIGUSR1 handler");
	CHECK(q.sa_flags & SA_RESTART, "SA_RESTART lost");
	CHECK(sigismember(&q.sa_mask, SIGTERM), "handler mask lost");
	sigaction(SIGRTMIN + 3, NULL, &q);
	CHECK(q.sa_sigaction == on_info && (q.sa_flags & SA_SIGINFO) && (q.sa_flags & SA_NODEFER), "RT handler/flags");
	sigaction(SIGPIPE, NULL, &q);
	CHECK(q.sa_handler == SIG_IGN, "SIGPIPE no longer ignored");
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	CHECK(sigismember(&cur, SIGHUP), "SIGHUP no longer blocked");
	raise(SIGUSR1);
	CHECK(got_usr1 == 1, "SIGUSR1 handler did not run");
	union sigval v = { .sival_int = 1 };
	sigqueue(getpid(), SIGRTMIN + 3, v);
	CHECK(got_info_code == SI_QUEUE, "SA_SIGINFO handler saw si_code %d", got_info_code);
	cs_finish();
}
