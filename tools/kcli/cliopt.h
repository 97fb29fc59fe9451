/* The tail every kcli subcommand's getopt_long loop ends with: the usage
 * error (exit status 2, pointing at the subcommand's --help), the answer
 * to an option getopt did not take (a missing value or an unknown
 * option), and the check that no argument is left over. The loops use
 * getopt_long with optstring ":" (leading colon: ':' for a missing
 * value, '?' for anything unknown) and opterr = 0. */
#ifndef KCLI_CLIOPT_H
#define KCLI_CLIOPT_H

/* Prints "kcli: <message>" and "Run 'kcli CMD --help' for usage." to
 * stderr and exits with status 2. cmd NULL: no subcommand. */
void kcli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* For a getopt_long result ch that no case took: ':' is "option X needs a
 * value", anything else "unexpected argument X" (X: argv[optind - 1]). */
void kcli_bad_option(const char *cmd, int ch, char **argv) __attribute__((noreturn));

/* A usage error when arguments are left after argv[optind]. */
void kcli_no_more_args(const char *cmd, int argc, char **argv);

#endif
