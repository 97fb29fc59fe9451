/* Text for the KERR_* codes; pure, any thread. */
#include "core/kerr.h"

static const char *const kerr_texts[] = {
    "ok",
#define KERR_TEXT_(name, text) text,
    KERR_MAP(KERR_TEXT_)
#undef KERR_TEXT_
};

const char *kerr_str(int err)
{
    int idx = -err;
    if (idx < 0 || idx >= (int)(sizeof(kerr_texts) / sizeof(kerr_texts[0])))
        return "unknown error";
    return kerr_texts[idx];
}
