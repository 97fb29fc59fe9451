/* Bounce classification (kumo.configure_bounce_classifier): rule files map
 * categories to regular expressions, and a classifier built from them
 * names the category of an SMTP response.
 *
 * A rule file is KumoMTA's BounceClassifierFile, in TOML or JSON:
 *     [rules]
 *     InvalidRecipient = ["^(451|550) [45]\\.1\\.[1234] ", ...]
 *     BadDomain = [...]
 * Each category is an array of patterns in the syntax of the Rust regex
 * crate (RX_PLAIN, see rx.h). A category may be one of KumoMTA's
 * predefined labels (bounce_predefined) or any label of the user's own; a
 * label that differs from a predefined one only in case is refused as a
 * typo. Keys of the document other than `rules` are ignored, as KumoMTA's
 * reader ignores them.
 *
 * A response is matched as one line, "CODE C.S.D CONTENT" (no enhanced
 * code: "CODE CONTENT"), KumoMTA's Response::to_single_line. When several
 * rules match, the first one loaded wins: files in the order given, the
 * categories of a file in the order the file writes them, the patterns of a
 * category in order.
 *
 * The classifier is a list of PCRE2 programs (status-code rules joined, see
 * bounce.c) and is immutable once built: any number of threads may classify with it at
 * once, without locks; each thread keeps its own match data. Pure apart
 * from that per-thread scratch. */
#ifndef KUMOD_LUA_LIB_BOUNCE_H
#define KUMOD_LUA_LIB_BOUNCE_H
#include <stdbool.h>
#include <stddef.h>

typedef struct bounce_rules bounce_rules;
typedef struct bounce_classifier bounce_classifier;

enum bounce_format { BOUNCE_TOML = 0, BOUNCE_JSON = 1 };

/* KumoMTA's predefined categories, in its order; NULL-terminated. */
extern const char *const bounce_predefined[];

bounce_rules *bounce_rules_new(void);
void bounce_rules_free(bounce_rules *rs);
size_t bounce_rules_count(const bounce_rules *rs);

/* Parses one rule document of len bytes and appends its rules, each pattern
 * translated and compiled on its own so that an error names it. source
 * names the document in errors (a file name). 0, or a negative KERR_* with
 * "SOURCE: ..." in err naming the category and pattern at fault (nothing of
 * this document is kept then). */
int bounce_rules_add_text(bounce_rules *rs, const char *text, size_t len, enum bounce_format fmt,
                          const char *source, char *err, size_t errlen);

/* Reads a file named *.toml or *.json (KumoMTA refuses other names) and
 * adds it as above. */
int bounce_rules_add_file(bounce_rules *rs, const char *path, char *err, size_t errlen);

/* Builds the classifier of every rule added so far (rs may be freed
 * afterwards). NULL with the reason in err. */
bounce_classifier *bounce_classifier_build(const bounce_rules *rs, char *err, size_t errlen);
void bounce_classifier_free(bounce_classifier *c);
/* How many PCRE2 programs the rules became (for tests and diagnostics). */
size_t bounce_classifier_programs(const bounce_classifier *c);

/* The category of one response line, or NULL when no rule matches (the
 * caller says "Uncategorized"). The string belongs to c. Any thread. */
const char *bounce_classify_line(const bounce_classifier *c, const char *line, size_t len);

/* The same for a response in parts: code, enhanced code (cls 0: none) and
 * content (NULL: empty). */
const char *bounce_classify(const bounce_classifier *c, int code, int cls, int subject, int detail,
                            const char *content);

/* How many classifications stopped at PCRE2's backtracking limits (and
 * were taken as uncategorized) since the start of the process. */
unsigned long bounce_limit_hits(void);

#endif
