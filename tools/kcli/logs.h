/* kcli logs: reading kumod's local delivery logs (see logs.c). */
#ifndef KUMOD_KCLI_LOGS_H
#define KUMOD_KCLI_LOGS_H

/* Runs the command with its own argv (argv[0] is the command name).
 * Returns the exit status: 0, 1 (unreadable directory) or 2 (usage). */
int kcli_logs(const char *name, int argc, char **argv);

#endif
