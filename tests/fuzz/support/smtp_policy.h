/* The policy the SMTP and HTTP fuzz targets run (see inproc.h): a
 * LocalDisk spool, local logs with headers and meta, an ESMTP listener
 * that relays for 127.0.0.1 and offers STARTTLS (self-signed), an HTTP
 * listener trusting 127.0.0.1, and handlers for every reception event that
 * call the Message header methods and the address accessors, as policies
 * do. Every message is saved, queued and delivered to a custom_lua sink
 * that accepts it (spool, queues, delivery and log records all run);
 * injected HTTP messages go to the "null" queue.
 *
 * KNOWN DEFECT (issue 25, defect 1, being fixed elsewhere): a header value
 * that is not UTF-8, copied into meta, aborts kumod in
 * message_meta_to_json. The handlers copy header values into meta only
 * when they are UTF-8 unless FUZZ_STRICT=1 (then the policy copies them as
 * policy/init.lua does). */
#ifndef KUMOD_FUZZ_SMTP_POLICY_H
#define KUMOD_FUZZ_SMTP_POLICY_H

static const char FUZZ_POLICY[] =
    "local kumo = require 'kumo'\n"
    "local strict = os.getenv('FUZZ_STRICT') == '1'\n"
    "local function meta_ok(v) return strict or utf8.len(v) ~= nil end\n"
    "kumo.on('init', function()\n"
    "  kumo.define_spool { name = 'data', path = '{dir}/data', kind = 'LocalDisk' }\n"
    "  kumo.define_spool { name = 'meta', path = '{dir}/meta', kind = 'LocalDisk' }\n"
    "  kumo.configure_local_logs { log_dir = '{dir}/logs', headers = { 'Subject', 'X-*' },\n"
    "    meta = { 'tenant', 'fuzz' } }\n"
    "  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = 'mx.fuzz.test',\n"
    "    relay_hosts = { '127.0.0.1' }, max_message_size = '256KiB', client_timeout = '5s',\n"
    "    max_recipients_per_message = 20, max_messages_per_connection = 20 }\n"
    "  kumo.start_http_listener { listen = '127.0.0.1:{http_port}',\n"
    "    trusted_hosts = { '127.0.0.1' } }\n"
    "  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n"
    "end)\n"
    "kumo.on('smtp_server_ehlo', function(domain, conn_meta)\n"
    "  if meta_ok(domain) then conn_meta:set_meta('fuzz', domain) end\n"
    "end)\n"
    "kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n"
    "  local _ = tostring(sender)\n"
    "  if sender.domain == 'reject.test' then kumo.reject(550, 'no thanks') end\n"
    "end)\n"
    "kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)\n"
    "  if rcpt.user == 'defer' then kumo.reject(451, '4.7.1 later') end\n"
    "end)\n"
    "kumo.on('smtp_server_message_received', function(msg, conn_meta)\n"
    "  local tenant = msg:get_first_named_header_value('X-Tenant')\n"
    "  if tenant and meta_ok(tenant) then msg:set_meta('tenant', tenant) end\n"
    "  for _, h in ipairs(msg:get_all_headers()) do local _ = h[1] .. h[2] end\n"
    "  for _, v in ipairs(msg:get_all_named_header_values('Received')) do local _ = #v end\n"
    "  if strict then msg:import_x_headers() end\n"
    "  msg:remove_x_headers({ 'x-drop' })\n"
    "  msg:remove_all_named_headers('X-Remove')\n"
    "  msg:prepend_header('X-Fuzz-Seen', 'yes')\n"
    "  msg:append_header('X-Fuzz-Tail', msg:sender().domain or '')\n"
    "  local _ = msg:recipient_list()\n"
    "end)\n"
    "kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n"
    "  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.sink' } } "
    "}\n"
    "end)\n"
    "kumo.on('make.sink', function(domain, tenant, campaign)\n"
    "  local sink = {}\n"
    "  function sink:send(msg) local _ = msg:get_data() end\n"
    "  function sink:close() end\n"
    "  return sink\n"
    "end)\n"
    "kumo.on('http_message_generated', function(msg)\n"
    "  local _ = msg:get_first_named_header_value('Subject')\n"
    "  msg:set_meta('queue', 'null')\n"
    "end)\n";

#endif
