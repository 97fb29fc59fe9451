/* The version strings of the build (see version.h). CMake compiles only this
 * file with them, so a new commit rebuilds one object, not the tree. Pure
 * constants; any thread. */
#include "core/version.h"

#ifndef KUMOD_VERSION
#define KUMOD_VERSION "0.0.0-unknown"
#endif
#ifndef KUMOD_GIT
#define KUMOD_GIT "unknown"
#endif

const char *kumod_version(void)
{
    return KUMOD_VERSION;
}

const char *kumod_git_describe(void)
{
    return KUMOD_GIT;
}
