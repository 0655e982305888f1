// kind: character devices (/dev/null, /dev/urandom, /dev/zero read)
// area: files and pipes
// expect: restored
#include "conform.h"
#include <sys/sysmacros.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int n = open("/dev/null", O_RDWR);
	int u = open("/dev/urandom", O_RDONLY);
	int z = open("/dev/zero", O_RDONLY);
	SETUP(n >= 0 && u >= 0 && z >= 0, "open");
	cs_ready();
	cs_wait_check();
	struct stat st;
	CHECK(fstat(n, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3, "/dev/null");
	CHECK(fstat(u, &st) == 0 && S_ISCHR(st.st_mode) && minor(st.st_rdev) == 9, "/dev/urandom");
	CHECK(write(n, "x", 1) == 1, "write /dev/null");
	char b[16];
	CHECK(read(u, b, 16) == 16, "read /dev/urandom");
	CHECK(read(z, b, 16) == 16 && b[0] == 0 && b[15] == 0, "read /dev/zero");
	CHECK((fcntl(n, F_GETFL) & O_ACCMODE) == O_RDWR, "/dev/null access mode");
	cs_finish();
}
