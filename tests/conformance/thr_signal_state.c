// kind: per-thread signal mask and sigaltstack, in a second thread
// area: threads
// expect: restored
#include "conform.h"
#include <pthread.h>
#include <sys/syscall.h>

static volatile int go, ready;
static char altstack[65536];
static volatile int verdict_mask = -1, verdict_alt = -1;

static void *worker(void *arg)
{
	(void)arg;
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGWINCH);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	stack_t st = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
	sigaltstack(&st, NULL);
	ready = 1;
	while (!go)
		cs_sleep_ms(5);
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	verdict_mask = sigismember(&cur, SIGUSR1) && sigismember(&cur, SIGWINCH) && !sigismember(&cur, SIGUSR2);
	stack_t now;
	sigaltstack(NULL, &now);
	verdict_alt = now.ss_sp == altstack && now.ss_size == sizeof altstack && now.ss_flags == 0;
	return NULL;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	pthread_t t;
	SETUP(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
	while (!ready)
		cs_sleep_ms(1);
	cs_ready();
	cs_wait_check();
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	CHECK(sigismember(&cur, SIGUSR2) && !sigismember(&cur, SIGUSR1), "main thread's mask");
	go = 1;
	for (int i = 0; i < 500 && (verdict_mask < 0 || verdict_alt < 0); i++)
		cs_sleep_ms(10);
	CHECK(verdict_mask == 1, "worker's signal mask (%d)", verdict_mask);
	CHECK(verdict_alt == 1, "worker's sigaltstack (%d)", verdict_alt);
	cs_finish();
}
