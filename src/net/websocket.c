/* WebSocket framing (RFC 6455 §5) and the handshake keys (§4.1, §4.2.2),
 * for the trace endpoint and the clients (kcli, TSA, kumo.http). Pure: the caller owns every buffer; ws_msg
 * grows its own up to its max. Fails by returning a negative close code
 * that the caller sends in its Close frame before dropping the peer. */
#include "net/websocket.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "core/utf8.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

void ws_accept_key(const char *key, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, key, strlen(key)) != 1 ||
        EVP_DigestUpdate(ctx, WS_GUID, sizeof(WS_GUID) - 1) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 20) {
        /* cannot happen with a working libcrypto; an empty key fails the
         * client's check rather than ours */
        out[0] = 0;
    } else {
        EVP_EncodeBlock((unsigned char *)out, md, 20);
    }
    EVP_MD_CTX_free(ctx);
}

int ws_client_key(char out[25])
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        out[0] = 0;
        return KERR_IO;
    }
    EVP_EncodeBlock((unsigned char *)out, raw, sizeof(raw));
    return 0;
}

size_t ws_client_frame(uint8_t *out, uint8_t opcode, const void *p, size_t n)
{
    uint8_t mask[4];
    if (RAND_bytes(mask, sizeof(mask)) != 1)
        return 0;
    size_t h = ws_frame_header(out, opcode, n, mask);
    if (n) {
        memcpy(out + h, p, n);
        ws_unmask(out + h, n, mask, 0);
    }
    return h + n;
}

long ws_parse_frame(const uint8_t *buf, size_t n, bool want_masked, uint64_t max_payload,
                    ws_frame *f)
{
    if (n < 2)
        return WS_AGAIN;
    memset(f, 0, sizeof(*f));
    f->fin = buf[0] & 0x80;
    f->opcode = buf[0] & 0x0F;
    if (buf[0] & 0x70)
        return -WS_CLOSE_PROTOCOL; /* RSV1-3: no extension was negotiated */
    bool control = f->opcode & 0x8;
    if ((f->opcode > WS_OP_BINARY && !control) || f->opcode > WS_OP_PONG)
        return -WS_CLOSE_PROTOCOL;
    f->masked = buf[1] & 0x80;
    if (f->masked != want_masked)
        return -WS_CLOSE_PROTOCOL; /* §5.1: clients mask, servers do not */
    uint64_t len = buf[1] & 0x7F;
    size_t h = 2;
    if (len == 126) {
        if (n < 4)
            return WS_AGAIN;
        len = (uint64_t)buf[2] << 8 | buf[3];
        h = 4;
        if (len < 126)
            return -WS_CLOSE_PROTOCOL; /* §5.2: the minimal number of bytes */
    } else if (len == 127) {
        if (n < 10)
            return WS_AGAIN;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | buf[2 + i];
        h = 10;
        if (len >> 63 || len <= 0xFFFF)
            return -WS_CLOSE_PROTOCOL;
    }
    if (control && (!f->fin || len > 125))
        return -WS_CLOSE_PROTOCOL; /* §5.5 */
    if (len > max_payload)
        return -WS_CLOSE_TOO_BIG;
    if (f->masked) {
        if (n < h + 4)
            return WS_AGAIN;
        memcpy(f->mask, buf + h, 4);
        h += 4;
    }
    f->len = len;
    f->hdr_len = h;
    if (n - h < len)
        return WS_AGAIN;
    return (long)(h + len);
}

void ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        p[i] ^= mask[(off + i) & 3];
}

size_t ws_frame_header(uint8_t out[14], uint8_t opcode, uint64_t len, const uint8_t *mask)
{
    size_t h = 2;
    out[0] = (uint8_t)(0x80 | (opcode & 0x0F));
    uint8_t mbit = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
    } else if (len <= 0xFFFF) {
        out[1] = mbit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        h = 4;
    } else {
        out[1] = mbit | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        h = 10;
    }
    if (mask) {
        memcpy(out + h, mask, 4);
        h += 4;
    }
    return h;
}

/* §7.4: codes an endpoint may put in a Close frame. */
static bool close_code_ok(unsigned c)
{
    return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

int ws_msg_feed(ws_msg *m, const ws_frame *f, const uint8_t *payload)
{
    if (f->opcode & 0x8) {
        if (f->opcode == WS_OP_CLOSE && f->len > 0) {
            if (f->len == 1)
                return -WS_CLOSE_PROTOCOL;
            unsigned code = (unsigned)payload[0] << 8 | payload[1];
            if (!close_code_ok(code))
                return -WS_CLOSE_PROTOCOL;
            if (!utf8_valid((const char *)payload + 2, (size_t)f->len - 2))
                return -WS_CLOSE_BAD_DATA;
        }
        return WS_MSG_CONTROL;
    }
    if (f->opcode == WS_OP_CONT) {
        if (!m->opcode)
            return -WS_CLOSE_PROTOCOL; /* a continuation of nothing */
    } else {
        if (m->opcode)
            return -WS_CLOSE_PROTOCOL; /* §5.4: messages do not interleave */
        m->opcode = f->opcode;
        m->len = 0;
    }
    if (f->len > m->max || m->len > m->max - (size_t)f->len)
        return -WS_CLOSE_TOO_BIG;
    if (m->len + (size_t)f->len + 1 > m->cap) {
        size_t ncap = m->cap ? m->cap : 256;
        while (ncap < m->len + (size_t)f->len + 1)
            ncap *= 2;
        uint8_t *np = realloc(m->data, ncap);
        if (!np)
            return -WS_CLOSE_TOO_BIG;
        m->data = np;
        m->cap = ncap;
    }
    if (f->len)
        memcpy(m->data + m->len, payload, (size_t)f->len);
    m->len += (size_t)f->len;
    m->data[m->len] = 0;
    if (!f->fin)
        return WS_MSG_NONE;
    if (m->opcode == WS_OP_TEXT && !utf8_valid((const char *)m->data, m->len))
        return -WS_CLOSE_BAD_DATA;
    return WS_MSG_DATA;
}

void ws_msg_reset(ws_msg *m)
{
    m->opcode = 0;
    m->len = 0;
}

void ws_msg_fini(ws_msg *m)
{
    free(m->data);
    m->data = NULL;
    m->len = m->cap = 0;
    m->opcode = 0;
}
