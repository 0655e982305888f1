// kind: madvise state MADV_DONTDUMP, MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE
// area: memory
// expect: restored
#include "conform.h"
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	size_t len = 16 << 20;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	memset(m, 3, len);
	uint8_t *dd = m, *wf = m + (4 << 20), *hg = m + (8 << 20), *nh = m + (12 << 20);
	SETUP(madvise(dd, 1 << 20, MADV_DONTDUMP) == 0, "MADV_DONTDUMP");
	SETUP(madvise(wf, 1 << 20, MADV_WIPEONFORK) == 0, "MADV_WIPEONFORK");
	int thp = madvise(hg, 2 << 20, MADV_HUGEPAGE) == 0;
	int nthp = madvise(nh, 2 << 20, MADV_NOHUGEPAGE) == 0;
	cs_ready();
	cs_wait_check();
	CHECK(cs_has_vmflag(dd, "dd"), "MADV_DONTDUMP lost");
	CHECK(cs_has_vmflag(wf, "wf"), "MADV_WIPEONFORK lost");
	CHECK(!thp || cs_has_vmflag(hg, "hg"), "MADV_HUGEPAGE lost");
	CHECK(!nthp || cs_has_vmflag(nh, "nh"), "MADV_NOHUGEPAGE lost");
	CHECK(!cs_has_vmflag(m + (2 << 20), "dd") && !cs_has_vmflag(m + (2 << 20), "wf"), "flags spread to neighbours");
	CHECK(dd[5] == 3 && wf[5] == 3 && hg[5] == 3 && nh[5] == 3, "contents");
	pid_t c = fork();
	if (c == 0)
		_exit(wf[5] == 0 && dd[5] == 3 ? 0 : 1);
	int st = 0;
	waitpid(c, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "MADV_WIPEONFORK memory not wiped in a child");
	cs_finish();
}
