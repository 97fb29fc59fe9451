/* WebSocket (RFC 6455) pieces that know nothing of sockets: the opening
 * handshake's accept key, a resumable frame parser, a message assembler
 * that joins fragments and checks what the RFC requires of a peer, and
 * the frame header writer, and the client's side of the handshake and
 * masking. The trace endpoint (trace_http.c) uses them as a server; kcli,
 * the TSA subscriber (tsa_sub.c) and kumo.http.connect_websocket
 * (lua/lib/http_ws.c) as clients. Pure functions over caller memory; any
 * thread; nothing allocates except ws_msg (bounded by its max). */
#ifndef KUMOD_NET_WEBSOCKET_H
#define KUMOD_NET_WEBSOCKET_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close status codes (RFC 6455 §7.4.1). */
enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_BAD_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
};

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + the
 * RFC's GUID)); out gets 28 characters and a NUL. */
void ws_accept_key(const char *key, char out[29]);

/* A fresh random Sec-WebSocket-Key (§4.1: 16 random bytes, base64): out
 * gets 24 characters and a NUL. Returns 0, or KERR_IO when the system has
 * no randomness to give. */
int ws_client_key(char out[25]);

/* A client's frame (§5.3: clients mask every frame with a fresh random
 * key): writes the header, the mask and the masked payload p[0..n) into
 * out, which has room for n + 14 bytes, and returns the frame's length;
 * 0 when there is no randomness for the mask. */
size_t ws_client_frame(uint8_t *out, uint8_t opcode, const void *p, size_t n);

/* One frame header as parsed. The payload is buf[hdr_len .. hdr_len+len). */
typedef struct ws_frame {
    bool fin;
    uint8_t opcode;
    bool masked;
    uint8_t mask[4];
    uint64_t len;
    size_t hdr_len;
} ws_frame;

enum { WS_AGAIN = 0 };

/* Parses the frame header at buf[0..n). Returns a positive count (the
 * header plus the payload, all present in buf), WS_AGAIN when more bytes
 * are needed, or a negative close code (-WS_CLOSE_*) for a frame the peer
 * must not send: reserved bits or opcodes (no extension is negotiated),
 * a control frame that is fragmented or longer than 125 bytes, a length
 * that is not minimally encoded or has the top bit set, a payload longer
 * than max_payload (-WS_CLOSE_TOO_BIG), and a mask present when the
 * other side must not mask or absent when it must (want_masked). */
long ws_parse_frame(const uint8_t *buf, size_t n, bool want_masked, uint64_t max_payload,
                    ws_frame *f);

/* XORs p[0..n) with the mask, starting at payload offset off. */
void ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off);

/* Writes a frame header (FIN set) for a payload of len bytes into out
 * (at most 14 bytes) and returns its length. With mask non-NULL the MASK
 * bit and key are written; the caller masks the payload with ws_unmask. */
size_t ws_frame_header(uint8_t out[14], uint8_t opcode, uint64_t len, const uint8_t *mask);

/* The data message being assembled from frames, and control frames as
 * they come. */
typedef struct ws_msg {
    uint8_t *data;
    size_t len, cap;
    uint8_t opcode; /* of the message in progress; 0: none */
    size_t max;     /* largest message accepted */
} ws_msg;

enum { WS_MSG_NONE = 0, WS_MSG_DATA = 1, WS_MSG_CONTROL = 2 };

/* Feeds one parsed frame (payload already unmasked, payload[0..f->len)).
 * Returns WS_MSG_DATA when a text or binary message is complete (in
 * m->data/m->len, opcode in m->opcode; the caller reads it and calls
 * ws_msg_reset), WS_MSG_CONTROL for a close/ping/pong frame (handle it
 * from f and payload), WS_MSG_NONE for a fragment kept, or a negative
 * close code: continuation without a message, a new message inside
 * another, a message over max (TOO_BIG), text that is not UTF-8
 * (BAD_DATA), a close payload of 1 byte or with invalid status or text. */
int ws_msg_feed(ws_msg *m, const ws_frame *f, const uint8_t *payload);
void ws_msg_reset(ws_msg *m);
void ws_msg_fini(ws_msg *m);

#endif
