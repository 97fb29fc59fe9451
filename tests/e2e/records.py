"""Exact expectations for KumoMTA log records (spec §3) and stored messages."""
import datetime
import re
import uuid

from kumod_harness import HOSTNAME, decode_kumoref, header_fields, split_message

RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z")
UUID_RX = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# chrono's to_rfc2822(): the day of the month is not zero-padded
RFC2822 = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9]\d? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d \+0000"

RECORD_KEYS = {
    "type", "id", "sender", "recipient", "queue", "site", "size", "response", "peer_address",
    "timestamp", "event_time", "created", "created_time", "num_attempts",
    "bounce_classification", "egress_pool", "egress_source", "source_address",
    "feedback_report", "meta", "headers", "delivery_protocol", "reception_protocol", "nodeid",
}


def uuid1_unix(hex_id):
    """Creation time (unix seconds, float) of a UUID v1 spool id."""
    u = uuid.UUID(hex=hex_id)
    assert u.version == 1, f"{hex_id} is not a UUID v1"
    return (u.time - 0x01B21DD213814000) / 1e7


def rfc3339_unix(s):
    m = RFC3339.fullmatch(s)
    assert m, f"not RFC 3339 UTC: {s!r}"
    dt = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    return dt.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)


def check_times(rec, t_before, t_after):
    assert isinstance(rec["timestamp"], int)
    assert t_before - 1 <= rec["timestamp"] <= t_after + 1, (rec["timestamp"], t_before, t_after)
    assert int(rfc3339_unix(rec["event_time"])) == rec["timestamp"]
    assert isinstance(rec["created"], int)
    assert int(rfc3339_unix(rec["created_time"])) == rec["created"]


def enhanced(code_text):
    """'5.7.1' -> {class, subject, detail}"""
    if code_text is None:
        return None
    c, s, d = (int(x) for x in code_text.split("."))
    return {"class": c, "subject": s, "detail": d}


def check_reception(rec, *, id, sender, recipient, ehlo, size, queue, meta, headers,
                    t_before, t_after, tls=None):
    """The exact Reception record. tls: (cipher, version) or None."""
    keys = set(RECORD_KEYS) | {"session_id"}
    if tls:
        keys |= {"tls_cipher", "tls_protocol_version"}
    assert set(rec) == keys, f"fields differ: extra {set(rec) - keys}, missing {keys - set(rec)}"
    assert rec["type"] == "Reception"
    assert rec["id"] == id
    assert rec["sender"] == sender
    assert rec["recipient"] == recipient
    assert rec["queue"] == queue
    assert rec["site"] == ""
    assert rec["size"] == size
    assert rec["response"] == {"code": 250, "enhanced_code": None, "content": "", "command": None}
    assert rec["peer_address"] == {"name": ehlo, "addr": "127.0.0.1"}
    check_times(rec, t_before, t_after)
    assert rec["created"] == int(uuid1_unix(id))
    assert rec["num_attempts"] == 0
    assert rec["bounce_classification"] == "Uncategorized"
    assert rec["egress_pool"] is None
    assert rec["egress_source"] is None
    assert rec["source_address"] is None
    assert rec["feedback_report"] is None
    assert rec["meta"] == meta
    assert rec["headers"] == headers
    assert rec["delivery_protocol"] is None
    assert rec["reception_protocol"] == "ESMTP"
    assert UUID_RX.fullmatch(rec["nodeid"]), rec["nodeid"]
    assert UUID_RX.fullmatch(rec["session_id"]), rec["session_id"]
    if tls:
        assert (rec["tls_cipher"], rec["tls_protocol_version"]) == tls


def check_rejection(rec, *, code, enhanced_code, content, command, ehlo, sender=None):
    """The fields of a Rejection record that every caller cares about."""
    assert rec["type"] == "Rejection"
    assert rec["id"] == ""
    assert rec["response"] == {"code": code, "enhanced_code": enhanced(enhanced_code),
                               "content": content, "command": command}, rec["response"]
    assert rec["peer_address"] == {"name": ehlo, "addr": "127.0.0.1"}
    assert rec["queue"] == "" and rec["site"] == ""
    assert rec["size"] == 0
    assert rec["num_attempts"] == 0
    if sender is not None:
        assert rec["sender"] == sender
    assert UUID_RX.fullmatch(rec.get("session_id", "")), rec


def by_ehlo(name):
    return lambda r: (r.get("peer_address") or {}).get("name") == name


def check_stored(data, *, id, ehlo, recipient, original, proto="ESMTP", tls_info="",
                 hostname=HOSTNAME, header_name="X-KumoRef"):
    """A stored message is: the supplemental header, the Received header,
    then exactly the bytes the client sent (after dot-unstuffing)."""
    fields = header_fields(split_message(data)[0])
    assert fields[0][0] == header_name, fields[:2]
    ref = decode_kumoref(fields[0][1])
    assert ref == {"_@_": "\\_/", "recipient": recipient}, ref
    assert fields[1][0] == "Received", fields[:2]
    received = (f"Received: from {ehlo} (127.0.0.1)\r\n  by {hostname} (KumoMTA 127.0.0.1) \r\n"
                f"  with {proto}{tls_info} id {id} for <{recipient}>;\r\n  ").encode()
    i = data.find(b"Received: ")
    assert data[i:i + len(received)] == received, data[i:i + len(received) + 60]
    rest = data[i + len(received):]
    date, sep, tail = rest.partition(b"\r\n")
    assert sep and re.fullmatch(RFC2822, date.decode()), date
    assert tail == original, (tail[:300], original[:300])
