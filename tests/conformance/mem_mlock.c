// kind: mlock'ed memory (VmFlags lo, VmLck)
// area: memory
// expect: refused
// refusal: mlock
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 8 * 4096;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	memset(m, 1, len);
	SETUP(mlock(m, len) == 0, "mlock");
	cs_ready();
	cs_wait_check();
	CHECK(cs_has_vmflag(m, "lo"), "mlock lost (VmFlags lo)");
	char lck[64] = "";
	cs_status_field("VmLck:", lck, sizeof lck);
	CHECK(atol(lck) >= 32, "VmLck is %s", lck);
	cs_finish();
}
