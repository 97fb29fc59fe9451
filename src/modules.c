/* kumod's module list (see modules.h). Main thread, before the reactors
 * start. A registration cannot fail here: the modules only record their
 * openers and endpoint tables; what fails does so later, when a policy VM
 * opens them (a Lua error) or a listener starts (a start-up error). */
#include "modules.h"

#include "delivery/deferred.h"
#include "delivery/lua_deliver.h"
#include "delivery/maildir.h"
#include "delivery/smtp_deliver.h"
#include "http/dashboard.h"
#include "http/explain.h"
#include "http/http.h"
#include "http/inject_lua.h"
#include "http/metrics_http.h"
#include "http/resolve_http.h"
#include "http/trace_http.h"
#include "log/loghook.h"
#include "lua/dns_lua.h"
#include "lua/explain_lua.h"
#include "lua/lib/amqp.h"
#include "lua/lib/arc.h"
#include "lua/lib/counter_series.h"
#include "lua/lib/crypto.h"
#include "lua/lib/digest.h"
#include "lua/lib/dkim.h"
#include "lua/lib/encode.h"
#include "lua/lib/file_type.h"
#include "lua/lib/fs.h"
#include "lua/lib/http_client.h"
#include "lua/lib/http_ws.h"
#include "lua/lib/lualib.h"
#include "lua/lib/mailauth.h"
#include "lua/lib/misc.h"
#include "lua/lib/mpsc.h"
#include "lua/lib/nats.h"
#include "lua/lib/secrets.h"
#include "lua/lib/spf_lua.h"
#include "lua/lib/sqlite.h"
#include "lua/lib/time.h"
#include "lua/lib/uuid.h"
#include "lua/make_message_lua.h"
#include "lua/redis_lua.h"
#include "lua/services.h"
#include "net/hosts.h"
#include "queue/hookq.h"
#include "queue/queue.h"
#include "smtp/server.h"

void kumod_register_modules(void)
{
    /* the Message metatables first: later openers add methods to them
     * (kumo.dkim's msg:dkim_sign) */
    message_lua_register();
    services_lua_register();
    smtpsrv_lua_register();
    http_lua_register();
    inject_lua_register();
    http_metrics_add_endpoints();
    http_trace_add_endpoints();
    http_resolve_add_endpoints();
    http_dashboard_add_endpoints();
    http_explain_add_endpoints();
    explain_lua_register();
    queue_init();
    /* reception hands messages to the queues (smtp sits above queue) */
    smtpsrv_set_insert_hook(queue_insert);
    /* log hook records become queued messages (queue sits above log) */
    loghook_set_sink(hookq_sink);
    lua_deliver_register();
    deferred_register();
    smtp_deliver_register();
    maildir_register();
    /* the hosts file is read here, before any reactor resolves a name, and
     * then watched by its own thread (dns_shutdown stops it) */
    hosts_start();
    dns_lua_register();
    redis_lua_register();
    /* the kumo.* library modules (src/lua/lib) */
    secrets_lua_register();
    dkim_lua_register();
    mailauth_lua_register();
    arc_lua_register();
    spf_lua_register();
    digest_lua_register();
    encode_lua_register();
    uuid_lua_register();
    time_lua_register();
    crypto_lua_register();
    fs_lua_register();
    file_type_lua_register();
    counter_series_lua_register();
    sqlite_lua_register();
    mpsc_lua_register();
    http_client_lua_register();
    http_ws_lua_register();
    amqp_lua_register();
    nats_lua_register();
    misc_lua_register();
    lualib_register();
}
