#!/usr/bin/python3
"""A scriptable aiosmtpd peer for tests/unit/smtp/test_client.c.

Listens on 127.0.0.1 (port 0 = any), prints "READY <port>" on stdout once
bound, and appends one JSON object per line to --log for every event the
test wants to check: connections, every read() as the server saw it ("chunk",
so pipelined commands show up together), TLS, AUTH and received messages.

Behaviour is chosen by the client's own data, so one peer serves many tests:
  sender   tempfail*  -> 451 to MAIL FROM
           close421*  -> 421 to MAIL FROM, then the server hangs up
           datafail*  -> 451 to the DATA command
           data354*   -> 354 to DATA even when no recipient was accepted
           dotfail*   -> 452 to the final dot
           dotslow*   -> the final dot is answered after 5 s
  rcpt     reject5*   -> 550 to RCPT TO
           reject4*   -> 451 to RCPT TO
  EHLO     nopipe.*   -> PIPELINING is not offered
           noehlo.*   -> EHLO is refused with 502 (HELO works)
           kick.*     -> 200 ms after EHLO the server says 421 and hangs up
"""
import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LOG = None
CONN_IDS = iter(range(1, 1 << 30))


def log(**ev):
    LOG.write(json.dumps(ev) + "\n")
    LOG.flush()


def text(b):
    return b.decode("latin-1") if isinstance(b, (bytes, bytearray)) else str(b)


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if hostname.startswith("kick."):
            asyncio.get_running_loop().call_later(0.2, server.kick)
        if hostname.startswith("nopipe."):
            return responses
        return responses[:1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"] + responses[1:]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.startswith("tempfail"):
            return "451 4.3.0 sender deferred"
        if address.startswith("close421"):
            server.close_soon = True
            return "421 4.3.2 closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 sender ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject5"):
            return f"550 5.1.1 <{address}>: no such user"
        if address.startswith("reject4"):
            return "451 4.2.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server, session, envelope):
        log(conn=server.conn_id, ev="message", mail_from=envelope.mail_from,
            mail_options=envelope.mail_options, rcpts=envelope.rcpt_tos,
            data=text(envelope.original_content), tls=server.tls_up,
            auth=server.auth_user)
        if envelope.mail_from.startswith("dotfail"):
            return "452 4.3.1 insufficient system storage"
        if envelope.mail_from.startswith("dotslow"):
            await asyncio.sleep(5)
        return "250 2.0.0 queued as 1234"


class Peer(SMTP):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.conn_id = next(CONN_IDS)
        self.tls_up = False
        self.auth_user = None
        self.close_soon = False

    def connection_made(self, transport):
        if self.transport is None:  # not the STARTTLS re-wrap
            peer = transport.get_extra_info("peername")
            log(conn=self.conn_id, ev="connect", peer=peer[0])
        super().connection_made(transport)

    def data_received(self, data):
        log(conn=self.conn_id, ev="chunk", data=text(data))
        super().data_received(data)

    def connection_lost(self, exc):
        log(conn=self.conn_id, ev="close")
        super().connection_lost(exc)

    def kick(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.4.2 idle too long\r\n")
            self.transport.close()

    async def push(self, status):
        await super().push(status)
        if self.close_soon:
            self.close_soon = False
            self.transport.close()

    async def smtp_EHLO(self, hostname):
        if hostname.startswith("noehlo."):
            await self.push("502 5.5.1 EHLO not supported")
            return
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg):
        await super().smtp_STARTTLS(arg)
        self.tls_up = self._tls_protocol is not None
        log(conn=self.conn_id, ev="tls", ok=self.tls_up)

    async def smtp_DATA(self, arg):
        if self.envelope.mail_from and self.envelope.mail_from.startswith("datafail"):
            await self.push("451 4.3.1 no DATA today")
            return
        if (self.envelope.mail_from and self.envelope.mail_from.startswith("data354")
                and not self.envelope.rcpt_tos):
            # a server that does not check (RFC 2920 section 3.1 warns of it)
            self.envelope.rcpt_tos.append("phantom@nowhere.test")
        await super().smtp_DATA(arg)


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--auth", help="USER:PASS accepted by AUTH PLAIN")
    ap.add_argument("--auth-without-tls", action="store_true")
    args = ap.parse_args()
    LOG = open(args.log, "a", encoding="utf-8")

    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    user, _, password = (args.auth or ":").partition(":")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (args.auth is not None and isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == user
              and auth_data.password.decode() == password)
        log(conn=server.conn_id, ev="auth", mechanism=mechanism, ok=ok,
            user=text(auth_data.login) if isinstance(auth_data, LoginPassword) else None)
        if ok:
            server.auth_user = user
        return AuthResult(success=ok, handled=False)

    handler = Handler()

    def factory():
        return Peer(handler, hostname="peer.test", tls_context=tls_context,
                    enable_SMTPUTF8=True, authenticator=authenticator,
                    auth_require_tls=not args.auth_without_tls,
                    auth_exclude_mechanism=["LOGIN"])

    async def serve():
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", args.port)
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()
        await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
