"""kumo.configure_accounting_db_path: receptions and deliveries are counted
into KumoMTA's accounting table (one row per month, event_time
"YYYY-MM-01 00:00:00" UTC), written by the flusher thread and once more at
shutdown; a path that cannot be written is logged and kumod keeps working."""
import datetime
import os
import sqlite3

import kumod_harness as kh

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = '{logs}' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
  kumo.dns.configure_resolver { name_servers = { '{dns}' } }
  kumo.configure_accounting_db_path 'ACCT'
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { maildir_path = '{dir}/md' } }
end)
"""


def send(k, n):
    with k.smtp() as s:
        for i in range(n):
            s.sendmail("a@src.example", [f"rcpt{i}@sink.test"],
                       f"Subject: acct {i}\r\n\r\nbody\r\n")


def test_counts_reach_the_database(kumod_factory, tmp_path):
    db = str(tmp_path / "acct" / "accounting.db")
    os.makedirs(os.path.dirname(db))
    k = kumod_factory(policy=POLICY.replace("ACCT", db))
    send(k, 3)
    k.wait_records(type="Delivery", count=3)
    k.stop()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT event_time, received, delivered FROM accounting").fetchall()
    con.close()
    month = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-01 00:00:00")
    assert rows == [(month, 3, 3)], rows
    # a second run adds to the same month's row
    k.start()
    send(k, 1)
    k.wait_records(type="Delivery", count=4)
    k.stop()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT event_time, received, delivered FROM accounting").fetchall()
    con.close()
    assert rows == [(month, 4, 4)], rows


def test_unwritable_path_is_logged(kumod_factory, tmp_path):
    k = kumod_factory(policy=POLICY.replace("ACCT", "/nonexistent/dir/accounting.db"))
    send(k, 1)
    k.wait_records(type="Delivery", count=1)
    k.stop()
    assert "failed to record 1 receptions + 1 deliveries in /nonexistent/dir/accounting.db" \
        in k.diag(all_runs=True)
