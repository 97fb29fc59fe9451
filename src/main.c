/* kumod: argument parsing, start-up order, signals and orderly shutdown.
 *
 * Start-up: reactors start; each loads the policy into its own VM; reactor 0
 * runs pre_init and init (once per process); the spool opens; listeners
 * start (answering 421 until enumeration of the spool has finished); the
 * spool is enumerated. The main thread then only waits for signals: SIGTERM
 * and SIGINT shut down in order, SIGHUP reloads the policy into every VM. */
#include <ares.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <zstd.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/fsutil.h"
#include "core/reactor.h"
#include "modules.h"
#include "core/version.h"
#include "log/aaa_log.h"
#include "log/logs.h"
#include "http/inject_lua.h"
#include "lua/klua.h"
#include "lua/services.h"
#include "smtp/server.h"
#include "http/dashboard.h"
#include "http/explain.h"
#include "http/http.h"
#include "http/metrics_http.h"
#include "http/resolve_http.h"
#include "http/trace_http.h"
#include "queue/queue.h"
#include "queue/recovery.h"
#include "delivery/lua_deliver.h"
#include "delivery/deferred.h"
#include "delivery/maildir.h"
#include "delivery/smtp_deliver.h"
#include "lua/dns_lua.h"
#include "lua/redis_lua.h"
#include "net/redis.h"
#include "net/shthrottle.h"
#include "lua/lib/crypto.h"
#include "lua/lib/digest.h"
#include "lua/lib/dkim.h"
#include "lua/lib/mailauth.h"
#include "lua/lib/spf_lua.h"
#include "lua/lib/counter_series.h"
#include "lua/lib/sqlite.h"
#include "log/accounting.h"
#include "lua/lib/encode.h"
#include "lua/lib/file_type.h"
#include "lua/lib/fs.h"
#include "lua/lib/misc.h"
#include "lua/lib/mpsc.h"
#include "lua/lib/amqp.h"
#include "lua/lib/http_client.h"
#include "lua/lib/nats.h"
#include "log/loghook.h"
#include "queue/hookq.h"
#include "lua/lib/secrets.h"
#include "lua/lib/time.h"
#include "lua/lib/uuid.h"
#include "lua/lib/lualib.h"
#include "lua/make_message_lua.h"
#include "net/dns.h"
#include "net/hosts.h"
#include "tsa/tsa_http.h"
#include "tsa/tsa_lua.h"
#include "tsa/tsa_state.h"
#include "tsa/tsa_sub.h"

#define MAIN_MOD "kumod"

static const char *policy_path = "/opt/kumomta/etc/policy/init.lua";
static struct event_base *main_base;

/* ---- running something on a reactor and waiting for it ------------------- */

struct sync_job {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int rc;
    char err[2048];
    int reactor_idx;
    const char *event;
};

static void sync_job_init(struct sync_job *j)
{
    memset(j, 0, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
}

static void sync_job_finish(struct sync_job *j, int rc)
{
    pthread_mutex_lock(&j->lock);
    j->rc = rc;
    j->done = true;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

static int sync_job_wait(struct sync_job *j)
{
    pthread_mutex_lock(&j->lock);
    while (!j->done)
        pthread_cond_wait(&j->cond, &j->lock);
    pthread_mutex_unlock(&j->lock);
    int rc = j->rc;
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    return rc;
}

static void job_load_vm(void *arg)
{
    struct sync_job *j = arg;
    klua *vm = klua_load(policy_path, j->reactor_idx, j->err, sizeof(j->err));
    if (!vm) {
        sync_job_finish(j, -1);
        return;
    }
    klua_install(vm);
    klua_unref(vm);
    sync_job_finish(j, 0);
}

static void event_done(klua_call *c, int status, void *ud)
{
    struct sync_job *j = ud;
    klua_set_in_init(false);
    if (status == KLUA_OK) {
        sync_job_finish(j, 0);
        return;
    }
    snprintf(j->err, sizeof(j->err), "%s", klua_call_error(c));
    sync_job_finish(j, -1);
}

static void job_run_event(void *arg)
{
    struct sync_job *j = arg;
    klua_call *c;
    klua_call_begin(klua_current(), j->event, &c);
    klua_set_in_init(strcmp(j->event, "init") == 0 || strcmp(j->event, "pre_init") == 0 ||
                     strcmp(j->event, "tsa_init") == 0);
    klua_call_run(c, 0, event_done, j);
}

static int run_event_sync(const char *event, char *err, size_t errlen)
{
    struct sync_job j;
    sync_job_init(&j);
    j.event = event;
    reactor_post(reactor_get(0), job_run_event, &j);
    int rc = sync_job_wait(&j);
    if (rc != 0)
        snprintf(err, errlen, "%s", j.err);
    return rc;
}

static int load_all_vms(char *err, size_t errlen)
{
    for (int i = 0; i < reactor_count(); i++) {
        struct sync_job j;
        sync_job_init(&j);
        j.reactor_idx = i;
        reactor_post(reactor_get(i), job_load_vm, &j);
        if (sync_job_wait(&j) != 0) {
            snprintf(err, errlen, "%s", j.err);
            return -1;
        }
    }
    return 0;
}

static void job_queue_shutdown(void *arg)
{
    /* The resolver goes first: a scheduled queue still waiting for its MX
     * answer is freed below, and its lookup must never complete after that
     * (the reactors run on while the spool drains). Lookups pending now are
     * dropped; anything that resolves later gets a fresh resolver, freed at
     * the end of main. */
    dns_reactor_free(reactor_current());
    queue_reactor_shutdown();
    sync_job_finish(arg, 0);
}

/* ---- script mode (--script FILE) ------------------------------------------ */

static const char *script_path;
static char **script_argv;
static int script_argc;

static void script_done(klua_call *c, int status, void *ud)
{
    struct sync_job *j = ud;
    if (status == KLUA_OK) {
        sync_job_finish(j, 0);
        return;
    }
    snprintf(j->err, sizeof(j->err), "%s", klua_call_error(c));
    sync_job_finish(j, -1);
}

static void job_run_script(void *arg)
{
    struct sync_job *j = arg;
    klua_call *c;
    klua *vm = klua_load_script(script_path, 0, &c, j->err, sizeof(j->err));
    if (!vm) {
        sync_job_finish(j, -1);
        return;
    }
    /* arg, as the lua interpreter sets it: arg[0] the script, then its arguments */
    lua_State *L = klua_state(vm);
    lua_createtable(L, script_argc, 1);
    lua_pushstring(L, script_path);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < script_argc; i++) {
        lua_pushstring(L, script_argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    klua_install(vm);
    klua_unref(vm);
    klua_call_run(c, 0, script_done, j);
}

static int run_script(char *err, size_t errlen)
{
    struct sync_job j;
    sync_job_init(&j);
    reactor_post(reactor_get(0), job_run_script, &j);
    int rc = sync_job_wait(&j);
    if (rc != 0)
        snprintf(err, errlen, "%s", j.err);
    return rc;
}

/* ---- reload ------------------------------------------------------------ */

static void job_reload_vm(void *arg)
{
    (void)arg;
    reactor *r = reactor_current();
    char err[2048];
    klua *vm = klua_load(policy_path, reactor_index(r), err, sizeof(err));
    if (!vm) {
        /* Keep serving with the policy we have. */
        DERROR(MAIN_MOD, "reactor=%d policy reload failed, keeping the previous policy: %s",
               reactor_index(r), err);
        return;
    }
    klua_install(vm);
    klua_unref(vm);
    DINFO(MAIN_MOD, "reactor=%d policy reloaded (epoch %u)", reactor_index(r),
          klua_config_epoch());
}

static void reload_all(void)
{
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), job_reload_vm, NULL);
}

/* ---- signals ------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    if (sig == SIGHUP) {
        DINFO(MAIN_MOD, "SIGHUP: reloading policy %s", policy_path);
        sd_notify(0, "RELOADING=1");
        klua_bump_epoch();
        sd_notify(0, "READY=1");
        return;
    }
    DINFO(MAIN_MOD, "received %s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    event_base_loopbreak(main_base);
}

/* A second SIGTERM/SIGINT while the orderly shutdown runs (GNU timeout and
 * many supervisors send two) must not kill kumod with its spool half
 * closed: from the moment the shutdown starts, further ones are only noted.
 * Only async-signal-safe calls here. */
static void on_signal_during_shutdown(int sig)
{
    static const char msg[] = "kumod: already shutting down in order (the spool is being "
                              "closed); signal ignored\n";
    (void)sig;
    ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)n;
}

static void ignore_further_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal_during_shutdown;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* ---- --user: directories for the unprivileged user ------------------------ */

static uid_t chown_uid;
static gid_t chown_gid;

static int chown_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (lchown(path, chown_uid, chown_gid) != 0) {
        fprintf(stderr, "kumod: --user: cannot give %s to uid %d: %s\n", path, (int)chown_uid,
                strerror(errno));
        return -1;
    }
    return 0;
}

/* Creates each spool and log directory (0700), makes it private, and gives
 * it, with whatever an earlier run as root left in it, to the user kumod is
 * about to become. */
static int prepare_dir(const char *dir, bool is_spool, void *ud)
{
    (void)is_spool;
    (void)ud;
    if (fs_mkdir_p(dir, 0700) != 0) {
        fprintf(stderr, "kumod: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    /* private mail: whatever made the directory, nobody else reads it */
    struct stat st;
    if (stat(dir, &st) == 0 && (st.st_mode & 077) && chmod(dir, st.st_mode & 07700) != 0) {
        fprintf(stderr, "kumod: cannot make %s private: %s\n", dir, strerror(errno));
        return -1;
    }
    return nftw(dir, chown_one, 32, FTW_PHYS) == 0 ? 0 : -1;
}

/* Every directory kumod itself created in this run (log directories made
 * while init ran, their parents, the spool's) belongs to the user too. */
static int give_created(const char *dir, void *ud)
{
    (void)ud;
    return chown_one(dir, NULL, 0, NULL);
}

/* After the switch: a log directory that cannot be written would lose every
 * record while mail keeps flowing, so it stops the start instead. */
static int check_dir_writable(const char *dir, bool is_spool, void *ud)
{
    (void)ud;
    if (access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "kumod: the %s directory %s is not writable by user %s: %s\n",
                is_spool ? "spool" : "log", dir, (const char *)ud, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- arguments ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: kumod --policy FILE [--threads N] [--validate] [--user NAME]\n"
               "       kumod --tsa [--policy FILE]   (also as kumo-tsa)\n"
               "       kumod --script FILE [ARG...]\n"
               "\n"
               "  --policy FILE   the Lua policy to run (default "
               "/opt/kumomta/etc/policy/init.lua)\n"
               "  --threads N     number of reactor threads (default: CPU count; env "
               "KUMOD_THREADS)\n"
               "  --validate      load the policy, run init, report problems and exit\n"
               "  --tsa           run as the Traffic Shaping Automation daemon (tsa_init;\n"
               "                  default policy /opt/kumomta/etc/policy/tsa_init.lua)\n"
               "  --user NAME     drop privileges to NAME after start-up (when run as root)\n"
               "  --script FILE   run FILE as a Lua script with the kumo module (no\n"
               "                  listeners, no spool) and exit: 0 when it returns, 1 with\n"
               "                  the error when it raises one; ARGs are in the global arg\n"
               "  --version       show the version and those of the libraries kumod uses\n"
               "  --help          show this text\n"
               "\n"
               "Diagnostics go to stderr; filter them with KUMOD_LOG (e.g. "
               "KUMOD_LOG=kumod=debug).\n");
}

static int drop_privileges(const char *user)
{
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        fprintf(stderr, "kumod: --user %s: no such user\n", user);
        return -1;
    }
    if (getuid() != 0)
        return 0;
    chown_uid = pw->pw_uid;
    chown_gid = pw->pw_gid;
    if (services_foreach_dir(prepare_dir, NULL) != 0 || fs_created_foreach(give_created, NULL) != 0)
        return -1;
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        fprintf(stderr, "kumod: cannot switch to user %s: %s\n", user, strerror(errno));
        return -1;
    }
    return services_foreach_dir(check_dir_writable, (void *)user) == 0 ? 0 : -1;
}

static void print_version(void)
{
    /* first line as KumoMTA's: the name and the version kumo.version holds */
    printf("kumod %s\n", kumod_version());
    printf("  git %s\n", kumod_git_describe());
    printf("  %s\n", LUA_RELEASE);
    printf("  libevent %s\n", event_get_version());
    printf("  RocksDB %s\n", KUMOD_ROCKSDB_VERSION);
    printf("  %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("  c-ares %s\n", ares_version(NULL));
    printf("  jansson %s\n", jansson_version_str());
    printf("  zstd %s\n", ZSTD_versionString());
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- the TSA daemon (--tsa) -------------------------------------------------- */

/* tsa_init, the database, the listeners, then signals until asked to
 * stop. The reactors are running and every VM is loaded. */
static int tsa_run(bool validate, const char *user, char *err, size_t errlen)
{
    if (run_event_sync("tsa_init", err, errlen) != 0) {
        fprintf(stderr, "kumod: tsa_init failed: %s\n", err);
        return 1;
    }
    tsa_lua_freeze_db_path();
    if (validate) {
        printf("kumod: policy %s is valid\n", policy_path);
        return 0;
    }
    if (tsa_state_open(err, errlen) != 0) {
        fprintf(stderr, "kumod: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (http_start_listeners(err, errlen) != 0) {
        fprintf(stderr, "kumod: %s\n", err);
        rc = 1;
        goto out;
    }
    if (user && drop_privileges(user) != 0) {
        rc = 1;
        goto out;
    }
    DINFO(MAIN_MOD, "kumod TSA daemon started: policy=%s database=%s pid=%d", policy_path,
          tsa_state_db_path(), (int)getpid());
    main_base = event_base_new();
    struct event *sigs[2];
    int signums[2] = {SIGTERM, SIGINT};
    for (int i = 0; i < 2; i++) {
        sigs[i] = evsignal_new(main_base, signums[i], on_signal, NULL);
        event_add(sigs[i], NULL);
    }
    sd_notifyf(0, "READY=1\nSTATUS=TSA daemon\nMAINPID=%d", (int)getpid());
    event_base_loop(main_base, EVLOOP_NO_EXIT_ON_EMPTY);
    for (int i = 0; i < 2; i++)
        event_free(sigs[i]);
    event_base_free(main_base);
    main_base = NULL;
    DINFO(MAIN_MOD, "kumod TSA daemon stopping");
out:
    http_shutdown();
    tsa_state_close();
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"policy", required_argument, NULL, 'p'}, {"threads", required_argument, NULL, 't'},
        {"validate", no_argument, NULL, 'v'},     {"user", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},         {"script", required_argument, NULL, 's'},
        {"version", no_argument, NULL, 'V'},      {"tsa", no_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int threads = 0;
    bool validate = false;
    /* the TSA daemon: --tsa, or this binary run under the name kumo-tsa */
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    bool tsa_mode = strcmp(base, "kumo-tsa") == 0 || strcmp(base, "tsa-daemon") == 0;
    bool policy_given = false;
    const char *user = NULL;
    const char *env_threads = getenv("KUMOD_THREADS");
    if (env_threads)
        threads = atoi(env_threads);
    opterr = 0;
    int ch;
    /* "+": stop at the first non-option, so a script's own arguments stay its own */
    while ((ch = getopt_long(argc, argv, "+:p:t:u:s:vVh", opts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            policy_path = optarg;
            policy_given = true;
            break;
        case 'T':
            tsa_mode = true;
            break;
        case 't': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 1024) {
                fprintf(stderr, "kumod: --threads %s: expected a number from 1 to 1024\n",
                        optarg);
                return 2;
            }
            threads = (int)n;
            break;
        }
        case 'v':
            validate = true;
            break;
        case 'u':
            user = optarg;
            break;
        case 's':
            script_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            print_version();
            return 0;
        case ':':
            fprintf(stderr, "kumod: option %s needs a value\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        default:
            fprintf(stderr, "kumod: unknown option %s\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (script_path) {
        script_argv = argv + optind;
        script_argc = argc - optind;
        optind = argc;
        policy_path = script_path;
        validate = true;
    }
    if (optind < argc) {
        fprintf(stderr, "kumod: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (tsa_mode && !policy_given && !script_path)
        policy_path = "/opt/kumomta/etc/policy/tsa_init.lua";
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    const char *filter = getenv("KUMOD_LOG");
    if (filter && diag_set_filter(filter) != 0)
        fprintf(stderr, "kumod: ignoring invalid KUMOD_LOG filter '%s'\n", filter);
    if (access(policy_path, R_OK) != 0) {
        fprintf(stderr, "kumod: cannot read policy file %s: %s\n", policy_path, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* spool bodies and logs are private mail: files 0600, directories 0700 */
    umask(0077);
    raise_nofile();

    kumod_register_modules();
    /* the TSA daemon serves its own endpoints, not injection and queue
     * administration; kumo.shaping everywhere, require 'tsa' only there */
    if (tsa_mode)
        tsa_http_add_endpoints();
    tsa_lua_register(tsa_mode);
    tsa_lua_set_subscriptions_enabled(!validate);
    misc_set_spawn_enabled(!validate || script_path);
    klua_set_reload_hook(reload_all);
    services_set_validate_only(validate);

    if (reactor_pool_init(validate ? 1 : threads) != 0 || reactor_pool_start() != 0) {
        fprintf(stderr, "kumod: cannot start reactor threads\n");
        return 1;
    }
    char err[4096];
    int exit_code = 0;
    bool started = false;
    if (script_path) {
        if (run_script(err, sizeof(err)) != 0) {
            fprintf(stderr, "kumod: script %s failed: %s\n", script_path, err);
            exit_code = 1;
        }
        goto out_reactors;
    }
    if (load_all_vms(err, sizeof(err)) != 0) {
        fprintf(stderr, "kumod: failed to load policy: %s\n", err);
        exit_code = 1;
        goto out_reactors;
    }
    if (tsa_mode) {
        exit_code = tsa_run(validate, user, err, sizeof(err));
        goto out_tsa;
    }
    if (run_event_sync("pre_init", err, sizeof(err)) != 0 ||
        run_event_sync("init", err, sizeof(err)) != 0) {
        fprintf(stderr, "kumod: policy init failed: %s\n", err);
        exit_code = 1;
        goto out_reactors;
    }
    if (validate) {
        if (services_check_spools_defined(err, sizeof(err)) != 0) {
            fprintf(stderr, "kumod: %s\n", err);
            exit_code = 1;
        } else if (run_event_sync("validate_config", err, sizeof(err)) != 0) {
            fprintf(stderr, "kumod: validate_config failed: %s\n", err);
            exit_code = 1;
        } else if (misc_validation_failed()) {
            fprintf(stderr, "kumod: policy %s failed validation (kumo.validation_failed() was "
                            "called; see the messages above)\n",
                    policy_path);
            exit_code = 1;
        } else {
            printf("kumod: policy %s is valid\n", policy_path);
        }
        goto out_reactors;
    }

    if (smtpsrv_start_listeners(err, sizeof(err)) != 0) {
        fprintf(stderr, "kumod: %s\n", err);
        exit_code = 1;
        goto out_reactors;
    }
    if (http_start_listeners(err, sizeof(err)) != 0) {
        fprintf(stderr, "kumod: %s\n", err);
        exit_code = 1;
        goto out_listeners;
    }
    if (user && drop_privileges(user) != 0) {
        exit_code = 1;
        goto out_listeners;
    }
    if (services_open_spool(err, sizeof(err)) != 0) {
        fprintf(stderr, "kumod: %s\n", err);
        exit_code = 1;
        goto out_listeners;
    }
    if (recovery_start() != 0) {
        exit_code = 1;
        goto out_listeners;
    }
    started = true;
    DINFO(MAIN_MOD, "kumod started: policy=%s threads=%d pid=%d", policy_path, threads,
          (int)getpid());


    main_base = event_base_new();
    struct event *sigs[3];
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(main_base, signums[i], on_signal, NULL);
        event_add(sigs[i], NULL);
    }
    /* systemd Type=notify: the listeners accept and the spool is open (mail
     * is taken from now on; enumeration goes on in the background). Only
     * now: a supervisor's SIGTERM right after READY must find the handler. */
    sd_notifyf(0, "READY=1\nSTATUS=accepting mail\nMAINPID=%d", (int)getpid());
    event_base_loop(main_base, EVLOOP_NO_EXIT_ON_EMPTY);
    sd_notify(0, "STOPPING=1\nSTATUS=shutting down: finishing sessions, closing the spool");
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    ignore_further_stop_signals();
    event_base_free(main_base);

out_listeners:
    /* Orderly: stop accepting, let sessions finish their current reply, then
     * stop the reactors, drain the spool and flush the logs. */
    http_shutdown();
    smtpsrv_shutdown();
    for (int i = 0; i < reactor_count(); i++) {
        struct sync_job j;
        sync_job_init(&j);
        reactor_post(reactor_get(i), job_queue_shutdown, &j);
        sync_job_wait(&j);
    }
    /* the stopped dispatchers' shared connection leases: released in Redis
     * now rather than lapsing there after their TTL */
    shthrottle_drain(1000000000LL);
    /* Loads and saves still in the spool's threads post their completions
     * to the reactors: finish them while the reactors run. */
    services_spool_stop();
    /* shutdown_logging: the queues are idle and the loggers still open (a
     * policy closes its mpsc queues here so their consumers can finish) */
    if (run_event_sync("shutdown_logging", err, sizeof(err)) != 0)
        DERROR(MAIN_MOD, "shutdown_logging: %s", err);
out_tsa:
out_reactors:
    /* signatures under way finish and post back while the reactors run */
    dkim_lua_stop_pool();
    sqlite_lua_stop_pool();
    /* publishes under way fail and post back while the reactors run */
    amqp_lua_stop();
    nats_lua_stop();
    reactor_pool_stop();
    /* VMs hold references to their reactors' bases: free them before the pool. */
    for (int i = 0; i < reactor_count(); i++) {
        reactor *r = reactor_get(i);
        klua *vm = reactor_get_slot(r, REACTOR_SLOT_LUA);
        reactor_set_slot(r, REACTOR_SLOT_LUA, NULL);
        klua_drop_waits(vm);
        klua_unref(vm);
        dns_reactor_free(r);
        /* after the VM: the waits it parked are cancelled, so Redis
         * commands failed here resume nothing */
        redis_reactor_free(r);
    }
    shthrottle_configure(NULL);
    tsa_sub_shutdown();
    dns_shutdown();
    smtpsrv_free();
    dkim_lua_shutdown();
    nats_lua_shutdown();
    recovery_free();
    services_shutdown();
    logs_shutdown();
    aaalog_shutdown();
    acct_shutdown();
    loghook_shutdown();
    reactor_pool_free();
    if (started)
        DINFO(MAIN_MOD, "kumod stopped");
    diag_shutdown();
    return exit_code;
}
