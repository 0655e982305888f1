// kind: a directory held open (openat relative to it)
// area: files and pipes
// expect: refused
// refusal: directory
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int d = open(cs_dir, O_RDONLY | O_DIRECTORY);
	SETUP(d >= 0, "open dir");
	cs_ready();
	cs_wait_check();
	int f = openat(d, "check", O_RDONLY);
	CHECK(f >= 0, "openat relative to the directory fd: %s", strerror(errno));
	struct stat st;
	CHECK(fstat(d, &st) == 0 && S_ISDIR(st.st_mode), "not a directory");
	cs_finish();
}
