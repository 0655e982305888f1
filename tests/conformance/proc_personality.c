// kind: execution domain / personality flags (ADDR_NO_RANDOMIZE, as setarch -R sets)
// area: process
// expect: refused
// refusal: personality
#include "conform.h"
#include <sys/personality.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int p = personality(0xffffffff);
	SETUP(personality((unsigned long)p | ADDR_NO_RANDOMIZE) != -1, "personality");
	cs_ready();
	cs_wait_check();
	int now = personality(0xffffffff);
	CHECK(now & ADDR_NO_RANDOMIZE, "personality %#x lost ADDR_NO_RANDOMIZE", now);
	cs_finish();
}
