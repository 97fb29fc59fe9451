/* The policy engine: one Lua 5.4 VM per reactor, each running the whole
 * policy file, kumo.on() registrations, and event calls that each run in
 * their own coroutine so a handler may wait (kumo.time.sleep, spool loads,
 * DNS) without blocking its reactor. A VM is touched only by its reactor's
 * thread. Lua errors carry file:line and never crash the daemon. */
#ifndef KUMOD_LUA_KLUA_H
#define KUMOD_LUA_KLUA_H
#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "lua/luajson.h"

typedef struct klua klua;
typedef struct klua_call klua_call;

enum klua_status { KLUA_OK = 0, KLUA_ERROR = 1, KLUA_REJECT = 2 };

/* Functions that add to the `kumo` table (at -1 on L's stack) when a VM is
 * built. Higher layers register theirs before the first VM exists. */
typedef void (*klua_opener)(lua_State *L);
void klua_register_opener(klua_opener fn);

/* Builds a VM for reactor reactor_idx (-1 for a VM used off-reactor, such
 * as --validate) and runs the policy file. On failure returns NULL with a
 * message naming file and line in err. */
klua *klua_load(const char *policy_path, int reactor_idx, char *err, size_t errlen);
/* Script mode (kumod --script): a VM with the kumo module whose main chunk
 * is FILE, compiled but not yet run. *out is a call whose coroutine holds the
 * chunk: run it with klua_call_run(*out, 0, ...), so that the script may call
 * functions that yield (sleep, DNS, ...) at its top level. */
klua *klua_load_script(const char *script_path, int reactor_idx, klua_call **out, char *err,
                       size_t errlen);
void klua_ref(klua *vm);
void klua_unref(klua *vm);
lua_State *klua_state(klua *vm);
/* Shutdown: abandons the calls of vm that wait on a timer (their owners are
 * gone), so the VM can be closed. Reactor stopped or on its thread. */
void klua_drop_waits(klua *vm);

/* The VM installed on the calling reactor (NULL off-reactor). */
klua *klua_current(void);
/* Installs vm as the calling reactor's VM (takes a reference; drops the old one). */
void klua_install(klua *vm);

bool klua_has_handler(klua *vm, const char *event);
/* Pushes the dispatcher onto L: a Lua function (name, ...) that calls the
 * handlers of event name exactly as klua_call_begin's calls do (chained
 * events until one returns non-nil) and returns their result; nil without
 * a handler. For kumo.invoke_*: call it with lua_callk in the caller's own
 * coroutine, so that a handler may yield. */
void klua_push_dispatcher(lua_State *L);
/* True for the events whose handlers chain (pre_init, get_queue_config, ...). */
bool klua_event_is_multi(const char *event);

typedef void (*klua_done_fn)(klua_call *c, int status, void *ud);

/* Starts a call of event on vm: returns the coroutine onto which the caller
 * pushes the arguments, then calls klua_call_run. Works (and returns nil)
 * even when no handler is registered. */
lua_State *klua_call_begin(klua *vm, const char *event, klua_call **out);
/* Like klua_call_begin but for calling a Lua value (a method of an object
 * the policy returned): nothing is pushed; the caller pushes the function
 * and its arguments, and nargs passed to klua_call_run counts only the
 * arguments. label names the call in errors. */
lua_State *klua_call_begin_fn(klua *vm, const char *label, klua_call **out);
klua *klua_call_vm(klua_call *c);
/* Runs the call. done runs exactly once, possibly before this returns (when
 * no handler waits). Inside done: results are at 1..klua_call_nresults() on
 * klua_call_thread(); afterwards the call is freed. */
void klua_call_run(klua_call *c, int nargs, klua_done_fn done, void *ud);
/* The owner is going away: done will not be called. The coroutine finishes
 * on its own. */
void klua_call_cancel(klua_call *c);

lua_State *klua_call_thread(klua_call *c);
/* The call whose coroutine L is (or runs inside of), or NULL when L is not
 * running an event call (e.g. the main chunk of a policy being loaded). */
klua_call *klua_current_call(lua_State *L);
/* The call on coroutine co (not started yet) carries a sampled message:
 * its handlers are recorded in t as they are entered. No-op otherwise. */
struct msgtrace;
void klua_call_trace(lua_State *co, struct msgtrace *t);
/* "file:line" of the Lua function at stack level (1: the caller of the C
 * function running), or "" when that is not Lua code. */
void klua_where(lua_State *L, int level, char *buf, size_t len);
int klua_call_nresults(klua_call *c);
/* For KLUA_ERROR: the error text (with file:line). For KLUA_REJECT: the
 * rejection text; klua_call_reject_code() gives its code. */
const char *klua_call_error(klua_call *c);
int klua_call_reject_code(klua_call *c);
/* For a KLUA_REJECT raised by kumo.disconnect: what to do with the session
 * after the reply (KLUA_DISCONNECT_NONE for kumo.reject). */
enum klua_disconnect {
    KLUA_DISCONNECT_NONE = 0,
    KLUA_DISCONNECT_FORCE,      /* drop the session after the reply */
    KLUA_DISCONNECT_FOLLOW_421, /* a non-421 reply is followed by a 421, then drop */
    KLUA_DISCONNECT_IF_421,     /* drop only when the code is 421 (else as kumo.reject) */
};
int klua_call_reject_disconnect(klua_call *c);
const char *klua_call_event(klua_call *c);

/* Waiting from C functions called by a handler. The C function calls
 * klua_wait_begin(), arranges for klua_wait_resume() to be called on this
 * reactor later (pushing nres values onto the coroutine first), and returns
 * lua_yield(L, 0). Returns NULL (after pushing nothing) when L is not an
 * event coroutine; the caller then raises an error. */
klua_call *klua_wait_begin(lua_State *L);
void klua_wait_resume(klua_call *c, int nres);

/* A wait that shutdown may have to abandon (the VM is closed while calls are
 * parked, e.g. a task blocked in an MPSC queue's recv). The owner embeds a
 * klua_wait, parks it after klua_wait_begin, and unparks it before
 * klua_wait_resume. klua_drop_waits calls cancel(w) (which must release the
 * owner's state, timers included, and not resume) and then frees the call.
 * Reactor thread of the call only. */
typedef struct klua_wait klua_wait;
struct klua_wait {
    klua_wait *next, *prev;
    klua_call *call;
    void (*cancel)(klua_wait *w);
};
void klua_wait_park(klua_wait *w, klua_call *c, void (*cancel)(klua_wait *w));
void klua_wait_unpark(klua_wait *w);

/* Lua <-> JSON: klua_push_json and klua_to_json are in lua/luajson.h. */

/* Raises kumo.reject's structured error from C. */
int klua_raise_reject(lua_State *L, int code, const char *msg);
/* Tests whether the value at idx is a rejection; fills code and msg. */
bool klua_is_reject(lua_State *L, int idx, int *code, const char **msg);

/* Connection metadata userdata over a jansson object (shared: the userdata
 * holds a reference). */
void klua_push_connmeta(lua_State *L, json_t *obj);
json_t *klua_check_connmeta(lua_State *L, int idx);

/* Config epoch: incremented by kumo.bump_config_epoch() and SIGHUP; the
 * reload hook (set by main) rebuilds every reactor's VM. */
unsigned klua_config_epoch(void);
void klua_set_reload_hook(void (*fn)(void));
void klua_bump_epoch(void);

/* Whether the current load is running `init` (some kumo.* functions are
 * only allowed there). */
void klua_set_in_init(bool on);
bool klua_in_init(void);

#endif
