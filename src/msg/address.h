/* RFC 5322 address lists (§3.4) as they appear in From, To, Cc, Reply-To,
 * Sender...: mailboxes with optional display names, groups, quoted local
 * parts, domain literals, comments (CFWS) anywhere, RFC 2047 encoded words in
 * display names, and the obsolete forms of §4.4 that real mail still carries
 * (routes in angle brackets, empty list elements, dots in phrases). UTF-8 is
 * accepted in atoms (RFC 6532). Pure code over caller-owned bytes; results
 * are malloc'd and owned by the addr_list, and always valid UTF-8 (8-bit
 * bytes that are not UTF-8 become U+FFFD). Any thread.
 *
 * Grammar accepted (after unfolding; CFWS may appear between any tokens):
 *   address-list = [address] *("," [address])
 *   address      = mailbox / group
 *   group        = phrase ":" [mailbox *("," [mailbox])] ";"
 *   mailbox      = [phrase] "<" [route] [addr-spec] ">" / addr-spec
 *   addr-spec    = word *("." word) "@" (atom *("." atom) / "[" dtext "]")
 * The parser is iterative (comments nest without recursion) and linear in
 * the input. */
#ifndef KUMOD_MSG_ADDRESS_H
#define KUMOD_MSG_ADDRESS_H
#include <stdbool.h>
#include <stddef.h>

typedef struct addr_mailbox {
    char *name;   /* display name decoded to UTF-8; NULL when the mailbox has none */
    char *local;  /* local part with quoting removed; NULL for "<>" */
    char *domain; /* domain as written (a literal keeps its brackets); NULL for "<>" */
} addr_mailbox;

typedef struct addr_entry {
    bool is_group;
    addr_mailbox mbox; /* !is_group */
    char *group_name;  /* is_group: decoded display name, NULL when empty */
    addr_mailbox *members;
    size_t n_members;
} addr_entry;

typedef struct addr_list {
    addr_entry *v;
    size_t n;
} addr_list;

/* Parses s[0..n). 0 on success; KERR_PARSE with a reason (and the offset) in
 * err, or KERR_NOMEM. On failure *out is empty. */
int addr_list_parse(const char *s, size_t n, addr_list *out, char *err, size_t errlen);
void addr_list_fini(addr_list *l);

/* "local@domain" with the local part quoted (RFC 5322 §3.4.1) when it is not
 * a dot-atom, e.g. "\"info@\"@example.com". malloc'd; NULL when local or
 * domain is NULL or memory ran out. */
char *addr_spec_format(const char *local, const char *domain);

#endif
