/* Spool ids: time-based UUID v1, 16 raw bytes, 32 lower-case hex as text
 * (KumoMTA's SpoolId). Any thread. */
#ifndef KUMOD_CORE_SPOOLID_H
#define KUMOD_CORE_SPOOLID_H
#include <stdbool.h>
#include <stdint.h>

typedef struct spoolid {
    uint8_t b[16];
} spoolid;

#define SPOOLID_HEX_LEN 32

/* Makes a new unique v1 id (thread-safe, monotonic within the process). */
void spoolid_new(spoolid *out);
/* Writes 32 hex digits and a NUL into out. */
void spoolid_to_hex(const spoolid *id, char out[SPOOLID_HEX_LEN + 1]);
/* Parses 32 hex digits (also accepts the dashed 36-char UUID form). 0 or KERR_PARSE. */
int spoolid_from_hex(const char *s, spoolid *out);
/* The hyphenated lowercase UUID form (8-4-4-4-12), e.g. for session ids. */
#define SPOOLID_UUID_LEN 36
void spoolid_to_uuid_str(const spoolid *id, char out[SPOOLID_UUID_LEN + 1]);
/* Creation time encoded in the v1 timestamp, as Unix nanoseconds. */
int64_t spoolid_created_ns(const spoolid *id);
bool spoolid_eq(const spoolid *a, const spoolid *b);
/* A well-mixed 64-bit hash of the id (for hash tables). */
uint64_t spoolid_hash(const spoolid *id);

#endif
