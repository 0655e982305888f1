// kind: PROT_NONE address-space reservation (never touched), used later
// area: memory
// expect: restored
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 256 << 20;
	uint8_t *m = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	cs_ready();
	cs_wait_check();
	CHECK(!cs_has_vmflag(m, "rd") && !cs_has_vmflag(m, "wr"), "reservation became accessible");
	CHECK(cs_has_vmflag(m, "nr"), "MAP_NORESERVE lost (VmFlags nr)");
	CHECK(mprotect(m + (1 << 20), 1 << 20, PROT_READ | PROT_WRITE) == 0, "mprotect: %s", strerror(errno));
	size_t nonzero = 0;
	for (size_t i = 0; i < (1 << 20); i += 512)
		nonzero += m[(1 << 20) + i] != 0;
	CHECK(nonzero == 0, "fresh pages not zero");
	m[(1 << 20) + 5] = 9;
	CHECK(m[(1 << 20) + 5] == 9, "write");
	void *fixed = mmap(m + (8 << 20), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	CHECK(fixed == MAP_FAILED && errno == EEXIST, "the reservation no longer holds its range");
	cs_finish();
}
