/* The end-to-end cluster's pause image and its workload pods' process: sleeps until SIGTERM or SIGINT,
 * then exits 0. Built static, so its image needs no libraries. */
#include <signal.h>
#include <unistd.h>

static void leave(int signal) {
  (void)signal;
  _exit(0);
}

int main(void) {
  signal(SIGTERM, leave);
  signal(SIGINT, leave);
  for (;;) pause();
}
