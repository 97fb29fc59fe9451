/* The pure core of kumo.string: byte-string operations with the semantics
 * of the Rust str methods KumoMTA documents (split, splitn, rsplit, trim,
 * ...), Unicode White_Space, the header-style wrap, and the Public Suffix
 * List. Text is UTF-8 where a function needs characters; invalid bytes count
 * as one character each (never a crash). Pure; any thread (the PSL is
 * loaded once, under pthread_once). */
#ifndef KUMOD_LUA_LIB_KSTRING_H
#define KUMOD_LUA_LIB_KSTRING_H
#include <stdbool.h>
#include <stddef.h>

/* Length of the character at s (1..4; 1 for an invalid byte). */
size_t kstr_charlen(const char *s, size_t n);
/* When the character at s is Unicode White_Space, its length, else 0. */
size_t kstr_space_at(const char *s, size_t n);
/* The same, backwards: the length of the White_Space character that ends
 * at s + n, else 0. */
size_t kstr_space_before(const char *s, size_t n);

/* Trimming: the returned span [*start, *start + *len) of s. */
void kstr_trim(const char *s, size_t n, bool front, bool back, size_t *start, size_t *len);

/* Finds pat in s[from..n) (forwards) or s[0..to) (backwards, the last
 * match). An empty pattern matches at every character boundary. Returns
 * the offset or -1. */
long kstr_find(const char *s, size_t n, size_t from, const char *pat, size_t plen);
long kstr_rfind(const char *s, size_t to, const char *pat, size_t plen);

/* The wrapped form of text (see kumo.string.wrap): words split on ASCII
 * whitespace, lines filled to stay under soft, words longer than hard cut,
 * breaks written as "\r\n\t", trailing whitespace removed. Returns a
 * malloc'd string (length in *outlen) or NULL when memory ran out. */
char *kstr_wrap(const char *text, size_t n, size_t soft, size_t hard, size_t *outlen);

/* Public Suffix List (Mozilla's, from the Debian publicsuffix package).
 * The domain is normalised as KumoMTA does (one trailing dot removed,
 * ASCII lower-cased) into buf. Returns the offset in buf of the public
 * suffix / registrable domain, or -1 when there is none (the name is
 * itself a public suffix, or empty); -2 when the list cannot be read. */
long kstr_psl_suffix(const char *domain, size_t n, char *buf, size_t buflen);
long kstr_psl_domain(const char *domain, size_t n, char *buf, size_t buflen);
/* The path of the list, for error messages. */
const char *kstr_psl_path(void);

#endif
