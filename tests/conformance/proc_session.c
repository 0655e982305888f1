// kind: session and process group leader (setsid)
// area: process
// expect: restored
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(setsid() == getpid(), "setsid");
	cs_ready();
	cs_wait_check();
	CHECK(getsid(0) == getpid(), "getsid() is %d, not the program's pid %d", getsid(0), getpid());
	CHECK(getpgrp() == getpid(), "getpgrp() is %d, not the program's pid %d", getpgrp(), getpid());
	cs_finish();
}
