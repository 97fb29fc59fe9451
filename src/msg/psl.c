/* The public suffix list (see psl.h): an open-addressed set of the rules
 * ("com", "*.ck", "!www.ck"), lower-cased, read once under pthread_once.
 * The lookup walks the name's suffixes from the longest, so the longest
 * matching rule wins and an exception rule ("!www.ck") beats the wildcard
 * it carves out of ("*.ck"), as the list's algorithm says. A missing file
 * leaves the default rule only; nothing here fails after loading. */
#include "msg/psl.h"

#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

#define PSL_DEFAULT_FILE "/usr/share/publicsuffix/public_suffix_list.dat"

static struct {
    char **slots;
    size_t cap, n;
    int load_rc;
} g_psl;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static uint64_t hash_n(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static bool set_has(const char *s, size_t n)
{
    if (!g_psl.cap)
        return false;
    for (size_t i = hash_n(s, n) & (g_psl.cap - 1);; i = (i + 1) & (g_psl.cap - 1)) {
        const char *e = g_psl.slots[i];
        if (!e)
            return false;
        if (strlen(e) == n && memcmp(e, s, n) == 0)
            return true;
    }
}

static int set_grow(void)
{
    size_t cap = g_psl.cap ? g_psl.cap * 2 : 16384;
    char **ns = calloc(cap, sizeof(*ns));
    if (!ns)
        return KERR_NOMEM;
    for (size_t i = 0; i < g_psl.cap; i++) {
        char *e = g_psl.slots[i];
        if (!e)
            continue;
        size_t k = hash_n(e, strlen(e)) & (cap - 1);
        while (ns[k])
            k = (k + 1) & (cap - 1);
        ns[k] = e;
    }
    free(g_psl.slots);
    g_psl.slots = ns;
    g_psl.cap = cap;
    return 0;
}

static int set_add(const char *s, size_t n)
{
    if (set_has(s, n))
        return 0;
    if ((g_psl.n + 1) * 2 > g_psl.cap && set_grow() != 0)
        return KERR_NOMEM;
    char *e = malloc(n + 1);
    if (!e)
        return KERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        e[i] = (char)tolower((unsigned char)s[i]);
    e[n] = 0;
    size_t k = hash_n(e, n) & (g_psl.cap - 1);
    while (g_psl.slots[k])
        k = (k + 1) & (g_psl.cap - 1);
    g_psl.slots[k] = e;
    g_psl.n++;
    return 0;
}

int psl_add_rules(const char *text, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        /* a rule is the line's first word; "//" starts a comment */
        size_t s = i;
        while (s < e && (text[s] == ' ' || text[s] == '\t'))
            s++;
        size_t w = s;
        while (w < e && !isspace((unsigned char)text[w]))
            w++;
        if (w > s && !(w - s >= 2 && text[s] == '/' && text[s + 1] == '/')) {
            int rc = set_add(text + s, w - s);
            if (rc != 0)
                return rc;
        }
        i = e + 1;
    }
    return 0;
}

static void load_once(void)
{
    const char *path = getenv("KUMOD_PSL_FILE");
    if (!path || !*path)
        path = PSL_DEFAULT_FILE;
    FILE *f = fopen(path, "rb");
    if (!f) {
        g_psl.load_rc = KERR_IO;
        return;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            char *nb = realloc(buf, cap + 262144);
            if (!nb) {
                g_psl.load_rc = KERR_NOMEM;
                break;
            }
            buf = nb;
            cap += 262144;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (r == 0)
            break;
        len += r;
    }
    fclose(f);
    if (g_psl.load_rc == 0)
        g_psl.load_rc = psl_add_rules(buf, len);
    free(buf);
}

int psl_load(void)
{
    pthread_once(&g_once, load_once);
    return g_psl.load_rc;
}

bool psl_org_domain(const char *domain, char *out, size_t outlen)
{
    psl_load();
    size_t n = strlen(domain);
    if (n == 0 || n >= 256 || domain[0] == '.' || domain[n - 1] == '.')
        return false;
    char d[256];
    for (size_t i = 0; i <= n; i++)
        d[i] = (char)tolower((unsigned char)domain[i]);
    /* label starts, left to right */
    size_t starts[128], nl = 0;
    starts[nl++] = 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] == '.') {
            if (nl == 128 || i + 1 >= n || d[i + 1] == '.')
                return false;
            starts[nl++] = i + 1;
        }
    size_t ps = nl - 1; /* the default rule "*": the TLD */
    char tmp[260];
    for (size_t i = 0; i < nl; i++) {
        const char *s = d + starts[i];
        size_t sl = n - starts[i];
        tmp[0] = '!';
        memcpy(tmp + 1, s, sl);
        if (set_has(tmp, sl + 1)) {
            ps = i + 1;
            break;
        }
        bool hit = set_has(s, sl);
        if (!hit && i + 1 < nl) {
            size_t pl = n - starts[i + 1];
            tmp[0] = '*';
            tmp[1] = '.';
            memcpy(tmp + 2, d + starts[i + 1], pl);
            hit = set_has(tmp, pl + 2);
        }
        if (hit) {
            ps = i;
            break;
        }
    }
    if (ps == 0 || ps >= nl + 1)
        return false;
    const char *org = d + starts[ps - 1];
    size_t ol = n - starts[ps - 1];
    if (ol + 1 > outlen)
        return false;
    memcpy(out, org, ol + 1);
    return true;
}
