"""Issue 25, the chaos test: kill -9 at random moments while messages are
being injected and delivered, N rounds, then every message that was ever
acknowledged with 250 must be delivered. Duplicates (a delivery in flight at
the kill, made again after the restart) are allowed and counted.

KUMOD_CHAOS_ROUNDS (default 6) and KUMOD_CHAOS_SEED set the rounds and the
random seed; the seed is printed so that a failure can be replayed.
"""
import os
import random
import re
import smtplib
import threading
import time

from kumod_harness import parse_ids, wait_until

ROUNDS = int(os.environ.get("KUMOD_CHAOS_ROUNDS", "6"))
CLIENTS = 4

# every domain is delivered into a maildir: the delivered file's name holds
# the spool id, so deliveries can be counted per message
HANDLERS = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { maildir_path = '{dir}/maildir' },
    retry_interval = '1s',
  }
end)
"""

BODY = b"From: <chaos@a.example>\r\nSubject: chaos\r\n\r\n" + b"chaos chaos chaos\r\n" * 60


def delivered_ids(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in os.listdir(d) if os.path.isdir(d) else []:
            m = re.search(r"([0-9a-f]{32})", name)
            if m:
                out.append(m.group(1))
    return out


class Injectors:
    def __init__(self, k):
        self.k = k
        self.lock = threading.Lock()
        self.acked = set()
        self.stop = threading.Event()
        self.unexpected = []

    def client(self, n):
        i = 0
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.k.smtp_port, timeout=10)
                s.ehlo(f"chaos{n}.e2e.test")
                while not self.stop.is_set():
                    i += 1
                    if s.mail(f"c{n}@a.example")[0] != 250:
                        break
                    if s.rcpt(f"r{n}-{i}@d.example")[0] != 250:
                        break
                    code, text = s.data(BODY)
                    if code == 250:
                        with self.lock:
                            self.acked.update(parse_ids(text.decode()))
                    elif code >= 500:
                        self.unexpected.append((code, text))
                        return
                    else:
                        break  # 4xx while kumod starts or stops: reconnect
                s.close()
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)  # killed under us, or not listening yet


def test_kill9_rounds_lose_no_acknowledged_message(kumod_factory):
    seed = int(os.environ.get("KUMOD_CHAOS_SEED", str(int(time.time()))))
    print(f"chaos seed {seed} rounds {ROUNDS}")
    rng = random.Random(seed)
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB", handlers=HANDLERS)
    inj = Injectors(k)
    threads = [threading.Thread(target=inj.client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    acked_at_kill = []
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.2, 1.5))
        k.kill9()
        with inj.lock:
            acked_at_kill.append(len(inj.acked))
        time.sleep(rng.uniform(0.0, 0.3))
        k.start()
    time.sleep(1.0)  # a last stretch of traffic on the final run
    inj.stop.set()
    for t in threads:
        t.join(30)
    assert inj.unexpected == []
    acked = set(inj.acked)
    assert len(acked) > ROUNDS * 10, f"too little traffic to test anything ({len(acked)})"

    maildir = k.path("maildir")
    wait_until(lambda: acked <= set(delivered_ids(maildir)), 180,
               what=f"delivery of all {len(acked)} acknowledged messages")
    ids = delivered_ids(maildir)
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    dups = len(ids) - len(set(ids))
    print(f"chaos: {ROUNDS} kills, {len(acked)} acknowledged, {len(ids)} deliveries, "
          f"{dups} duplicates ({dups / ROUNDS:.2f} per kill), acked at each kill {acked_at_kill}")
    # every restart read back every meta it found
    unreadable = re.findall(r"spool enumeration done: \d+ messages \((\d+) unreadable\)",
                            k.diag(all_runs=True))
    assert len(unreadable) == ROUNDS + 1 and set(unreadable) == {"0"}, unreadable
