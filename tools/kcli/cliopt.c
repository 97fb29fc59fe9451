/* kcli's shared ends of option parsing (cliopt.h): one wording of the
 * usage errors for every subcommand. Runs in kcli's single thread; every
 * failure exits the process with status 2. */
#include "cliopt.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void kcli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kcli: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nRun 'kcli %s --help' for usage.\n", cmd ? cmd : "");
    va_end(ap);
    exit(2);
}

void kcli_bad_option(const char *cmd, int ch, char **argv)
{
    if (ch == ':')
        kcli_usage_error(cmd, "option %s needs a value", argv[optind - 1]);
    kcli_usage_error(cmd, "unexpected argument %s", argv[optind - 1]);
}

void kcli_no_more_args(const char *cmd, int argc, char **argv)
{
    if (optind < argc)
        kcli_usage_error(cmd, "unexpected argument %s", argv[optind]);
}
