// TOML <-> jansson over toml++ (see toml_json.h). The one C++ translation
// unit of kumod: everything toml++ may throw (parse errors, bad_alloc) is
// caught here and turned into an error string, so no exception ever crosses
// into C. Pure functions; any thread.
#include "lua/lib/toml_json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <string_view>
#include <toml++/toml.h>
#include <algorithm>
#include <utility>
#include <vector>

namespace
{

void set_err(char *err, size_t errlen, const std::string &msg)
{
    if (errlen)
        std::snprintf(err, errlen, "%s", msg.c_str());
}

template <typename T> std::string stream_str(const T &v)
{
    std::ostringstream os;
    os << v;
    return os.str();
}

json_t *node_to_json(const toml::node &n, const std::string &path, std::string &why, bool ordered);

// ordered: keys in the order the document wrote them (toml++ iterates its
// tables sorted by key), for formats where the order means something.
json_t *table_to_json(const toml::table &t, const std::string &path, std::string &why,
                      bool ordered)
{
    json_t *o = json_object();
    if (!o)
        throw std::bad_alloc();
    std::vector<std::pair<const toml::key *, const toml::node *>> entries;
    for (auto &&[k, v] : t)
        entries.emplace_back(&k, &v);
    if (ordered)
        std::stable_sort(entries.begin(), entries.end(), [](const auto &a, const auto &b) {
            const auto &x = a.first->source().begin, &y = b.first->source().begin;
            return x.line != y.line ? x.line < y.line : x.column < y.column;
        });
    for (auto &&[kp, vp] : entries) {
        const toml::key &k = *kp;
        const toml::node &v = *vp;
        std::string key(k.str());
        json_t *jv = node_to_json(v, path.empty() ? key : path + "." + key, why, ordered);
        if (!jv || json_object_setn_new_nocheck(o, key.data(), key.size(), jv) != 0) {
            json_decref(o);
            return nullptr;
        }
    }
    return o;
}

json_t *node_to_json(const toml::node &n, const std::string &path, std::string &why, bool ordered)
{
    switch (n.type()) {
    case toml::node_type::table:
        return table_to_json(*n.as_table(), path, why, ordered);
    case toml::node_type::array: {
        json_t *a = json_array();
        if (!a)
            throw std::bad_alloc();
        size_t i = 0;
        for (auto &&e : *n.as_array()) {
            json_t *jv = node_to_json(e, path + "[" + std::to_string(i++) + "]", why, ordered);
            if (!jv || json_array_append_new(a, jv) != 0) {
                json_decref(a);
                return nullptr;
            }
        }
        return a;
    }
    case toml::node_type::string: {
        const std::string &s = n.as_string()->get();
        return json_stringn_nocheck(s.data(), s.size());
    }
    case toml::node_type::integer:
        return json_integer(n.as_integer()->get());
    case toml::node_type::floating_point: {
        double d = n.as_floating_point()->get();
        if (!std::isfinite(d)) {
            why = "the float at " + path + " (" + stream_str(d) +
                  ") has no JSON/Lua-table representation";
            return nullptr;
        }
        return json_real(d);
    }
    case toml::node_type::boolean:
        return json_boolean(n.as_boolean()->get());
    case toml::node_type::date: {
        std::string s = stream_str(n.as_date()->get());
        return json_stringn(s.data(), s.size());
    }
    case toml::node_type::time: {
        std::string s = stream_str(n.as_time()->get());
        return json_stringn(s.data(), s.size());
    }
    case toml::node_type::date_time: {
        std::string s = stream_str(n.as_date_time()->get());
        return json_stringn(s.data(), s.size());
    }
    case toml::node_type::none:
        break;
    }
    why = "unsupported TOML value at " + path;
    return nullptr;
}

// JSON -> toml++ nodes.
bool json_to_node(const json_t *j, toml::array *arr, toml::table *tbl, const std::string &key,
                  int depth, std::string &why);

bool fill_table(const json_t *o, toml::table &t, int depth, std::string &why)
{
    const char *k;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(const_cast<json_t *>(o), k, klen, v)
    {
        if (json_is_null(v))
            continue; // a Lua nil member: absent
        if (!json_to_node(v, nullptr, &t, std::string(k, klen), depth + 1, why))
            return false;
    }
    return true;
}

template <typename V> void put(toml::array *arr, toml::table *tbl, const std::string &key, V &&v)
{
    if (arr)
        arr->push_back(std::forward<V>(v));
    else
        tbl->insert_or_assign(key, std::forward<V>(v));
}

bool json_to_node(const json_t *j, toml::array *arr, toml::table *tbl, const std::string &key,
                  int depth, std::string &why)
{
    if (depth > 128) {
        why = "value nested too deeply for TOML";
        return false;
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        toml::table t;
        if (!fill_table(j, t, depth, why))
            return false;
        put(arr, tbl, key, std::move(t));
        return true;
    }
    case JSON_ARRAY: {
        toml::array a;
        size_t i;
        json_t *v;
        json_array_foreach(const_cast<json_t *>(j), i, v)
        {
            if (!json_to_node(v, &a, nullptr, key, depth + 1, why))
                return false;
        }
        put(arr, tbl, key, std::move(a));
        return true;
    }
    case JSON_STRING:
        put(arr, tbl, key, std::string(json_string_value(j), json_string_length(j)));
        return true;
    case JSON_INTEGER:
        put(arr, tbl, key, (int64_t)json_integer_value(j));
        return true;
    case JSON_REAL:
        put(arr, tbl, key, json_real_value(j));
        return true;
    case JSON_TRUE:
    case JSON_FALSE:
        put(arr, tbl, key, json_is_true(j) ? true : false);
        return true;
    case JSON_NULL:
        why = "an array holds nil, which TOML cannot represent";
        return false;
    }
    why = "unsupported value";
    return false;
}

// TOML_JSON_COMPACT: empty sub-tables become inline tables (key = {}).
void inline_empty_tables(toml::table &t)
{
    for (auto &&[k, v] : t) {
        if (toml::table *sub = v.as_table()) {
            if (sub->empty())
                sub->is_inline(true);
            else
                inline_empty_tables(*sub);
        } else if (toml::array *a = v.as_array()) {
            for (auto &&e : *a)
                if (toml::table *st = e.as_table())
                    inline_empty_tables(*st);
        }
    }
}

} // namespace

static json_t *parse(const char *text, size_t len, const char *source, char *err, size_t errlen,
                     bool ordered)
{
    try {
        toml::table t = toml::parse(std::string_view(text, len),
                                    source ? std::string_view(source) : std::string_view());
        std::string why;
        json_t *j = table_to_json(t, "", why, ordered);
        if (!j)
            set_err(err, errlen, why);
        return j;
    } catch (const toml::parse_error &e) {
        const auto &b = e.source().begin;
        set_err(err, errlen,
                "line " + std::to_string(b.line) + ", column " + std::to_string(b.column) + ": " +
                    std::string(e.description()));
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
    }
    return nullptr;
}

extern "C" json_t *toml_json_parse(const char *text, size_t len, const char *source, char *err,
                                   size_t errlen)
{
    return parse(text, len, source, err, errlen, false);
}

extern "C" json_t *toml_json_parse_ordered(const char *text, size_t len, const char *source,
                                           char *err, size_t errlen)
{
    return parse(text, len, source, err, errlen, true);
}

extern "C" char *toml_json_encode(const json_t *v, enum toml_json_style style, char *err,
                                  size_t errlen)
{
    if (!v || !json_is_object(v)) {
        set_err(err, errlen, "a TOML document must be a table");
        return nullptr;
    }
    try {
        toml::table t;
        std::string why;
        if (!fill_table(v, t, 0, why)) {
            set_err(err, errlen, why);
            return nullptr;
        }
        toml::format_flags flags = toml::format_flags::allow_unicode_strings;
        if (style != TOML_JSON_PLAIN)
            flags = flags | toml::format_flags::allow_multi_line_strings |
                    toml::format_flags::allow_real_tabs_in_strings |
                    toml::format_flags::indent_array_elements;
        if (style == TOML_JSON_COMPACT)
            inline_empty_tables(t);
        std::ostringstream os;
        os << toml::toml_formatter(t, flags);
        std::string s = os.str();
        if (!s.empty() && s.back() != '\n')
            s.push_back('\n');
        char *out = static_cast<char *>(std::malloc(s.size() + 1));
        if (!out) {
            set_err(err, errlen, "out of memory");
            return nullptr;
        }
        std::memcpy(out, s.data(), s.size() + 1);
        return out;
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
    }
    return nullptr;
}
