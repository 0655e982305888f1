// kind: pages holding data, then made PROT_NONE (mprotect)
// area: memory
// expect: refused
// refusal: PROT_NONE
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 16 * 4096;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	for (size_t i = 0; i < len; i++)
		m[i] = (uint8_t)(i % 251);
	SETUP(mprotect(m, len, PROT_NONE) == 0, "mprotect");
	cs_ready();
	cs_wait_check();
	CHECK(!cs_has_vmflag(m, "rd"), "the mapping became readable");
	CHECK(mprotect(m, len, PROT_READ) == 0, "mprotect(PROT_READ): %s", strerror(errno));
	size_t bad = 0;
	for (size_t i = 0; i < len; i++)
		bad += m[i] != (uint8_t)(i % 251);
	CHECK(bad == 0, "%zu of %zu bytes under PROT_NONE changed", bad, len);
	cs_finish();
}
