/* The pod sandbox's first process: holds the pod's namespaces open and reaps orphans, and exits on
 * SIGINT/SIGTERM. Built statically by scripts/images.sh, since registry.k8s.io cannot be reached. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (getpid() != 1) return 1; /* only meaningful as a container's init */
  if (sigaction(SIGINT, &term, NULL) || sigaction(SIGTERM, &term, NULL) || sigaction(SIGCHLD, &child, NULL))
    return 2;
  for (;;) pause();
}
