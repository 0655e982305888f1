// kind: shared file mapping mapped read-only from a file opened O_RDWR, made writable later (mprotect)
// area: memory
// expect: refused
// refusal: opened for writing
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("data");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	SETUP(fd >= 0, "open");
	SETUP(ftruncate(fd, 4096) == 0, "ftruncate");
	char *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	SETUP(m != MAP_FAILED, "mmap");
	close(fd);
	cs_ready();
	cs_wait_check();
	CHECK(mprotect(m, 4096, PROT_READ | PROT_WRITE) == 0, "mprotect(PROT_WRITE) on the shared mapping: %s", strerror(errno));
	if (!cs_failed) {
		memcpy(m, "w", 1);
		msync(m, 4096, MS_SYNC);
		fd = open(path, O_RDONLY);
		char c = 0;
		CHECK(pread(fd, &c, 1, 0) == 1 && c == 'w', "write through the mapping not in the file");
	}
	cs_finish();
}
