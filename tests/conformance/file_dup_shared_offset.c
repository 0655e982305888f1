// kind: two fds sharing one open file description (dup): shared offset and flags
// area: files and pipes
// expect: refused
// refusal: share one open file description
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *p = cs_path("f");
	int a = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
	SETUP(a >= 0, "open");
	SETUP(write(a, "abcdef", 6) == 6, "write");
	int b = dup(a);
	SETUP(b >= 0, "dup");
	cs_ready();
	cs_wait_check();
	CHECK(lseek(a, 2, SEEK_SET) == 2, "lseek");
	CHECK(lseek(b, 0, SEEK_CUR) == 2, "the dup'ed fd no longer shares the offset (%ld)", (long)lseek(b, 0, SEEK_CUR));
	fcntl(a, F_SETFL, O_NONBLOCK);
	CHECK(fcntl(b, F_GETFL) & O_NONBLOCK, "the dup'ed fd no longer shares the status flags");
	cs_finish();
}
