// kind: more mappings than the restore stub handles (18000)
// area: memory
// expect: refused
// refusal: mappings: the restore stub handles at most
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t n = 18000;
	char *m = mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	for (size_t i = 0; i < n; i += 2)
		SETUP(mprotect(m + i * 4096, 4096, PROT_READ) == 0, "mprotect");
	for (size_t i = 1; i < n; i += 2)
		m[i * 4096] = (char)i;
	cs_ready();
	cs_wait_check();
	size_t bad = 0;
	for (size_t i = 1; i < n; i += 2)
		bad += m[i * 4096] != (char)i;
	CHECK(bad == 0, "%zu pages changed", bad);
	cs_finish();
}
