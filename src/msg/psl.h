/* The public suffix list (publicsuffix.org) and the organizational domain
 * of RFC 7489 §3.2 that DMARC aligns identifiers with. The list is read
 * once, on first use, from KUMOD_PSL_FILE or Debian's
 * /usr/share/publicsuffix/public_suffix_list.dat (ICANN and private
 * sections alike), and then only read: any thread. Rules in Unicode are
 * kept as written, so an A-label (xn--) name does not match them. */
#ifndef KUMOD_MSG_PSL_H
#define KUMOD_MSG_PSL_H
#include <stdbool.h>
#include <stddef.h>

/* Loads the list now (it is otherwise loaded on first use). Returns 0 or
 * KERR_IO / KERR_NOMEM; without a list every TLD is the only public suffix
 * (the list's own default rule "*"). */
int psl_load(void);

/* The organizational domain of domain (lower case, no trailing dot,
 * labels as given): the public suffix plus one label, written to out.
 * Returns false when domain is itself a public suffix, is empty or does
 * not fit. */
bool psl_org_domain(const char *domain, char *out, size_t outlen);

/* Adds rules from text (the list's format) to the loaded list: for tests.
 * Returns 0 or KERR_NOMEM. Not thread safe against lookups in flight. */
int psl_add_rules(const char *text, size_t len);

#endif
