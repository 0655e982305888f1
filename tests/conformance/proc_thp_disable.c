// kind: transparent huge pages disabled for the process (PR_SET_THP_DISABLE)
// area: process
// expect: refused
// refusal: THP
#include "conform.h"
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	SETUP(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "PR_SET_THP_DISABLE");
	cs_ready();
	cs_wait_check();
	CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disable lost");
	cs_finish();
}
