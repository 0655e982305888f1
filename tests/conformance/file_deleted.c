// kind: a file deleted while open
// area: files and pipes
// expect: refused
// refusal: (deleted)
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *p = cs_path("gone");
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
	SETUP(fd >= 0, "open");
	SETUP(write(fd, "keep", 4) == 4, "write");
	unlink(p);
	cs_ready();
	cs_wait_check();
	char b[4];
	CHECK(pread(fd, b, 4, 0) == 4 && memcmp(b, "keep", 4) == 0, "contents of the deleted file");
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0, "link count %ld", (long)st.st_nlink);
	cs_finish();
}
