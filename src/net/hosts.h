/* The system hosts file (/etc/hosts, or the file named by CARES_HOSTS as
 * c-ares does), as KumoMTA's resolver consults it before DNS for A and AAAA.
 *
 * hosts_parse() is pure: text in, a table out. The process-wide copy is
 * loaded by hosts_start() (at start-up, before any reactor asks) and kept
 * fresh by a watcher thread that stats the file every second and re-reads it
 * when its mtime, size or inode changes; hosts_lookup() only reads the
 * current table under a mutex, so a reactor never touches the file. */
#ifndef KUMOD_NET_HOSTS_H
#define KUMOD_NET_HOSTS_H
#include <netinet/in.h>
#include <stddef.h>

typedef struct hosts_addr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char raw[16];
} hosts_addr;

typedef struct hosts_table hosts_table;

/* Parses hosts-file text: "ADDRESS NAME [ALIAS...]" per line, '#' starts a
 * comment, blank and malformed lines (an address inet_pton refuses, no name)
 * are skipped. Names are matched case-insensitively and without a trailing
 * dot; a name's addresses keep file order, duplicates dropped. Never NULL
 * (aborts when out of memory). */
hosts_table *hosts_parse(const char *text, size_t len);
void hosts_table_free(hosts_table *t);
/* Number of distinct names in t. */
size_t hosts_table_names(const hosts_table *t);

/* Copies up to max addresses of family (AF_INET, AF_INET6 or AF_UNSPEC for
 * both, IPv4 first) that t gives name into out. Returns how many name has
 * of that family (may exceed max), or -1 when name is not in t at all. */
int hosts_table_lookup(const hosts_table *t, const char *name, int family, hosts_addr *out,
                       size_t max);

/* ---- the process-wide hosts file ------------------------------------------- */

/* Loads the file now (CARES_HOSTS if set, else /etc/hosts) and starts the
 * watcher thread. Idempotent. A missing or unreadable file is an empty
 * table, retried by the watcher. */
void hosts_start(void);
/* Stops the watcher and frees the table; hosts_lookup() then finds nothing
 * until hosts_start(). */
void hosts_stop(void);
/* Same contract as hosts_table_lookup() on the current table; -1 before
 * hosts_start(). Any thread; never blocks on I/O. */
int hosts_lookup(const char *name, int family, hosts_addr *out, size_t max);

/* For tests: use path instead (NULL: back to the default), and check the
 * file now instead of waiting for the watcher. hosts_refresh() returns 1
 * when it (re)loaded the file, 0 when unchanged. */
void hosts_set_path(const char *path);
int hosts_refresh(void);

#endif
