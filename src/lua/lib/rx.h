/* Regular expressions with the syntax KumoMTA documents (the Rust regex
 * crate, plus fancy-regex's extensions for kumo.regex.compile), run by
 * PCRE2 with its JIT. Pure; a compiled rx is immutable and may be shared,
 * but each thread needs its own match data (rx_match_new).
 *
 * Where the two syntaxes differ, the pattern is either translated to the
 * PCRE2 spelling of the same meaning or refused with an error that names
 * the construct, so that a pattern never silently matches otherwise:
 *   translated: \uXXXX, \u{X..}, \UXXXXXXXX -> \x{..}; \v (Rust: the
 *     vertical tab) -> \x0B; $ means end of text only (PCRE2_DOLLAR_ENDONLY:
 *     PCRE2's $ would also match before a final newline); ., \w, \d, \s, \b
 *     and case-insensitivity are Unicode-aware (PCRE2_UTF | PCRE2_UCP), as
 *     in Rust; invalid UTF-8 in a haystack never matches but is no error
 *     (PCRE2_MATCH_INVALID_UTF).
 *   refused (different meaning or none in Rust): nested classes and the
 *     class set operations && -- ~~ ([a-z&&[^aeiou]]); \Z, \z is fine;
 *     \h \H \V \R \X \N \C \K \G \Q..\E \e \c \g \o{} \0 and octal escapes;
 *     \b{..}, \< and \>; (?# comments), (?| branch reset, recursion
 *     ((?R) (?1) (?&name) (?P>name)), callouts (?C), (* verbs, (?'name');
 *     {,n}; inline flags other than i m s x U (Rust's R, u and PCRE2's
 *     n J ^ xx); multi-digit backreferences (\12: octal or backreference).
 *   fancy-regex extensions, which PCRE2 runs with the same meaning:
 *     backreferences \1..\9 and \k<name>, look-ahead and look-behind,
 *     atomic groups (?>..), possessive quantifiers, conditionals (?(1)..).
 *     With RX_PLAIN (kumo.regex_set_map uses the plain Rust regex crate)
 *     these are refused too.
 * Matching is bounded: a pattern that backtracks catastrophically stops
 * with RX_ELIMIT instead of stalling the reactor (Rust's engine is linear
 * for plain patterns). */
#ifndef KUMOD_LUA_LIB_RX_H
#define KUMOD_LUA_LIB_RX_H
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>

enum rx_mode { RX_FANCY = 0, RX_PLAIN = 1 };

/* Translates a Rust-syntax pattern into PCRE2 syntax (see above). Returns a
 * malloc'd pattern (length in *outlen) or NULL with the reason in err. */
char *rx_translate(const char *pat, size_t len, enum rx_mode mode, size_t *outlen, char *err,
                   size_t errlen);

/* Translates and compiles (JIT when available). NULL with the reason in err
 * ("... at offset N"). */
pcre2_code *rx_compile(const char *pat, size_t len, enum rx_mode mode, char *err, size_t errlen);

/* Compiles a pattern already in PCRE2 syntax (rx_translate's output, or
 * alternatives joined from several) with rx's options plus extra (e.g.
 * PCRE2_ANCHORED | PCRE2_DUPNAMES), JIT when available. NULL with the
 * reason in err and the PCRE2 error code in *ec (ec may be NULL). */
pcre2_code *rx_compile_pcre2(const char *t, size_t len, uint32_t extra, int *ec, char *err,
                             size_t errlen);

#define RX_ELIMIT (-1000)
/* pcre2_match with kumod's limits. Returns > 0 on a match (ovector pairs),
 * PCRE2_ERROR_NOMATCH, RX_ELIMIT, or another negative PCRE2 error. */
int rx_exec(const pcre2_code *re, const char *s, size_t n, size_t start, uint32_t opts,
            pcre2_match_data *md);

/* Regex crate's escape(): every meta character gets a backslash. Returns a
 * malloc'd string. */
char *rx_escape(const char *s, size_t n, size_t *outlen);

/* Expands a replacement template ($1, $name, ${name}, $$) for one match
 * into out (realloc'd buffer *out of *cap bytes, *outlen used). Unknown
 * groups expand to nothing, as in Rust. Returns 0 or -1 on OOM. */
int rx_expand(const pcre2_code *re, const char *subj, const size_t *ov, int npairs, const char *rep,
              size_t rlen, char **out, size_t *outlen, size_t *cap);

#endif
