// kind: session and process group leader (setsid)
// area: process
// expect: gap
// gap: the image does not say whether the program led its session or process group, so restore leaves it in the restorer's (outside its pid namespace: getsid and getpgrp return 0); restoring it needs a flag in the image's ProcessInfo (a format change) and setsid/setpgid in restore; refusing every leader would refuse every service started by systemd or a shell
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
