// kind: rseq registration (glibc registers it on every thread unless glibc.pthread.rseq=0)
// area: threads
// expect: refused
// refusal: rseq
// tunables: glibc.pthread.rseq=1
#include "conform.h"
#include <sys/auxv.h>
#include <sys/syscall.h>

/* glibc exports where its rseq area is: __rseq_offset from the thread pointer,
 * __rseq_size, and the signature is RSEQ_SIG. Registering the same area again
 * gives EBUSY while the kernel still knows it, and succeeds once it has
 * forgotten it. */
extern const ptrdiff_t __rseq_offset;
extern const unsigned int __rseq_size;
#define RSEQ_SIG 0x53053053

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(__rseq_size > 0, "glibc did not register rseq (__rseq_size 0)");
	char *area = (char *)__builtin_thread_pointer() + __rseq_offset;
	cs_ready();
	cs_wait_check();
	long rc = syscall(SYS_rseq, area, __rseq_size < 32 ? 32 : __rseq_size, 0, RSEQ_SIG);
	CHECK(rc < 0 && errno == EBUSY, "registering glibc's rseq area again gave %ld (%s): the kernel had forgotten it",
	      rc, rc < 0 ? strerror(errno) : "success");
	cs_finish();
}
