/* kumod's version string, the one `kumod --version` prints and kumo.version
 * holds: "YYYY.MM.DD-hash" of the commit built, read the way KumoMTA's
 * versions read (so that policies may compare them lexicographically).
 * One definition (version.c, given its value by CMake) so the two cannot
 * disagree. */
#ifndef KUMOD_CORE_VERSION_H
#define KUMOD_CORE_VERSION_H

/* Static storage; never NULL. */
const char *kumod_version(void);
/* `git describe` of the tree built (with -dirty), or "unknown". */
const char *kumod_git_describe(void);

#endif
