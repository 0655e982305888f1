// kind: MADV_DONTFORK on a mapping (VmFlags dc)
// area: memory
// expect: refused
// refusal: MADV_DONTFORK
#include "conform.h"
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 4 * 4096;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	memset(m, 7, len);
	SETUP(madvise(m, len, MADV_DONTFORK) == 0, "madvise");
	cs_ready();
	cs_wait_check();
	CHECK(cs_has_vmflag(m, "dc"), "VmFlags lost dc (MADV_DONTFORK)");
	CHECK(m[len - 1] == 7, "contents");
	pid_t c = fork();
	if (c == 0) {
		/* The mapping must be absent in the child: mincore fails with ENOMEM. */
		unsigned char v;
		_exit(mincore(m, 4096, &v) < 0 && errno == ENOMEM ? 0 : 1);
	}
	int st = 0;
	waitpid(c, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a forked child still has the MADV_DONTFORK mapping");
	cs_finish();
}
