// kind: working directory (relative paths)
// area: process
// expect: restored
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *sub = cs_path("sub");
	SETUP(mkdir(sub, 0755) == 0, "mkdir");
	SETUP(chdir(sub) == 0, "chdir");
	int fd = open("here", O_CREAT | O_WRONLY, 0644);
	SETUP(fd >= 0, "open");
	close(fd);
	char want[4096];
	SETUP(getcwd(want, sizeof want), "getcwd");
	cs_ready();
	cs_wait_check();
	char got[4096] = "";
	CHECK(getcwd(got, sizeof got) && strcmp(got, want) == 0, "cwd is %s, not %s", got, want);
	CHECK(access("here", F_OK) == 0, "relative path does not resolve in the old cwd");
	cs_finish();
}
