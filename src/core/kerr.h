/* Error codes shared by every module. Functions return 0 on success or a
 * negative KERR_* value; kerr_str() gives the text an operator reads. */
#ifndef KUMOD_CORE_KERR_H
#define KUMOD_CORE_KERR_H

#define KERR_MAP(X)                                                                                \
    X(NOMEM, "out of memory")                                                                      \
    X(INVAL, "invalid argument")                                                                   \
    X(IO, "I/O error")                                                                             \
    X(NOTFOUND, "not found")                                                                       \
    X(EXISTS, "already exists")                                                                    \
    X(AGAIN, "try again")                                                                          \
    X(TIMEDOUT, "timed out")                                                                       \
    X(PARSE, "parse error")                                                                        \
    X(TOOBIG, "too large")                                                                         \
    X(RANGE, "value out of range")                                                                 \
    X(UNHEALTHY, "the spool is not accepting writes")                                              \
    X(CORRUPT, "corruption")                                                                       \
    X(SHUTDOWN, "shutting down")                                                                   \
    X(LUA, "lua error")                                                                            \
    X(REJECTED, "rejected by policy")                                                              \
    X(NOSPACE, "no space left on device")

enum kerr {
    KERR_OK = 0,
#define KERR_ENUM_(name, text) KERR_##name##_IDX_,
    KERR_FIRST_IDX_ = 0,
    KERR_MAP(KERR_ENUM_)
#undef KERR_ENUM_
};

/* The public codes are the negated indexes: KERR_NOMEM == -1, ... */
#define KERR_CODE_(name) (-(int)KERR_##name##_IDX_)
#define KERR_NOMEM KERR_CODE_(NOMEM)
#define KERR_INVAL KERR_CODE_(INVAL)
#define KERR_IO KERR_CODE_(IO)
#define KERR_NOTFOUND KERR_CODE_(NOTFOUND)
#define KERR_EXISTS KERR_CODE_(EXISTS)
#define KERR_AGAIN KERR_CODE_(AGAIN)
#define KERR_TIMEDOUT KERR_CODE_(TIMEDOUT)
#define KERR_PARSE KERR_CODE_(PARSE)
#define KERR_TOOBIG KERR_CODE_(TOOBIG)
#define KERR_RANGE KERR_CODE_(RANGE)
#define KERR_UNHEALTHY KERR_CODE_(UNHEALTHY)
#define KERR_CORRUPT KERR_CODE_(CORRUPT)
#define KERR_SHUTDOWN KERR_CODE_(SHUTDOWN)
#define KERR_LUA KERR_CODE_(LUA)
#define KERR_REJECTED KERR_CODE_(REJECTED)
#define KERR_NOSPACE KERR_CODE_(NOSPACE)

/* Returns a static string for err (0 gives "ok"; unknown codes "unknown error"). */
const char *kerr_str(int err);

#endif
