// kind: private anonymous memory, heap (brk), stack and static data with contents
// area: memory
// expect: restored
#include "conform.h"
#include <sys/mman.h>

static char bss[1 << 16];
static int data_var = 12345;

static uint8_t pat(size_t i) { return (uint8_t)(i * 131 + 7); }

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 64 << 20;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	for (size_t i = 0; i < len; i += 4096)
		m[i] = pat(i / 4096);
	m[len - 1] = 0x5a;
	char *heap = malloc(1000); /* small: from brk */
	SETUP(heap, "malloc");
	for (int i = 0; i < 1000; i++)
		heap[i] = (char)(i ^ 0x33);
	void *brk0 = sbrk(0);
	volatile char stack[8192];
	for (int i = 0; i < 8192; i++)
		stack[i] = (char)(i * 3);
	for (size_t i = 0; i < sizeof bss; i++)
		bss[i] = (char)(i * 5);
	data_var = 777;
	cs_ready();
	cs_wait_check();
	size_t bad = 0;
	for (size_t i = 0; i < len; i += 4096)
		bad += m[i] != pat(i / 4096);
	CHECK(bad == 0, "%zu of %zu anonymous pages lost their contents", bad, len / 4096);
	CHECK(m[len - 1] == 0x5a, "last byte of the mapping");
	for (int i = 0; i < 1000; i++)
		if (heap[i] != (char)(i ^ 0x33)) {
			cs_fail("heap byte %d", i);
			break;
		}
	CHECK(sbrk(0) == brk0, "program break moved: %p -> %p", brk0, sbrk(0));
	for (int i = 0; i < 8192; i++)
		if (stack[i] != (char)(i * 3)) {
			cs_fail("stack byte %d", i);
			break;
		}
	for (size_t i = 0; i < sizeof bss; i++)
		if (bss[i] != (char)(i * 5)) {
			cs_fail("bss byte %zu", i);
			break;
		}
	CHECK(data_var == 777, "data variable %d", data_var);
	/* The heap still grows. */
	char *more = malloc(200 << 10);
	CHECK(more != NULL, "malloc after restore");
	if (more)
		memset(more, 1, 200 << 10);
	CHECK(sbrk(4096) != (void *)-1, "sbrk after restore: %s", strerror(errno));
	cs_finish();
}
