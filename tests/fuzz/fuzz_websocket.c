/* libFuzzer harness for src/net/websocket.c: the frame parser and message
 * assembler as the trace endpoint runs them on what a client sends (masked
 * frames), and as kcli runs them on what kumod sends (unmasked). The first
 * byte picks the direction and how the stream is cut into reads; the rest
 * is the stream. Properties: a frame is never reported past the bytes
 * given; every strict prefix of a complete frame asks for more; a frame
 * that parses with FIN and is re-encoded by ws_frame_header gives the same
 * header bytes (the parser accepts only minimal lengths and no RSV bits);
 * an assembled message stays within max and a text message is UTF-8;
 * control frames are at most 125 bytes and never fragmented. */
#include <stdint.h>
#include <string.h>

#include "core/utf8.h"
#include "net/websocket.h"
#include "support/fuzz_util.h"

#define MAX_MSG 4096u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool masked = data[0] & 1;
    size_t step = (size_t)(data[0] >> 1) + 1; /* bytes arriving per read */
    data++;
    size--;
    uint8_t *buf = malloc(size + 1);
    if (!buf)
        return 0;
    ws_msg m = {.max = MAX_MSG};
    size_t have = 0, fed = 0;
    while (fed < size || have) {
        size_t more = size - fed < step ? size - fed : step;
        memcpy(buf + have, data + fed, more);
        have += more;
        fed += more;
        ws_frame f;
        long used = ws_parse_frame(buf, have, masked, MAX_MSG * 2, &f);
        if (used == WS_AGAIN) {
            if (more == 0)
                break; /* the stream ended inside a frame */
            continue;
        }
        if (used < 0) {
            FUZZ_CHECK(used == -WS_CLOSE_PROTOCOL || used == -WS_CLOSE_TOO_BIG, "close %ld",
                       -used);
            break;
        }
        FUZZ_CHECK((size_t)used <= have, "used %ld of %zu", used, have);
        FUZZ_CHECK(f.hdr_len + f.len == (uint64_t)used, "hdr %zu + len %llu != %ld", f.hdr_len,
                   (unsigned long long)f.len, used);
        FUZZ_CHECK(f.masked == masked, "mask bit");
        if (f.opcode & 0x8)
            FUZZ_CHECK(f.fin && f.len <= 125, "control frame len %llu fin %d",
                       (unsigned long long)f.len, f.fin);
        /* a strict prefix is incomplete */
        ws_frame g;
        size_t cut = (size_t)used > 1 ? (size_t)used - 1 - (buf[0] % ((size_t)used - 1)) : 0;
        FUZZ_CHECK(ws_parse_frame(buf, cut, masked, MAX_MSG * 2, &g) == WS_AGAIN,
                   "prefix %zu of %ld", cut, used);
        if (f.fin) {
            uint8_t h[14];
            size_t hl = ws_frame_header(h, f.opcode, f.len, masked ? f.mask : NULL);
            FUZZ_CHECK(hl == f.hdr_len && memcmp(h, buf, hl) == 0, "re-encoded header differs");
        }
        uint8_t *payload = buf + f.hdr_len;
        if (masked)
            ws_unmask(payload, (size_t)f.len, f.mask, 0);
        int r = ws_msg_feed(&m, &f, payload);
        if (r == WS_MSG_DATA) {
            FUZZ_CHECK(m.len <= MAX_MSG, "message of %zu", m.len);
            if (m.opcode == WS_OP_TEXT)
                FUZZ_CHECK(utf8_valid((const char *)m.data, m.len), "text not UTF-8");
            ws_msg_reset(&m);
        } else if (r < 0) {
            FUZZ_CHECK(r == -WS_CLOSE_PROTOCOL || r == -WS_CLOSE_TOO_BIG ||
                           r == -WS_CLOSE_BAD_DATA,
                       "close %d", -r);
            break;
        }
        memmove(buf, buf + used, have - (size_t)used);
        have -= (size_t)used;
    }
    ws_msg_fini(&m);
    free(buf);
    return 0;
}
