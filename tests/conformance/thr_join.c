// kind: pthreads: a joinable thread with thread-local data (clear-child-tid), joined after restore
// area: threads
// expect: refused
// refusal: robust futex list
#include "conform.h"
#include <pthread.h>
#include <sys/syscall.h>

static __thread int tls = 0;
static volatile int go;
static pid_t tids[2];

static void *worker(void *arg)
{
	tls = (int)(intptr_t)arg;
	tids[1] = (pid_t)syscall(SYS_gettid);
	while (!go)
		cs_sleep_ms(5);
	return (void *)(intptr_t)(tls * 2);
}

static void *timeout(void *arg)
{
	(void)arg;
	cs_sleep_ms(5000);
	cs_fail("pthread_join did not return within 5 s (clear-child-tid lost?)");
	cs_finish();
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	pthread_t t;
	tls = 5;
	tids[0] = (pid_t)syscall(SYS_gettid);
	SETUP(pthread_create(&t, NULL, worker, (void *)(intptr_t)21) == 0, "pthread_create");
	while (!tids[1])
		cs_sleep_ms(1);
	cs_ready();
	cs_wait_check();
	CHECK(tls == 5, "main thread's TLS");
	CHECK(tids[0] == syscall(SYS_gettid), "main tid changed");
	CHECK(syscall(SYS_tgkill, getpid(), tids[1], 0) == 0, "worker tid %d gone", tids[1]);
	pthread_t wd;
	pthread_create(&wd, NULL, timeout, NULL);
	go = 1;
	void *ret = NULL;
	CHECK(pthread_join(t, &ret) == 0, "pthread_join");
	CHECK((intptr_t)ret == 42, "worker's result %ld", (long)(intptr_t)ret);
	cs_finish();
}
