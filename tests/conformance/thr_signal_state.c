// kind: a second thread made by raw clone (as Go makes them) with its own signal mask and sigaltstack
// area: threads
// expect: restored
#include "conform.h"
#include <sched.h>
#include <sys/syscall.h>

/* The thread uses raw system calls only: it shares the main thread's TLS (no
 * CLONE_SETTLS), like a Go runtime thread, and has no robust list or
 * clear-child-tid address. */
static volatile int go, ready, done;
static char altstack[65536];
static volatile int verdict_mask = -1, verdict_alt = -1, tid2;
static volatile uint64_t seen_mask;
static char stack[256 << 10];

static int worker(void *arg)
{
	(void)arg;
	uint64_t set = (1ULL << (SIGUSR1 - 1)) | (1ULL << (SIGWINCH - 1));
	syscall(SYS_rt_sigprocmask, SIG_BLOCK, &set, NULL, 8);
	stack_t st = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
	syscall(SYS_sigaltstack, &st, NULL);
	tid2 = (int)syscall(SYS_gettid);
	ready = 1;
	while (!go) {
		struct timespec ts = { 0, 5000000 };
		syscall(SYS_nanosleep, &ts, NULL);
	}
	uint64_t cur = 0;
	syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &cur, 8);
	seen_mask = cur;
	verdict_mask = (cur & set) == set && !(cur & (1ULL << (SIGUSR2 - 1)));
	stack_t now;
	syscall(SYS_sigaltstack, NULL, &now);
	verdict_alt = now.ss_sp == altstack && now.ss_size == sizeof altstack && now.ss_flags == 0;
	done = 1;
	syscall(SYS_exit, 0);
	return 0;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
	SETUP(clone(worker, stack + sizeof stack, flags, NULL) > 0, "clone");
	while (!ready)
		cs_sleep_ms(1);
	/* After the clone: the thread's mask must not have it. */
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	sigprocmask(SIG_BLOCK, &s, NULL);
	cs_ready();
	cs_wait_check();
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	CHECK(sigismember(&cur, SIGUSR2) && !sigismember(&cur, SIGUSR1), "main thread's mask");
	CHECK(syscall(SYS_tgkill, getpid(), tid2, 0) == 0, "thread %d is gone", tid2);
	go = 1;
	for (int i = 0; i < 500 && !done; i++)
		cs_sleep_ms(10);
	CHECK(done, "the thread did not run on");
	CHECK(verdict_mask == 1, "the thread's signal mask (%d, mask %#llx)", verdict_mask, (unsigned long long)seen_mask);
	CHECK(verdict_alt == 1, "the thread's sigaltstack (%d)", verdict_alt);
	cs_finish();
}
