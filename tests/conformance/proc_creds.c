// kind: credentials: supplementary groups, gids, no_new_privs, a dropped capability
// area: process
// expect: restored
#include "conform.h"
#include <grp.h>
#include <sys/prctl.h>
#include <linux/capability.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	gid_t groups[] = { 5, 6, 77 };
	SETUP(setgroups(3, groups) == 0, "setgroups");
	SETUP(setresgid(40, 41, 42) == 0, "setresgid");
	SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	SETUP(prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) == 0, "capbset drop");
	cs_ready();
	cs_wait_check();
	gid_t g[16];
	int n = getgroups(16, g);
	CHECK(n == 3 && g[0] == 5 && g[1] == 6 && g[2] == 77, "groups (%d)", n);
	gid_t r, e, s;
	getresgid(&r, &e, &s);
	CHECK(r == 40 && e == 41 && s == 42, "gids %d %d %d", r, e, s);
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0) == 0, "dropped bounding capability is back");
	CHECK(prctl(PR_CAPBSET_READ, CAP_CHOWN, 0, 0, 0) == 1, "CAP_CHOWN bounding lost");
	cs_finish();
}
