// kind: robust mutex held by a thread that then exits (robust futex list)
// area: threads
// expect: refused
// refusal: robust futex list
#include "conform.h"
#include <pthread.h>

static pthread_mutex_t mu;
static volatile int go, locked;

static void *holder(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	locked = 1;
	while (!go)
		cs_sleep_ms(5);
	return NULL; /* exits holding the mutex */
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&mu, &a);
	pthread_t t;
	SETUP(pthread_create(&t, NULL, holder, NULL) == 0, "pthread_create");
	while (!locked)
		cs_sleep_ms(1);
	cs_ready();
	cs_wait_check();
	go = 1;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 3;
	int rc = pthread_mutex_timedlock(&mu, &ts);
	CHECK(rc == EOWNERDEAD, "locking the dead owner's robust mutex gave %d (%s), not EOWNERDEAD", rc, strerror(rc));
	cs_finish();
}
