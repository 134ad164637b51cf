/* trackmw._speedups: the ASGI middleware's common case, in C.
 *
 * A tracked page whose Cookie header's state is cached (every returning visitor's
 * page, and a new visitor's) costs trackmw a pass over the request's headers, one
 * dict lookup, a per-request object and the middleware's call. In Python that is
 * about 1.5 us on a 2-core VM, a coroutine frame included; here (Entry, the
 * middleware's __call__, and Call, which awaits the app in place of that frame) it
 * is a fraction of that (see the README's Performance section). A returning
 * visitor's beacon is counted here too, from the caches the Python path
 * (Core.quick_beacon) fills.
 *
 * Optional: trackmw.asgi runs the same logic in Python when this module cannot be
 * imported (no C compiler at install, another Python implementation, or the
 * TRACKMW_NO_EXTENSIONS environment variable set). Nothing here decides anything the
 * Python path does not: a request it does not recognise as the common case goes to
 * the Python path, which takes it from the start.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

static PyObject *str_type, *str_http, *str_path, *str_headers, *str_trackmw;
static PyObject *str_send_full, *str_visitor, *str_send;

/* -- the clock ----------------------------------------------------------------------- */

static PyObject *time_time; /* time.time, which clock_now reads without calling it */

/* The time `clock` (trackmw.asgi's _time) gives: time.time's own clock read here, as
 * time.time reads it (CLOCK_REALTIME, to the nanosecond, as a double), when it is
 * time.time; any other clock (a test's) called. -1.0 with an error set on error. */
static double
clock_now(PyObject *clock)
{
#ifdef CLOCK_REALTIME
    struct timespec ts;
    if (clock == time_time && clock_gettime(CLOCK_REALTIME, &ts) == 0)
        return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
#endif
    PyObject *time = PyObject_CallNoArgs(clock);
    double now = time == NULL ? -1.0 : PyFloat_AsDouble(time);
    Py_XDECREF(time);
    return now;
}

/* -- the cookie state of a tracked page ------------------------------------------ */

/* Is the request a tracked page's common case? Its Cookie header (or None) in
 * *cookie, borrowed from the scope, and 1 if so; 0 if not; -1 on error.
 *
 * The common case is: an "http" scope whose path starts with none of `prefixes`
 * (trackmw's own and the excluded paths), whose headers are a list of (bytes,
 * bytes) tuples with at most one "cookie" and no "dnt" or "sec-gpc". */
static int
common_case(PyObject *scope, PyObject *prefixes, PyObject **cookie)
{
    if (!PyDict_CheckExact(scope) || !PyTuple_CheckExact(prefixes))
        return 0;
    PyObject *type = PyDict_GetItemWithError(scope, str_type);
    if (type == NULL)
        goto missing;
    if (type != str_http) { /* servers use the interned literal; compare if not */
        if (!PyUnicode_CheckExact(type))
            return 0;
        int eq = PyUnicode_Compare(type, str_http);
        if (eq == -1 && PyErr_Occurred())
            return -1;
        if (eq != 0)
            return 0;
    }
    PyObject *path = PyDict_GetItemWithError(scope, str_path);
    if (path == NULL)
        goto missing;
    if (!PyUnicode_CheckExact(path))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
        if (!PyUnicode_CheckExact(prefix))
            return 0;
        Py_ssize_t match = PyUnicode_Tailmatch(path, prefix, 0, PY_SSIZE_T_MAX, -1);
        if (match == -1)
            return -1;
        if (match)
            return 0;
    }
    PyObject *headers = PyDict_GetItemWithError(scope, str_headers);
    if (headers == NULL)
        goto missing;
    if (!PyList_CheckExact(headers))
        return 0;
    *cookie = Py_None;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            return 0;
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        if (!PyBytes_CheckExact(name))
            return 0;
        Py_ssize_t size = PyBytes_GET_SIZE(name);
        const char *text = PyBytes_AS_STRING(name);
        if (size == 6 && memcmp(text, "cookie", 6) == 0) {
            PyObject *value = PyTuple_GET_ITEM(item, 1);
            if (*cookie != Py_None || !PyBytes_CheckExact(value))
                return 0; /* repeated headers are joined by the Python path */
            *cookie = value;
        }
        else if ((size == 3 && memcmp(text, "dnt", 3) == 0) ||
                 (size == 7 && memcmp(text, "sec-gpc", 7) == 0))
            return 0; /* a signal: its state is keyed with the signals */
    }
    return 1;
missing:
    return PyErr_Occurred() ? -1 : 0;
}

/* trackmw.cookiestate._CACHED_HEADER: a longer header's state is not cached. */
#define CACHED_HEADER 4096

/* Is `text[0:size]` one of the cookie names a state rests on
 * (trackmw.cookiestate._STATE_NAMES)? */
static int
state_name(const char *text, Py_ssize_t size)
{
    return (size == 10 && memcmp(text, "trackmw_id", 10) == 0) ||
           (size == 15 && memcmp(text, "trackmw_consent", 15) == 0) ||
           (size == 13 && memcmp(text, "trackmw_prefs", 13) == 0);
}

/* Narrow [*start, *end) past the spaces and tabs at either end (str.strip(" \t")). */
static void
trim_blanks(const char **start, const char **end)
{
    while (*start < *end && (**start == ' ' || **start == '\t'))
        (*start)++;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t'))
        (*end)--;
}

/* trackmw.cookiestate.state_key of a Cookie header of bytes (a new reference): its
 * trackmw_id, trackmw_consent and trackmw_prefs pairs, in order, each as name=value
 * with the spaces and tabs around both taken off, joined by "; "; the header itself
 * when that is all it is. None for None. NULL with no error set for a header longer
 * than CACHED_HEADER (its state is not cached) or not bytes; NULL with an error set on
 * failure. */
static PyObject *
cookie_state_key(PyObject *cookie)
{
    if (cookie == Py_None)
        return Py_NewRef(cookie);
    if (!PyBytes_CheckExact(cookie) || PyBytes_GET_SIZE(cookie) > CACHED_HEADER)
        return NULL;
    const char *text = PyBytes_AS_STRING(cookie), *end = text + PyBytes_GET_SIZE(cookie);
    /* A pair never grows, and a separator by one byte at most: a part of n bytes
     * written as a pair ends up at most n + 1 bytes long ("; " for ";"). */
    char key[2 * CACHED_HEADER + 2];
    Py_ssize_t size = 0;
    for (const char *part = text;;) {
        const char *semi = memchr(part, ';', (size_t)(end - part));
        if (semi == NULL)
            semi = end;
        const char *eq = memchr(part, '=', (size_t)(semi - part));
        if (eq != NULL) {
            const char *name = part, *name_end = eq, *value = eq + 1, *value_end = semi;
            trim_blanks(&name, &name_end);
            if (state_name(name, name_end - name)) {
                trim_blanks(&value, &value_end);
                if (size > 0) {
                    key[size++] = ';';
                    key[size++] = ' ';
                }
                memcpy(key + size, name, (size_t)(name_end - name));
                size += name_end - name;
                key[size++] = '=';
                memcpy(key + size, value, (size_t)(value_end - value));
                size += value_end - value;
            }
        }
        if (semi == end)
            break;
        part = semi + 1;
    }
    if (size == PyBytes_GET_SIZE(cookie) && memcmp(key, text, (size_t)size) == 0)
        return Py_NewRef(cookie);
    return PyBytes_FromStringAndSize(key, size);
}

PyDoc_STRVAR(state_key_doc,
"state_key(cookie, /)\n--\n\n"
"trackmw.cookiestate.state_key of a Cookie header of bytes (or None), as the C\n"
"paths compute it; None for a header they leave to Python (one longer than\n"
"trackmw.cookiestate._CACHED_HEADER, or not bytes).");

static PyObject *
state_key(PyObject *module, PyObject *cookie)
{
    PyObject *key = cookie_state_key(cookie);
    if (key == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return key;
}

/* Look `key` up in `states` (CookieReader.states): 1 with a new reference to its state
 * in *state if its window holds the time; 0 if there is no entry or its window does not
 * hold the time; 2 if the entry is not one CookieReader makes (Python decides); -1 on
 * error. The time is *now, or when *clock is not NULL what it returns: called once, and
 * only if there is an entry to check (*clock is then set to NULL). */
static int
window_state(PyObject *states, PyObject *key, double *now, PyObject **clock, PyObject **state)
{
    PyObject *cached = PyDict_GetItemWithError(states, key); /* (not_before, not_after, state) */
    if (cached == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(cached) || PyTuple_GET_SIZE(cached) != 3 ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 0)) ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 1)))
        return 2;
    Py_INCREF(cached); /* held: the clock may run any code */
    int found = 0;
    if (*clock != NULL) {
        *now = clock_now(*clock);
        *clock = NULL;
        if (*now == -1.0 && PyErr_Occurred())
            found = -1;
    }
    if (found == 0 && PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 0)) <= *now &&
        *now <= PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 1))) {
        *state = Py_NewRef(PyTuple_GET_ITEM(cached, 2));
        found = 1;
    }
    Py_DECREF(cached);
    return found;
}

/* The state `states` (CookieReader.states) caches for the Cookie header `cookie`, if
 * its window holds the time: a new reference; None (a new reference) if there is none;
 * NULL on error. Looked up as CookieReader.state looks it up for a request without
 * signals: by the header (a repeated one, or one that is its own key), then by its
 * state_key. The time is `now`, or when `clock` is not NULL what it returns (called
 * once, and only if there is an entry to check). */
static PyObject *
cached_entry(PyObject *states, PyObject *cookie, double now, PyObject *clock)
{
    if (!PyDict_CheckExact(states) ||
        (cookie != Py_None &&
         (!PyBytes_CheckExact(cookie) || PyBytes_GET_SIZE(cookie) > CACHED_HEADER)))
        Py_RETURN_NONE; /* never cached */
    PyObject *state = NULL;
    Py_INCREF(cookie); /* held: a key's __eq__ or the clock may run any code */
    int found = window_state(states, cookie, &now, &clock, &state);
    if (found == 0) { /* then by the header's trackmw cookies */
        PyObject *own = cookie_state_key(cookie); /* (not too long: checked above) */
        if (own == NULL)
            found = -1;
        else {
            if (own != cookie) /* else the header is its own key: looked up already */
                found = window_state(states, own, &now, &clock, &state);
            Py_DECREF(own);
        }
    }
    Py_DECREF(cookie);
    if (found < 0)
        return NULL;
    return found == 1 ? state : Py_NewRef(Py_None);
}

/* The cached CookieState of a tracked page's common case (see common_case and
 * cached_entry), a new reference; None (a new reference) for any other request;
 * NULL on error. */
static PyObject *
lookup_state(PyObject *scope, PyObject *prefixes, PyObject *states, double now, PyObject *clock)
{
    PyObject *cookie;
    int found = common_case(scope, prefixes, &cookie);
    if (found < 0)
        return NULL;
    if (found == 0)
        Py_RETURN_NONE;
    return cached_entry(states, cookie, now, clock);
}

/* 0 if a function `name` was given its `expected` count of positional arguments, else
 * -1 with the TypeError set. */
static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
    return -1;
}

/* Check the count of positional arguments and read `now`, the fourth. */
/* Is `obj` a tuple type laid out as tuple is (a namedtuple's class, say), so that
 * PyTuple_GET_ITEM reads its instances? */
static int
tuple_type(PyObject *obj)
{
    PyTypeObject *type = (PyTypeObject *)obj;
    return PyType_Check(obj) && PyType_IsSubtype(type, &PyTuple_Type) &&
           type->tp_basicsize == PyTuple_Type.tp_basicsize &&
           type->tp_itemsize == PyTuple_Type.tp_itemsize;
}

static int
unpack_lookup_args(const char *name, Py_ssize_t nargs, Py_ssize_t expected,
                   PyObject *const *args, double *now)
{
    if (check_nargs(name, nargs, expected) < 0)
        return -1;
    *now = PyFloat_AsDouble(args[3]);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(cached_state_doc,
"cached_state(scope, prefixes, states, now, /)\n--\n\n"
"The cached cookie state of a request to a tracked page, or None when the\n"
"request is not that common case (see LazyBase.enter).");

static PyObject *
cached_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    double now;
    if (unpack_lookup_args("cached_state", nargs, 4, args, &now) < 0)
        return NULL;
    return lookup_state(args[0], args[1], args[2], now, NULL);
}

/* -- the beacon's headers ----------------------------------------------------------- */

static int
is_name(const char *text, Py_ssize_t size, const char *name)
{
    return size == (Py_ssize_t)strlen(name) && memcmp(text, name, (size_t)size) == 0;
}

/* Scan a beacon's raw ASGI headers for its common case: at most one Cookie (else
 * *cookie is None), a User-Agent and a Host (the first of each), and no DNT,
 * Sec-GPC or prefetch header. 1 if it is that case, with the three values borrowed
 * from the list; 0 if not. Never fails. */
static int
scan_beacon(PyObject *headers, PyObject **cookie, PyObject **agent, PyObject **host)
{
    if (!PyList_CheckExact(headers))
        return 0;
    *cookie = Py_None;
    *agent = *host = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            return 0;
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value))
            return 0;
        Py_ssize_t size = PyBytes_GET_SIZE(name);
        const char *text = PyBytes_AS_STRING(name);
        if (is_name(text, size, "cookie")) {
            if (*cookie != Py_None)
                return 0; /* repeated headers are joined by the Python pass */
            *cookie = value;
        }
        else if (is_name(text, size, "user-agent")) {
            if (*agent == NULL)
                *agent = value;
        }
        else if (is_name(text, size, "host")) {
            if (*host == NULL)
                *host = value;
        }
        else if (is_name(text, size, "dnt") || is_name(text, size, "sec-gpc") ||
                 is_name(text, size, "sec-purpose") || is_name(text, size, "purpose") ||
                 is_name(text, size, "x-moz"))
            return 0; /* a signal or a prefetch: not the common case */
    }
    return *agent != NULL && *host != NULL;
}

PyDoc_STRVAR(beacon_headers_doc,
"beacon_headers(headers, /)\n--\n\n"
"(cookie, user_agent, host) of a beacon request's common case, from its raw ASGI\n"
"headers: at most one Cookie (else None in its place), a User-Agent and a Host\n"
"(the first of each), and no DNT, Sec-GPC or prefetch header. None for anything\n"
"else, which the Python pass (trackmw.asgi.beacon_headers) decides. The pass the\n"
"beacon's C count makes, on its own for the tests.");

static PyObject *
beacon_headers(PyObject *module, PyObject *headers)
{
    PyObject *cookie, *agent, *host;
    if (!scan_beacon(headers, &cookie, &agent, &host))
        Py_RETURN_NONE;
    /* Held before allocating: a collection it triggers could run a finalizer that
     * changes the list, whose items these three only borrow. */
    Py_INCREF(cookie);
    Py_INCREF(agent);
    Py_INCREF(host);
    PyObject *found = PyTuple_New(3);
    if (found == NULL) {
        Py_DECREF(cookie);
        Py_DECREF(agent);
        Py_DECREF(host);
        return NULL;
    }
    PyTuple_SET_ITEM(found, 0, cookie);
    PyTuple_SET_ITEM(found, 1, agent);
    PyTuple_SET_ITEM(found, 2, host);
    return found;
}

/* -- the beacon's common case --------------------------------------------------------- */

static PyObject *str_method, *str_GET, *str_query_string, *bytes_empty;
static PyObject *str_p, *str_r, *str_c, *str_allow, *str_add;
static PyObject *str_settings, *str_pixel_rate_limit_status, *int_200, *int_1;
static PyTypeObject *deque_type;
static PyObject *deque_append; /* deque.append, the method descriptor */
static PyTypeObject *limiter_type, *pipeline_type; /* RateLimiter and Pipeline */
static PyTypeObject *state_type;                   /* CookieState */
static PyObject *limiter_allow, *pipeline_add;     /* and their allow and add */

/* `key`'s value in the exact dict `d`, borrowed; NULL if absent or on error. */
#define LOOKUP(d, key) PyDict_GetItemWithError((d), (key))

PyDoc_STRVAR(beacon_doc,
"beacon(scope, caches, core, now, /)\n--\n\n"
"Core.quick_beacon for an ASGI scope: the hit counted and the status to answer\n"
"with, or None when the request is not the common case this decides from the\n"
"caches alone (then nothing is done, and the Python path decides).\n\n"
"caches: Core.beacon_caches, (states, queries, agents, hosts, hit type, rate\n"
"limiter, pipeline), whose limiter's allow and pipeline's add are called as\n"
"quick_beacon calls them (their common case mirrored in C); core: the Core (its\n"
"settings, for a beacon over the rate limit); now: the time (a float, the hit's\n"
"timestamp). Entry counts a beacon with the same code; this function, like\n"
"cached_state, LazyBase.enter, allow and add, is the piece the tests hold to the\n"
"Python path.");

/* Does `type` resolve `name` to `func`: is `func` what the first class of its MRO that
 * defines `name` holds (neither replaced on the class nor overridden)? 1 if so, 0 if
 * not, -1 on error. Once found so, the answer is kept with the type's version tag
 * (*tag), which CPython invalidates whenever an attribute of the class (or of a base)
 * is set or deleted, and never hands out again: until then, nothing is looked up.
 * (CPython 3.11 and 3.12 mark a valid tag with Py_TPFLAGS_VALID_VERSION_TAG; from 3.13
 * the flag is never set, and the lookup is made every time.) */
static int
resolves_to(PyTypeObject *type, PyObject *name, PyObject *func, unsigned int *tag)
{
    if (*tag != 0 && (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) &&
        type->tp_version_tag == *tag)
        return 1;
    *tag = 0;
    PyObject *mro = type->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *found = dict == NULL ? NULL : PyDict_GetItemWithError(dict, name);
        if (found != NULL) {
            if (found != func)
                return 0;
            *tag = (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) ? type->tp_version_tag : 0;
            return 1;
        }
        if (PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* Is `obj` exactly of `type`, with its method `name` the class's own `func`: not
 * replaced on the class (see resolves_to, *tag), not shadowed on the instance? 1 if so,
 * 0 if not, -1 on error. */
static int
plain_method(PyObject *obj, PyTypeObject *type, PyObject *name, PyObject *func,
             unsigned int *tag)
{
    if (Py_TYPE(obj) != type)
        return 0;
    int own = resolves_to(type, name, func, tag);
    if (own <= 0)
        return own;
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL)
        return -1;
    int plain = 0;
    if (PyDict_CheckExact(dict)) {
        plain = PyDict_GetItemWithError(dict, name) == NULL;
        if (plain && PyErr_Occurred())
            plain = -1;
    }
    Py_DECREF(dict);
    return plain;
}

/* A value that must be an int (NULL: missing): it in *out, 1; 0 if it is missing,
 * another type or too large for a C long (the Python code decides). Never fails. */
static int
int_value(PyObject *value, long *out)
{
    if (value == NULL || !PyLong_CheckExact(value))
        return 0;
    *out = PyLong_AsLong(value);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The offsets of the slots of RateLimiter, of Pipeline's base _Lane and of
 * CookieState, which quick_allow, quick_add and count_beacon read in place of their
 * attributes; each class's flag says whether all of its own were found as plain object
 * slots (if not, every call goes to Python). */
static Py_ssize_t off_limit, off_max_keys, off_since, off_until, off_counts;
static Py_ssize_t off_buffer, off_thread, off_buffer_size, off_batch_size;
static Py_ssize_t off_beacon_id, off_user_id, off_quiet, off_fresh;
static int limiter_slots, pipeline_slots, state_slots;

/* The offset of each slot `names[i]` of `type` (or of a base) in *offsets[i]: 1 if
 * every one is a plain object slot, 0 if not; -1 on error. */
static int
slot_offsets(PyTypeObject *type, int n, const char *const names[], Py_ssize_t *const offsets[])
{
    int all = 1;
    for (int i = 0; i < n; i++) {
        *offsets[i] = 0;
        PyObject *descr = PyObject_GetAttrString((PyObject *)type, names[i]);
        if (descr == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            all = 0;
            continue;
        }
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
            PyType_IsSubtype(type, ((PyMemberDescrObject *)descr)->d_common.d_type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
                *offsets[i] = member->offset;
        }
        Py_DECREF(descr);
        all = all && *offsets[i] != 0;
    }
    return all;
}

/* The object in a slot at `offset` of `obj` (borrowed), NULL if it is unset. */
#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* RateLimiter.allow(key, now) for its common case: a key counted within the current
 * minute, or a new key while the table has room. 1 (allowed) or 0 (over the limit),
 * with the count made as allow makes it; -2 if not that case (nothing done: call
 * allow); -1 on error. Mirrors ratelimit.py line by line, reading the limiter's slots
 * in place (RateLimiter has __slots__, so no instance can override allow). */
static int
quick_allow(PyObject *limiter, PyObject *key, double now)
{
    if (Py_TYPE(limiter) != limiter_type || !limiter_slots)
        return -2; /* another class, or RateLimiter's slots are not what they were */
    static unsigned int tag;
    int own = resolves_to(limiter_type, str_allow, limiter_allow, &tag);
    if (own <= 0) /* allow patched on the class */
        return own < 0 ? -1 : -2;
    long limit, max_keys, n = 0;
    if (!int_value(SLOT(limiter, off_limit), &limit))
        return -2;
    if (limit <= 0)
        return 1;
    PyObject *since = SLOT(limiter, off_since), *until = SLOT(limiter, off_until);
    if (since == NULL || until == NULL || !PyFloat_CheckExact(since) ||
        !PyFloat_CheckExact(until) ||
        !(PyFloat_AS_DOUBLE(since) <= now && now < PyFloat_AS_DOUBLE(until)))
        return -2; /* a new minute (or the clock went back): allow starts it */
    PyObject *counts = SLOT(limiter, off_counts);
    if (counts == NULL || !PyDict_CheckExact(counts))
        return -2;
    int result = -2;
    Py_INCREF(counts); /* held: allocating below may run a finalizer that replaces it */
    PyObject *found = PyDict_GetItemWithError(counts, key); /* counts.get(key, 0) */
    if (found == NULL && PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    if (found != NULL) {
        if (!PyLong_CheckExact(found))
            goto done;
        n = PyLong_AsLong(found);
        if ((n == -1 && PyErr_Occurred()) || n == LONG_MAX) {
            PyErr_Clear();
            goto done;
        }
    }
    if (n == 0) {
        if (!int_value(SLOT(limiter, off_max_keys), &max_keys))
            goto done;
        if (PyDict_GET_SIZE(counts) >= max_keys) { /* full: unseen keys are not limited */
            result = 1;
            goto done;
        }
    }
    PyObject *count = PyLong_FromLong(n + 1);
    if (count == NULL || PyDict_SetItem(counts, key, count) < 0) {
        Py_XDECREF(count);
        result = -1;
        goto done;
    }
    Py_DECREF(count);
    result = n < limit;
done:
    Py_DECREF(counts);
    return result;
}

/* Pipeline.add(item) for its common case: the writer is started and the item neither
 * fills a batch (whose writer must be woken) nor overflows the buffer. 0 when added;
 * -2 if not that case (nothing done: call add); -1 on error. Mirrors pipeline.py,
 * reading the attributes add reads from their slots (Pipeline's base, _Lane). */
static int
quick_add(PyObject *pipeline, PyObject *item)
{
    if (!pipeline_slots) /* _Lane's slots are not what they were */
        return -2;
    static unsigned int tag;
    int plain = plain_method(pipeline, pipeline_type, str_add, pipeline_add, &tag);
    if (plain <= 0) /* another class, or add overridden or patched */
        return plain < 0 ? -1 : -2;
    long buffer_size, batch_size;
    PyObject *thread = SLOT(pipeline, off_thread);
    if (thread == NULL || thread == Py_None) /* not started: add starts it */
        return -2;
    if (!int_value(SLOT(pipeline, off_buffer_size), &buffer_size) ||
        !int_value(SLOT(pipeline, off_batch_size), &batch_size))
        return -2;
    PyObject *buffer = SLOT(pipeline, off_buffer);
    if (buffer == NULL || Py_TYPE(buffer) != deque_type || batch_size <= 0)
        return -2;
    int result = -2;
    Py_INCREF(buffer);
    Py_ssize_t n = PyObject_Size(buffer);
    if (n < 0)
        result = -1;
    else if (n + 1 <= buffer_size && (n + 1) % batch_size != 0) {
        PyObject *args[2] = {buffer, item};
        PyObject *appended = PyObject_Vectorcall(deque_append, args, 2, NULL);
        result = appended == NULL ? -1 : 0;
        Py_XDECREF(appended);
    }
    Py_DECREF(buffer);
    return result;
}

PyDoc_STRVAR(allow_doc,
"allow(limiter, key, now, /)\n--\n\n"
"limiter.allow(key, now), its common case in C (as the beacon's count makes it).");

static PyObject *
allow_hook(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("allow", nargs, 3) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    int ok = quick_allow(args[0], args[1], now);
    if (ok == -2)
        return PyObject_CallMethodObjArgs(args[0], str_allow, args[1], args[2], NULL);
    return ok < 0 ? NULL : PyBool_FromLong(ok);
}

PyDoc_STRVAR(add_doc,
"add(pipeline, item, /)\n--\n\n"
"pipeline.add(item), its common case in C (as the beacon's count makes it).");

static PyObject *
add_hook(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("add", nargs, 2) < 0)
        return NULL;
    int added = quick_add(args[0], args[1]);
    if (added == -2)
        return PyObject_CallMethodOneArg(args[0], str_add, args[1]);
    if (added < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Stop the collector following `tuple` (a tuple subclass's instance: a Hit or a
 * PageView) if every item is a str, a float, an int, a bool or None: it can then be in
 * no reference cycle. The collector untracks such tuples itself, but only exact ones:
 * a hit waiting in the buffer would stay tracked, be carried into the oldest
 * generation, and bring about the full collections that walk the whole heap. */
static void
untrack_if_atomic(PyObject *tuple)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyUnicode_CheckExact(item) && !PyFloat_CheckExact(item) && item != Py_None &&
            !PyBool_Check(item) && !PyLong_CheckExact(item))
            return;
    }
    PyObject_GC_UnTrack(tuple);
}

static PyObject *count_beacon(PyObject *scope, PyObject *caches, PyObject *core,
                              PyObject *now_obj);

static PyObject *
beacon(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("beacon", nargs, 4) < 0)
        return NULL;
    return count_beacon(args[0], args[1], args[2], args[3]);
}

/* beacon(): the status (a new reference), None (not the common case), or NULL. */
static PyObject *
count_beacon(PyObject *scope, PyObject *caches, PyObject *core, PyObject *now_obj)
{
    if (!PyDict_CheckExact(scope) || !PyTuple_CheckExact(caches) || PyTuple_GET_SIZE(caches) != 7 ||
        !PyFloat_CheckExact(now_obj))
        Py_RETURN_NONE;
    PyObject *states = PyTuple_GET_ITEM(caches, 0), *queries = PyTuple_GET_ITEM(caches, 1);
    PyObject *agents = PyTuple_GET_ITEM(caches, 2), *hosts = PyTuple_GET_ITEM(caches, 3);
    PyTypeObject *hit_type = (PyTypeObject *)PyTuple_GET_ITEM(caches, 4);
    PyObject *limiter = PyTuple_GET_ITEM(caches, 5), *pipeline = PyTuple_GET_ITEM(caches, 6);
    if (!PyDict_CheckExact(states) || !PyDict_CheckExact(queries) || !PyDict_CheckExact(agents) ||
        !PyDict_CheckExact(hosts) || !tuple_type((PyObject *)hit_type))
        Py_RETURN_NONE;
    double now = PyFloat_AS_DOUBLE(now_obj);
    /* Every value found is held (kept) until the end: a dict lookup may run a key's
     * __eq__, and the calls further down any code, which could change the scope, its
     * headers or the caches. Until the rate limit is asked, nothing is done: NULL with
     * no error set means None, the Python path decides. */
    PyObject *kept[16];
    int n_kept = 0;
#define KEEP(x) (Py_INCREF(x), kept[n_kept++] = (x))
    PyObject *result = NULL, *visitor_id = NULL, *user_id = NULL, *hit = NULL;

    PyObject *method = LOOKUP(scope, str_method);
    if (method == NULL)
        goto end;
    KEEP(method);
    if (method != str_GET) {
        if (!PyUnicode_CheckExact(method) || PyUnicode_Compare(method, str_GET) != 0)
            goto end; /* (Compare cannot fail on two str) */
    }
    PyObject *headers = LOOKUP(scope, str_headers);
    if (headers == NULL)
        goto end;
    KEEP(headers);
    PyObject *query = LOOKUP(scope, str_query_string);
    if (query == NULL && PyErr_Occurred())
        goto end;
    KEEP(query == NULL ? bytes_empty : query);
    query = kept[n_kept - 1];
    PyObject *cookie, *agent, *host;
    if (!PyBytes_CheckExact(query) || !scan_beacon(headers, &cookie, &agent, &host) ||
        cookie == Py_None) /* without a cookie there is no visitor to count */
        goto end;
    KEEP(cookie);
    KEEP(agent);
    KEEP(host);
    PyObject *state = cached_entry(states, cookie, now, NULL); /* as a page finds it */
    if (state == NULL)
        goto end;
    kept[n_kept++] = state; /* a new reference already */
    if (state == Py_None)
        goto end;
    PyObject *params = LOOKUP(queries, query); /* parse_pixel_query's cache */
    if (params == NULL)
        goto end;
    KEEP(params);
    if (!PyDict_CheckExact(params))
        goto end;
    PyObject *page = LOOKUP(params, str_p);
    if (page == NULL) /* the general path takes the page from Referer */
        goto end;
    KEEP(page);
    /* r and c are looked for only while the dict has keys not yet found (the
     * parser's has p, r and c at most, and a beacon URL most often p and r) */
    Py_ssize_t unseen = PyDict_GET_SIZE(params) - 1;
    PyObject *referrer = unseen > 0 ? LOOKUP(params, str_r) : NULL;
    if (referrer == NULL && PyErr_Occurred())
        goto end;
    unseen -= referrer != NULL;
    KEEP(referrer == NULL ? Py_None : referrer);
    referrer = kept[n_kept - 1];
    PyObject *campaign = unseen > 0 ? LOOKUP(params, str_c) : NULL;
    if (campaign == NULL && PyErr_Occurred())
        goto end;
    KEEP(campaign == NULL ? Py_None : campaign);
    campaign = kept[n_kept - 1];
    PyObject *agent_text = LOOKUP(agents, agent);
    if (agent_text == NULL)
        goto end;
    KEEP(agent_text);
    PyObject *site = LOOKUP(hosts, host);
    if (site == NULL)
        goto end;
    KEEP(site);
#undef KEEP
    /* CookieState.beacon_id: the id the beacon counts without a cookie (or None), and
     * its user_id, read from their slots */
    if (Py_TYPE(state) != state_type || !state_slots)
        goto end;
    visitor_id = SLOT(state, off_beacon_id);
    user_id = SLOT(state, off_user_id);
    if (visitor_id == NULL || visitor_id == Py_None || user_id == NULL) {
        visitor_id = user_id = NULL; /* (not held yet) */
        goto end;
    }
    Py_INCREF(visitor_id);
    Py_INCREF(user_id);
    int ok = quick_allow(limiter, visitor_id, now);
    if (ok == -2) {
        PyObject *call_args[3] = {limiter, visitor_id, now_obj};
        PyObject *allowed = PyObject_VectorcallMethod(
            str_allow, call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        ok = allowed == NULL ? -1 : PyObject_IsTrue(allowed);
        Py_XDECREF(allowed);
    }
    if (ok < 0)
        goto end;
    if (!ok) { /* over the rate limit: answered, not counted */
        PyObject *settings = PyObject_GetAttr(core, str_settings);
        if (settings != NULL) {
            result = PyObject_GetAttr(settings, str_pixel_rate_limit_status);
            Py_DECREF(settings);
        }
        goto end;
    }
    hit = hit_type->tp_alloc(hit_type, 8);
    if (hit == NULL)
        goto end;
    PyObject *fields[8] = {now_obj, visitor_id, user_id, page, referrer, campaign, agent_text,
                           site}; /* Hit(ts, visitor_id, user_id, page, referrer, ...) */
    for (int i = 0; i < 8; i++) {
        Py_INCREF(fields[i]);
        PyTuple_SET_ITEM(hit, i, fields[i]);
    }
    untrack_if_atomic(hit);
    int added = quick_add(pipeline, hit);
    if (added == -2) {
        PyObject *add_args[2] = {pipeline, hit};
        PyObject *done = PyObject_VectorcallMethod(
            str_add, add_args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        added = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    if (added == 0) {
        result = int_200;
        Py_INCREF(result);
    }
end:
    Py_XDECREF(hit);
    Py_XDECREF(user_id);
    Py_XDECREF(visitor_id);
    while (n_kept > 0)
        Py_DECREF(kept[--n_kept]);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

/* -- cookies added to a response -------------------------------------------------- */

static PyObject *bytes_set_cookie;

/* Is `name` (bytes) `lower` (lower-case ASCII), in any case? */
static int
same_name(PyObject *name, const char *lower)
{
    Py_ssize_t size = PyBytes_GET_SIZE(name);
    if (size != (Py_ssize_t)strlen(lower))
        return 0;
    const char *text = PyBytes_AS_STRING(name);
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = text[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lower[i])
            return 0;
    }
    return 1;
}

PyDoc_STRVAR(add_cookies_doc,
"add_cookies(message, added, cookies, /)\n--\n\n"
"A copy of an http.response.start message whose headers are the app's, then\n"
"`added` (a list of header tuples), then a Set-Cookie for each of `cookies`\n"
"(text, encoded as latin-1). None when the app's headers include Vary or\n"
"Cache-Control (in any case), or are not a list of (bytes, bytes) tuples: the\n"
"Python path (trackmw.asgi._add_headers) decides those.");

static PyObject *
add_cookies(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("add_cookies", nargs, 3) < 0)
        return NULL;
    PyObject *message = args[0], *added = args[1], *cookies = args[2];
    if (!PyDict_CheckExact(message) || !PyList_CheckExact(added) || !PyList_CheckExact(cookies))
        Py_RETURN_NONE;
    PyObject *raw = PyDict_GetItemWithError(message, str_headers);
    if (raw == NULL && PyErr_Occurred())
        return NULL;
    if (raw != NULL && !PyList_CheckExact(raw))
        Py_RETURN_NONE;
    Py_ssize_t n_raw = raw == NULL ? 0 : PyList_GET_SIZE(raw);
    Py_ssize_t n_added = PyList_GET_SIZE(added), n_cookies = PyList_GET_SIZE(cookies);
    Py_XINCREF(raw); /* held: the message only lends it */
    PyObject *headers = PyList_New(n_raw + n_added + n_cookies);
    if (headers == NULL) {
        Py_XDECREF(raw);
        return NULL;
    }
    /* The lists are read after the allocation, which may have run a finalizer that
     * changed them (a collection): if their sizes moved, Python decides. Checking and
     * copying allocate nothing. */
    if ((raw != NULL && PyList_GET_SIZE(raw) != n_raw) || PyList_GET_SIZE(added) != n_added ||
        PyList_GET_SIZE(cookies) != n_cookies)
        goto python;
    for (Py_ssize_t i = 0; i < n_raw; i++) {
        PyObject *item = PyList_GET_ITEM(raw, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 1)))
            goto python;
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        if (same_name(name, "vary") || same_name(name, "cache-control"))
            goto python;
        Py_INCREF(item);
        PyList_SET_ITEM(headers, i, item);
    }
    for (Py_ssize_t i = 0; i < n_cookies; i++)
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(cookies, i)))
            goto python;
    for (Py_ssize_t i = 0; i < n_added; i++) {
        PyObject *item = PyList_GET_ITEM(added, i);
        Py_INCREF(item);
        PyList_SET_ITEM(headers, n_raw + i, item);
    }
    Py_XDECREF(raw);
    raw = NULL;
    for (Py_ssize_t i = 0; i < n_cookies; i++) {
        /* Encoding allocates: each value is held while it is read, and the list is
         * checked again before each, in case a finalizer changed it meanwhile. */
        if (PyList_GET_SIZE(cookies) != n_cookies)
            goto python;
        PyObject *text = PyList_GET_ITEM(cookies, i);
        if (!PyUnicode_CheckExact(text))
            goto python;
        Py_INCREF(text);
        PyObject *value = PyUnicode_AsLatin1String(text);
        Py_DECREF(text);
        if (value == NULL)
            goto fail;
        PyObject *item = PyTuple_Pack(2, bytes_set_cookie, value);
        Py_DECREF(value);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(headers, n_raw + n_added + i, item);
    }
    PyObject *copy = PyDict_Copy(message);
    if (copy == NULL)
        goto fail;
    if (PyDict_SetItem(copy, str_headers, headers) < 0) {
        Py_DECREF(copy);
        goto fail;
    }
    Py_DECREF(headers);
    return copy;
python:
    Py_XDECREF(raw);
    Py_DECREF(headers); /* slots not yet set are NULL, which list_dealloc skips */
    Py_RETURN_NONE;
fail:
    Py_DECREF(headers);
    return NULL;
}

/* -- LazyBase: the per-request object of trackmw.asgi.LazyVisitor ---------------- */

typedef struct {
    PyObject_HEAD
    PyObject *core;
    PyObject *state;
    PyObject *visitor;
    PyObject *issued_id;
    PyObject *scope;
    PyObject *send;
} Lazy;

static PyTypeObject LazyType;

static Lazy *
lazy_alloc(PyTypeObject *cls, PyObject *core, PyObject *scope, PyObject *state, PyObject *send)
{
    if (cls->tp_flags & Py_TPFLAGS_IS_ABSTRACT) { /* as object() refuses an ABC */
        PyErr_Format(PyExc_TypeError, "Can't instantiate abstract class %s", cls->tp_name);
        return NULL;
    }
    Lazy *self = (Lazy *)cls->tp_alloc(cls, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(core);
    self->core = core;
    Py_INCREF(state);
    self->state = state;
    Py_INCREF(Py_None);
    self->visitor = Py_None;
    Py_INCREF(Py_None);
    self->issued_id = Py_None;
    Py_INCREF(scope);
    self->scope = scope;
    Py_INCREF(send);
    self->send = send;
    return self;
}

static PyObject *
lazy_new(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"core", "scope", "state", "send", NULL};
    PyObject *core, *scope, *state, *send;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:LazyVisitor", names, &core, &scope, &state,
                                     &send))
        return NULL;
    return (PyObject *)lazy_alloc(cls, core, scope, state, send);
}

/* A new instance for the request, put in scope["trackmw"] too; NULL on error. */
static Lazy *
lazy_in_scope(PyTypeObject *cls, PyObject *core, PyObject *scope, PyObject *state,
              PyObject *send)
{
    Lazy *self = lazy_alloc(cls, core, scope, state, send);
    if (self != NULL && PyDict_SetItem(scope, str_trackmw, (PyObject *)self) < 0)
        Py_CLEAR(self);
    return self;
}

PyDoc_STRVAR(enter_doc,
"enter(scope, prefixes, states, now, core, send, /)\n--\n\n"
"A new instance for a request to a tracked page whose cookie state is cached\n"
"(set as scope[\"trackmw\"] too), or None when the request is not that case: the\n"
"first step of Entry's page path, on its own for the tests.\n\n"
"prefixes: the paths that may be trackmw's own or excluded; states: the cached\n"
"states of Cookie headers (CookieReader.states); now: the time, for their window.");

static PyObject *
lazy_enter(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    double now;
    if (unpack_lookup_args("enter", nargs, 6, args, &now) < 0)
        return NULL;
    PyObject *state = lookup_state(args[0], args[1], args[2], now, NULL);
    if (state == NULL || state == Py_None)
        return state;
    Lazy *self = lazy_in_scope((PyTypeObject *)cls, args[4], args[0], state, args[5]);
    Py_DECREF(state);
    return (PyObject *)self;
}

PyDoc_STRVAR(send_quiet_doc,
"send_quiet(message, /)\n--\n\n"
"The send wrapper of a visitor who needs no cookie unless the app changes\n"
"something: the message as it is while the app has not asked for its visitor,\n"
"else send_full(message).");

static PyObject *
lazy_send_quiet(Lazy *self, PyObject *message)
{
    if (self->visitor == NULL || self->send == NULL) /* deleted: the AttributeError */
        return PyObject_GetAttr((PyObject *)self, self->visitor == NULL ? str_visitor : str_send);
    if (self->visitor != Py_None)
        return PyObject_CallMethodOneArg((PyObject *)self, str_send_full, message);
    PyObject *send = self->send; /* held: the callee may rebind _send */
    Py_INCREF(send);
    PyObject *result = PyObject_CallOneArg(send, message);
    Py_DECREF(send);
    return result;
}

static int
lazy_traverse(Lazy *self, visitproc visit, void *arg)
{
    Py_VISIT(self->core);
    Py_VISIT(self->state);
    Py_VISIT(self->visitor);
    Py_VISIT(self->issued_id);
    Py_VISIT(self->scope);
    Py_VISIT(self->send);
    return 0;
}

static int
lazy_clear(Lazy *self)
{
    Py_CLEAR(self->core);
    Py_CLEAR(self->state);
    Py_CLEAR(self->visitor);
    Py_CLEAR(self->issued_id);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->send);
    return 0;
}

static void
lazy_dealloc(Lazy *self)
{
    PyObject_GC_UnTrack(self);
    lazy_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef lazy_members[] = {
    {"_core", T_OBJECT_EX, offsetof(Lazy, core), 0, NULL},
    {"_state", T_OBJECT_EX, offsetof(Lazy, state), 0, NULL},
    {"visitor", T_OBJECT_EX, offsetof(Lazy, visitor), 0, NULL},
    {"issued_id", T_OBJECT_EX, offsetof(Lazy, issued_id), 0, NULL},
    {"_scope", T_OBJECT_EX, offsetof(Lazy, scope), 0, NULL},
    {"_send", T_OBJECT_EX, offsetof(Lazy, send), 0, NULL},
    {NULL},
};

static PyMethodDef lazy_methods[] = {
    {"enter", (PyCFunction)(void (*)(void))lazy_enter, METH_FASTCALL | METH_CLASS, enter_doc},
    {"send_quiet", (PyCFunction)lazy_send_quiet, METH_O, send_quiet_doc},
    {NULL},
};

PyDoc_STRVAR(lazy_doc,
"LazyBase(core, scope, state, send)\n--\n\n"
"The storage and the hot methods of trackmw.asgi.LazyVisitor, which adds the rest.");

static PyTypeObject LazyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackmw._speedups.LazyBase",
    .tp_doc = lazy_doc,
    .tp_basicsize = sizeof(Lazy),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = lazy_new,
    .tp_traverse = (traverseproc)lazy_traverse,
    .tp_clear = (inquiry)lazy_clear,
    .tp_dealloc = (destructor)lazy_dealloc,
    .tp_members = lazy_members,
    .tp_methods = lazy_methods,
};

/* -- the middleware's call: a tracked page's request without a coroutine frame ----- */

static PyObject *kwnames_app; /* ("_app",): the keyword Entry passes the settling call's app by */
static PyObject *str_plan, *str_time, *str_quiet, *str_fresh, *str_send_quiet, *str_send_fresh;
static PyObject *str_throw, *str_close, *str_status;

/* What the call needs from the middleware, fixed at its construction. */
typedef struct {
    PyObject_HEAD
    PyObject *app;       /* the wrapped ASGI app */
    PyObject *prefixes;  /* the paths that may be trackmw's own or excluded */
    PyObject *states;    /* CookieReader.states */
    PyObject *core;
    PyObject *lazy_type; /* the LazyBase subclass to make */
    PyObject *globals;   /* trackmw.asgi's namespace: its "_time" is the clock */
    PyObject *over;      /* what a visitor's _send becomes when the request ends */
    PyObject *failed;    /* logs an exception of this path: failed(exc) */
    PyObject *pixel_path;
    PyObject *beacon_caches; /* Core.beacon_caches, or None: every beacon to Python */
    PyObject *pixel_start;   /* the GIF's http.response.start (copied for each beacon) */
    PyObject *pixel_body;    /* and its http.response.body */
    PyObject *settle;        /* called as settle(middleware, scope) before the first call's
                              * work, then dropped; NULL when none is left */
    int quiet_ok;        /* not count_server_side: a quiet state's send may pass messages on */
} Plan;

static PyTypeObject PlanType;

static PyObject *
plan_new(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"app", "prefixes", "states", "core", "lazy_type", "quiet_ok",
                            "globals", "over", "failed", "pixel_path", "beacon_caches",
                            "pixel_start", "pixel_body", "settle", NULL};
    PyObject *app, *prefixes, *states, *core, *lazy_type, *globals, *over, *failed;
    PyObject *pixel_path, *beacon_caches, *pixel_start, *pixel_body, *settle = Py_None;
    int quiet_ok;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!OOpO!OOUOO!O!|O:Plan", names, &app,
                                     &PyTuple_Type, &prefixes, &PyDict_Type, &states, &core,
                                     &lazy_type, &quiet_ok, &PyDict_Type, &globals, &over,
                                     &failed, &pixel_path, &beacon_caches, &PyDict_Type,
                                     &pixel_start, &PyDict_Type, &pixel_body, &settle))
        return NULL;
    if (settle != Py_None && !PyCallable_Check(settle)) {
        PyErr_SetString(PyExc_TypeError, "Plan: settle must be callable or None");
        return NULL;
    }
    if (!PyType_Check(lazy_type) || !PyType_IsSubtype((PyTypeObject *)lazy_type, &LazyType)) {
        PyErr_SetString(PyExc_TypeError, "Plan: lazy_type must be a subclass of LazyBase");
        return NULL;
    }
    if (PyUnicode_READY(pixel_path) < 0)
        return NULL;
    Plan *self = (Plan *)cls->tp_alloc(cls, 0);
    if (self == NULL)
        return NULL;
    PyObject **slots[] = {&self->app, &self->prefixes, &self->states, &self->core,
                          &self->lazy_type, &self->globals, &self->over, &self->failed,
                          &self->pixel_path, &self->beacon_caches, &self->pixel_start,
                          &self->pixel_body};
    PyObject *values[] = {app, prefixes, states, core, lazy_type, globals, over, failed,
                          pixel_path, beacon_caches, pixel_start, pixel_body};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        Py_INCREF(values[i]);
        *slots[i] = values[i];
    }
    self->settle = settle == Py_None ? NULL : Py_NewRef(settle);
    self->quiet_ok = quiet_ok;
    return (PyObject *)self;
}

static int
plan_traverse(Plan *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->prefixes);
    Py_VISIT(self->states);
    Py_VISIT(self->core);
    Py_VISIT(self->lazy_type);
    Py_VISIT(self->globals);
    Py_VISIT(self->over);
    Py_VISIT(self->failed);
    Py_VISIT(self->pixel_path);
    Py_VISIT(self->beacon_caches);
    Py_VISIT(self->pixel_start);
    Py_VISIT(self->pixel_body);
    Py_VISIT(self->settle);
    return 0;
}

static int
plan_clear(Plan *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->prefixes);
    Py_CLEAR(self->states);
    Py_CLEAR(self->core);
    Py_CLEAR(self->lazy_type);
    Py_CLEAR(self->globals);
    Py_CLEAR(self->over);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->pixel_path);
    Py_CLEAR(self->beacon_caches);
    Py_CLEAR(self->pixel_start);
    Py_CLEAR(self->pixel_body);
    Py_CLEAR(self->settle);
    return 0;
}

static void
plan_dealloc(Plan *self)
{
    PyObject_GC_UnTrack(self);
    plan_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef plan_members[] = {
    {"app", T_OBJECT, offsetof(Plan, app), READONLY, NULL},
    {"lazy_type", T_OBJECT, offsetof(Plan, lazy_type), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(plan_doc,
"Plan(app, prefixes, states, core, lazy_type, quiet_ok, globals, over, failed,\n"
"     pixel_path, beacon_caches, pixel_start, pixel_body, settle=None)\n--\n\n"
"What Entry needs from a TrackingMiddleware, fixed at its construction (its _plan).\n"
"settle(middleware, scope) is called once, at the first call, before anything else;\n"
"that call goes on with this plan, and later calls read the middleware's _plan,\n"
"which settle may have replaced.");

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackmw._speedups.Plan",
    .tp_doc = plan_doc,
    .tp_basicsize = sizeof(Plan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = plan_new,
    .tp_traverse = (traverseproc)plan_traverse,
    .tp_clear = (inquiry)plan_clear,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_members = plan_members,
};

/* The iterator `await awaitable` drives: a coroutine itself, a generator-based
 * coroutine (types.coroutine), else what its __await__() returns. */
static PyObject *
await_iter(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable)) {
        Py_INCREF(awaitable);
        return awaitable;
    }
    if (PyGen_CheckExact(awaitable)) { /* awaitable only if its code says so */
        PyObject *code = PyObject_GetAttrString(awaitable, "gi_code");
        PyObject *flags = code == NULL ? NULL : PyObject_GetAttrString(code, "co_flags");
        long bits = flags == NULL ? -1 : PyLong_AsLong(flags);
        Py_XDECREF(code);
        Py_XDECREF(flags);
        if (bits == -1 && PyErr_Occurred())
            return NULL;
        if (bits & 0x0100) { /* CO_ITERABLE_COROUTINE */
            Py_INCREF(awaitable);
            return awaitable;
        }
    }
    unaryfunc getter = Py_TYPE(awaitable)->tp_as_async == NULL
                           ? NULL
                           : Py_TYPE(awaitable)->tp_as_async->am_await;
    if (getter == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *iter = getter(awaitable);
    if (iter != NULL && (PyCoro_CheckExact(iter) || !PyIter_Check(iter))) {
        PyErr_Format(PyExc_TypeError, "__await__() returned %s",
                     PyCoro_CheckExact(iter) ? "a coroutine" : "a non-iterator");
        Py_CLEAR(iter);
    }
    return iter;
}

/* The request is over: the visitor's _scope becomes None and its _send `over`, and
 * `lazy` (a reference this takes) is let go. Keeps any exception set. */
static void
let_go(PyObject *lazy, PyObject *over)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* the decrefs below may run code */
    Lazy *visitor = (Lazy *)lazy;
    PyObject *scope = visitor->scope, *send = visitor->send;
    Py_INCREF(Py_None);
    visitor->scope = Py_None;
    Py_INCREF(over);
    visitor->send = over;
    Py_XDECREF(scope);
    Py_XDECREF(send);
    Py_DECREF(lazy);
    PyErr_Restore(type, value, traceback);
}

/* -- Call: the awaitable of a request the C path takes ------------------------------ */

/* What the middleware's Python coroutine would await, awaited in turn, without its
 * frame (and, called, a quiet page's send: call_send_quiet): for a tracked page, the
 * app's awaitable, after which the request's visitor
 * is let go (its _scope and _send, as the Python path's `finally` does: the server's
 * send belongs to an object holding the scope, which holds the visitor, so keeping
 * them would leave a reference cycle per request); for a beacon, what `send` returns
 * for each of its messages. It behaves as a coroutine does when awaited, sent to,
 * thrown into, closed, finalized, or used again while it runs or once it is done. */
typedef struct {
    PyObject_HEAD
    PyObject *iter;     /* the awaitable being awaited (its iterator), or NULL */
    PyObject *send;     /* where `messages` go */
    PyObject *messages; /* a tuple sent in turn once `iter` is done, or NULL */
    Py_ssize_t next;    /* the index of the next message */
    PyObject *lazy;     /* the request's visitor, let go at the end; or NULL */
    PyObject *over;     /* what its _send becomes */
    vectorcallfunc vectorcall; /* a page's Call is also its app's `send` (call_send_quiet) */
    char started, running, finished;
} Call;

static PyTypeObject CallType;
static PyObject *lazy_send_quiet_method; /* LazyBase.send_quiet, the method descriptor */
static unsigned int send_quiet_tag;      /* the lazy type's version tag it was found on */
static PyObject *call_send_quiet(PyObject *self, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames);

/* A new Call awaiting `iter` (a reference this takes; NULL for one whose app is called
 * next: see entry_fast) then sending `messages`. */
static PyObject *
call_new(PyObject *iter, PyObject *send, PyObject *messages, PyObject *lazy, PyObject *over)
{
    Call *self = PyObject_GC_New(Call, &CallType);
    if (self == NULL) {
        Py_XDECREF(iter);
        return NULL;
    }
    self->iter = iter;
    Py_XINCREF(send);
    self->send = send;
    Py_XINCREF(messages);
    self->messages = messages;
    self->next = 0;
    Py_XINCREF(lazy);
    self->lazy = lazy;
    Py_XINCREF(over);
    self->over = over;
    self->vectorcall = (vectorcallfunc)call_send_quiet;
    self->started = self->running = self->finished = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* A page's Call called as its app's `send` (entry_fast gives it for a quiet state):
 * what LazyBase.send_quiet does, without a bound method made for each request. Once
 * the request is over, what the visitor's _send became (`over`, which raises). */
static PyObject *
call_send_quiet(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Call *self = (Call *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != 1) {
        PyErr_Format(PyExc_TypeError, "send_quiet() takes exactly one argument (%zd given)",
                     nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames)));
        return NULL;
    }
    PyObject *lazy = self->lazy;
    if (lazy == NULL) {
        if (self->over != NULL)
            return PyObject_CallOneArg(self->over, args[0]);
        PyErr_SetString(PyExc_TypeError, "a beacon's trackmw call is not a send");
        return NULL;
    }
    Py_INCREF(lazy); /* held: the send may run any code */
    PyObject *result = lazy_send_quiet((Lazy *)lazy, args[0]);
    Py_DECREF(lazy);
    return result;
}

/* A Call made for a page whose app's call failed: never to be awaited, its visitor let
 * go (keeping the error set). */
static void
call_forget(Call *self)
{
    self->finished = 1;
    PyObject *lazy = self->lazy;
    self->lazy = NULL;
    if (lazy != NULL)
        let_go(lazy, self->over);
    Py_DECREF(self);
}

/* A StopIteration raised in a coroutine's body becomes this RuntimeError (PEP 479):
 * else a task driving it would take it for the coroutine's return. */
static void
no_stop_iteration(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration))
        return;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    PyErr_SetString(PyExc_RuntimeError, "coroutine raised StopIteration");
    if (value == NULL)
        return;
    PyObject *new_type, *new_value, *new_traceback;
    PyErr_Fetch(&new_type, &new_value, &new_traceback);
    PyErr_NormalizeException(&new_type, &new_value, &new_traceback);
    if (new_value != NULL) {
        Py_INCREF(value);
        PyException_SetCause(new_value, value); /* steals */
        PyException_SetContext(new_value, value); /* steals */
    }
    else
        Py_DECREF(value);
    PyErr_Restore(new_type, new_value, new_traceback);
}

/* Done, however it ended: the visitor let go, nothing more to await. Keeps any
 * exception set, a StopIteration becoming the RuntimeError a coroutine raises. */
static void
call_done(Call *self)
{
    no_stop_iteration();
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* the decrefs below may run code */
    self->finished = 1;
    PyObject *lazy = self->lazy;
    self->lazy = NULL;
    if (lazy != NULL && self->over != NULL)
        let_go(lazy, self->over);
    else
        Py_XDECREF(lazy);
    Py_CLEAR(self->iter);
    Py_CLEAR(self->messages);
    Py_CLEAR(self->send);
    PyErr_Restore(type, value, traceback);
}

/* May the caller drive it now? 0 if so; -1 with the error a coroutine raises if not. */
static int
call_check(Call *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "trackmw call already executing");
        return -1;
    }
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return -1;
    }
    return 0;
}

/* Send `arg` in (None but to the awaitable running), and on: to the next message
 * when an awaitable returns. Marks it done unless something is awaited still. */
static PySendResult
call_step(Call *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    PySendResult status = PYGEN_ERROR;
    self->running = 1;
    while (1) {
        if (self->iter == NULL) {
            if (self->messages == NULL || self->next >= PyTuple_GET_SIZE(self->messages)) {
                Py_INCREF(Py_None); /* None, as the Python path's coroutine returns */
                *result = Py_None;
                status = PYGEN_RETURN;
                break;
            }
            PyObject *message = PyTuple_GET_ITEM(self->messages, self->next);
            self->next++;
            PyObject *awaitable = PyObject_CallOneArg(self->send, message);
            PyObject *iter = awaitable == NULL ? NULL : await_iter(awaitable);
            Py_XDECREF(awaitable);
            if (iter == NULL)
                break;
            self->iter = iter;
            arg = Py_None;
        }
        PyObject *iter = self->iter; /* held: a re-entrant call cannot free it (running) */
        Py_INCREF(iter);
        status = PyIter_Send(iter, arg, result);
        Py_DECREF(iter);
        if (status != PYGEN_RETURN)
            break;
        Py_CLEAR(*result); /* that awaitable's value: not the middleware's */
        Py_CLEAR(self->iter);
        arg = Py_None;
    }
    self->running = 0;
    if (status != PYGEN_NEXT)
        call_done(self);
    return status;
}

static PySendResult
call_am_send(Call *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (call_check(self) < 0)
        return PYGEN_ERROR;
    if (!self->started && arg != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
        return PYGEN_ERROR;
    }
    self->started = 1;
    return call_step(self, arg, result);
}

/* A step's outcome as a generator method gives it: the value, or StopIteration. */
static PyObject *
call_outcome(PySendResult status, PyObject *result)
{
    if (status == PYGEN_NEXT)
        return result;
    if (status == PYGEN_RETURN) { /* always None */
        Py_DECREF(result);
        PyErr_SetNone(PyExc_StopIteration);
    }
    return NULL;
}

static PyObject *
call_send(Call *self, PyObject *arg)
{
    PyObject *result;
    PySendResult status = call_am_send(self, arg, &result);
    return call_outcome(status, result);
}

static PyObject *
call_iternext(Call *self)
{
    return call_send(self, Py_None);
}

/* Raise what throw(type[, value[, traceback]]) was given, as gen.throw raises it. */
static PyObject *
raise_given(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *type = args[0], *value = nargs > 1 ? args[1] : Py_None;
    PyObject *traceback = nargs > 2 ? args[2] : Py_None;
    if (traceback != Py_None && !PyTraceBack_Check(traceback)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionInstance_Check(type)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        value = type;
        type = (PyObject *)Py_TYPE(type);
    }
    else if (!PyExceptionClass_Check(type)) {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, "
                     "not %s", Py_TYPE(type)->tp_name);
        return NULL;
    }
    PyErr_SetObject(type, value);
    if (traceback != Py_None) {
        PyObject *exc_type, *exc, *tb;
        PyErr_Fetch(&exc_type, &exc, &tb);
        PyErr_NormalizeException(&exc_type, &exc, &tb);
        Py_XDECREF(tb);
        Py_INCREF(traceback);
        if (exc != NULL)
            PyException_SetTraceback(exc, traceback);
        PyErr_Restore(exc_type, exc, traceback);
    }
    return NULL;
}

/* Look `name` up on `obj`: a new reference, NULL with no error if it has none. */
static PyObject *
optional_attr(PyObject *obj, PyObject *name)
{
    PyObject *found = PyObject_GetAttr(obj, name);
    if (found == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    return found;
}

/* Close what is awaited, with `running` set: 0, or -1 with its error set. */
static int
close_awaited(Call *self)
{
    if (self->iter == NULL)
        return 0;
    self->running = 1;
    PyObject *close = optional_attr(self->iter, str_close);
    int ok = close != NULL || !PyErr_Occurred();
    if (close != NULL) {
        PyObject *result = PyObject_CallNoArgs(close);
        Py_DECREF(close);
        ok = result != NULL;
        Py_XDECREF(result);
    }
    self->running = 0;
    return ok ? 0 : -1;
}

static PyObject *
call_throw(Call *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        return NULL;
    }
    if (call_check(self) < 0)
        return NULL;
    self->started = 1;
    PyObject *thrown = PyExceptionInstance_Check(args[0]) ? (PyObject *)Py_TYPE(args[0]) : args[0];
    if (PyExceptionClass_Check(thrown) &&
        PyObject_IsSubclass(thrown, PyExc_GeneratorExit) == 1) {
        /* As a coroutine does: what it awaits is closed, then it raises GeneratorExit
         * itself (or the error closing raised). */
        if (close_awaited(self) == 0)
            raise_given(args, nargs);
        call_done(self);
        return NULL;
    }
    self->running = 1;
    PyObject *throw = self->iter == NULL ? NULL : optional_attr(self->iter, str_throw);
    if (throw == NULL) { /* raised where it stands, as into a coroutine not yet started */
        self->running = 0;
        if (!PyErr_Occurred())
            raise_given(args, nargs);
        call_done(self);
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(throw, args, (size_t)nargs, NULL);
    Py_DECREF(throw);
    if (result != NULL) {
        self->running = 0;
        return result; /* it went on, and awaits again */
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        self->running = 0;
        call_done(self);
        return NULL;
    }
    PyErr_Clear(); /* that awaitable returned: on to the next message, if any */
    Py_CLEAR(self->iter);
    self->running = 0;
    PyObject *next;
    PySendResult status = call_step(self, Py_None, &next);
    return call_outcome(status, next);
}

static PyObject *
call_close(Call *self, PyObject *unused)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "trackmw call already executing");
        return NULL;
    }
    if (self->finished)
        Py_RETURN_NONE;
    int ok = close_awaited(self);
    call_done(self);
    if (ok < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Never awaited to its end: closed as a coroutine is, so that what it awaits cleans
 * up while the visitor still works; then the visitor is let go. */
static void
call_finalize(Call *self)
{
    if (self->finished || self->running)
        return;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (!self->started && PyErr_WarnEx(PyExc_RuntimeWarning,
                                       "coroutine 'TrackingMiddleware.__call__' was never "
                                       "awaited", 1) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    PyObject *result = call_close(self, NULL);
    if (result == NULL)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(result);
    PyErr_Restore(type, value, traceback);
}

static PyObject *
call_await(Call *self)
{
    if (self->started && !self->finished) { /* as a coroutine another awaits already */
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        return NULL;
    }
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *
call_name(Call *self, void *closure)
{
    return PyUnicode_FromString(closure == NULL ? "__call__" : "TrackingMiddleware.__call__");
}

static PyGetSetDef call_getset[] = {
    {"__name__", (getter)call_name, NULL, NULL, NULL},
    {"__qualname__", (getter)call_name, NULL, NULL, "qualified"},
    {NULL},
};

static int
call_traverse(Call *self, visitproc visit, void *arg)
{
    Py_VISIT(self->iter);
    Py_VISIT(self->send);
    Py_VISIT(self->messages);
    Py_VISIT(self->lazy);
    Py_VISIT(self->over);
    return 0;
}

static int
call_clear(Call *self)
{
    self->finished = 1; /* (only in a cycle being collected: nothing to let go then) */
    Py_CLEAR(self->iter);
    Py_CLEAR(self->send);
    Py_CLEAR(self->messages);
    Py_CLEAR(self->lazy);
    Py_CLEAR(self->over);
    return 0;
}

static void
call_dealloc(Call *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected by its finalizer */
    PyObject_GC_UnTrack(self);
    call_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyAsyncMethods call_async = {
    .am_await = (unaryfunc)call_await,
    .am_send = (sendfunc)call_am_send,
};

static PyMethodDef call_methods[] = {
    {"send", (PyCFunction)call_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))call_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)call_close, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackmw._speedups.Call",
    .tp_doc = "The awaitable of a request trackmw's C path takes (see Entry); for a page "
              "whose cookie state is quiet, its app's send too (send_quiet).",
    .tp_basicsize = sizeof(Call),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Call, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)call_traverse,
    .tp_clear = (inquiry)call_clear,
    .tp_dealloc = (destructor)call_dealloc,
    .tp_finalize = (destructor)call_finalize,
    .tp_as_async = &call_async,
    .tp_iter = PyObject_SelfIter, /* `yield from call.__await__()` (asyncio wraps so) */
    .tp_iternext = (iternextfunc)call_iternext,
    .tp_methods = call_methods,
    .tp_getset = call_getset,
};

enum { TAKEN = 1, NOT_TAKEN = 0, FAILED = -1 };

/* The clock the Python path calls: trackmw.asgi's `_time` (read each time, so that a
 * patched clock reaches the C path too), a new reference; NULL with an error set. */
static PyObject *
plan_clock(Plan *plan)
{
    PyObject *clock = PyDict_GetItemWithError(plan->globals, str_time);
    if (clock == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "trackmw.asgi._time is gone");
        return NULL;
    }
    Py_INCREF(clock);
    return clock;
}

/* An error of the C path (set): an Exception is logged (plan.failed) and cleared, and
 * the Python path then decides (NOT_TAKEN), as its `except Exception` would; anything
 * else (KeyboardInterrupt, SystemExit) stays set and propagates (FAILED). */
static int
report_failure(Plan *plan)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return FAILED;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *logged = value == NULL ? NULL : PyObject_CallOneArg(plan->failed, value);
    if (logged == NULL)
        PyErr_WriteUnraisable(plan->failed);
    Py_XDECREF(logged);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return NOT_TAKEN;
}

/* A tracked page whose cookie state is cached: the LazyVisitor made and put in the
 * scope, the app called with the send wrapper its state calls for, and *out the Call
 * awaiting it (TAKEN). NOT_TAKEN for any other request, with nothing done but logging
 * an error of this path; FAILED (set) when the app's call raised, or on an error
 * that is not an Exception. The app is called here, when the middleware is, rather
 * than when its awaitable is first awaited (the same for `await middleware(...)`). */
static int
entry_fast(Plan *plan, PyObject *const *args, PyObject **out)
{
    PyObject *scope = args[1], *receive = args[2], *send = args[3];
    int taken = NOT_TAKEN;
    PyObject *state = NULL, *wrapped = NULL, *awaitable = NULL, *iter = NULL;
    Lazy *lazy = NULL;
    PyObject *clock = plan_clock(plan);
    if (clock == NULL)
        goto failed;
    /* called (in cached_entry) only for a request with a cached state */
    state = lookup_state(scope, plan->prefixes, plan->states, 0.0, clock);
    Py_DECREF(clock);
    if (state == NULL)
        goto failed;
    if (state == Py_None)
        goto done;
    PyObject *wrapper = str_send_full; /* the send wrapper the state calls for */
    if (plan->quiet_ok) {
        PyObject *flags[2] = {str_quiet, str_fresh}, *names[2] = {str_send_quiet, str_send_fresh};
        /* a CookieState's flags are read from its slots (a bool each) */
        int slots = Py_TYPE(state) == state_type && state_slots;
        Py_ssize_t offsets[2] = {off_quiet, off_fresh};
        for (int i = 0; i < 2 && wrapper == str_send_full; i++) {
            PyObject *flag = slots ? SLOT(state, offsets[i]) : NULL;
            int on = flag == Py_True ? 1 : flag == Py_False ? 0 : -2;
            if (on == -2) { /* not a CookieState, or a flag that is not a bool */
                flag = PyObject_GetAttr(state, flags[i]);
                on = flag == NULL ? -1 : PyObject_IsTrue(flag);
                Py_XDECREF(flag);
            }
            if (on < 0)
                goto failed;
            if (on)
                wrapper = names[i];
        }
    }
    lazy = lazy_in_scope((PyTypeObject *)plan->lazy_type, plan->core, scope, state, send);
    if (lazy == NULL)
        goto failed;
    /* The request's awaitable, made before the app is called: for a quiet state it is
     * the app's `send` too (call_send_quiet), one object less than a bound method. */
    Call *call = (Call *)call_new(NULL, NULL, NULL, (PyObject *)lazy, plan->over);
    if (call == NULL) { /* the visitor is in the scope: let go, as the request ends */
        let_go((PyObject *)lazy, plan->over);
        lazy = NULL;
        goto failed;
    }
    Py_CLEAR(lazy); /* the call holds it */
    /* Unless send_quiet is patched or overridden: the Python path's send is then that. */
    int own = wrapper == str_send_quiet
                  ? resolves_to(Py_TYPE(call->lazy), str_send_quiet, lazy_send_quiet_method,
                                &send_quiet_tag)
                  : 0;
    if (own == 1) {
        Py_INCREF(call);
        wrapped = (PyObject *)call;
    }
    else if (own < 0 || (wrapped = PyObject_GetAttr(call->lazy, wrapper)) == NULL) {
        call_forget(call);
        goto failed;
    }
    PyObject *app_args[3] = {scope, receive, wrapped};
    call->running = 1; /* not to be driven (as the app's send may be) before it awaits */
    awaitable = PyObject_Vectorcall(plan->app, app_args, 3, NULL);
    call->running = 0;
    iter = awaitable == NULL ? NULL : await_iter(awaitable);
    if (iter == NULL) { /* raised: the Python path's `await` raises it too */
        taken = FAILED;
        call_forget(call);
        goto done;
    }
    call->iter = iter;
    *out = (PyObject *)call;
    taken = TAKEN;
    goto done;
failed:
    taken = report_failure(plan);
done:
    Py_XDECREF(awaitable);
    Py_XDECREF(wrapped);
    Py_XDECREF((PyObject *)lazy);
    Py_XDECREF(state);
    return taken;
}

/* -- the beacon's answer: its two messages sent in turn ------------------------------ */

/* A copy of a start message (a dict) with a copy of its "headers" list, if it has one,
 * and `status` set: middleware around this one may edit either in place. */
static PyObject *
fresh_start(PyObject *message, PyObject *status)
{
    PyObject *copy = PyDict_Copy(message);
    if (copy == NULL)
        return NULL;
    PyObject *headers = PyDict_GetItemWithError(copy, str_headers);
    if (headers != NULL && PyList_Check(headers)) {
        headers = PyList_GetSlice(headers, 0, PyList_GET_SIZE(headers));
        if (headers == NULL || PyDict_SetItem(copy, str_headers, headers) < 0) {
            Py_XDECREF(headers);
            Py_DECREF(copy);
            return NULL;
        }
        Py_DECREF(headers);
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(copy);
        return NULL;
    }
    if (PyDict_SetItem(copy, str_status, status) < 0) {
        Py_DECREF(copy);
        return NULL;
    }
    return copy;
}

/* A GET of the pixel whose hit the C code counts (count_beacon): *out the Call
 * sending the GIF (TAKEN). NOT_TAKEN for any other request, with nothing done but
 * logging an error of this path; FAILED (set) on an error that is not an Exception.
 * The hit is counted here, when the middleware is called (as the app is called for a
 * page), not when the awaitable is first awaited. */
static int
entry_pixel(Plan *plan, PyObject *const *args, PyObject **out)
{
    PyObject *scope = args[1], *send = args[3];
    if (plan->beacon_caches == Py_None || !PyDict_CheckExact(scope))
        return NOT_TAKEN;
    PyObject *path = PyDict_GetItemWithError(scope, str_path);
    if (path == NULL || !PyUnicode_CheckExact(path)) {
        PyErr_Clear(); /* no path: the Python path says so */
        return NOT_TAKEN;
    }
    int eq = path == plan->pixel_path ? 0
             : PyUnicode_IS_READY(path) && /* (pixel_path is: plan_new readies it) */
               PyUnicode_GET_LENGTH(path) != PyUnicode_GET_LENGTH(plan->pixel_path) ? 1
             : PyUnicode_Compare(path, plan->pixel_path);
    if (eq != 0) {
        if (eq == -1 && PyErr_Occurred())
            PyErr_Clear(); /* not comparable: not the pixel */
        return NOT_TAKEN;
    }
    PyObject *type = PyDict_GetItemWithError(scope, str_type);
    if (type == NULL || !PyUnicode_CheckExact(type) || PyUnicode_Compare(type, str_http) != 0) {
        PyErr_Clear();
        return NOT_TAKEN;
    }
    int taken = NOT_TAKEN;
    PyObject *now = NULL, *status = NULL, *messages = NULL;
    PyObject *clock = plan_clock(plan);
    if (clock == NULL)
        goto failed;
    double seconds = clock_now(clock);
    Py_DECREF(clock);
    now = seconds == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(seconds);
    if (now == NULL)
        goto failed;
    status = count_beacon(scope, plan->beacon_caches, plan->core, now);
    if (status == NULL)
        goto failed;
    if (status == Py_None)
        goto done;
    messages = PyTuple_New(2);
    if (messages == NULL)
        goto failed;
    PyObject *start = fresh_start(plan->pixel_start, status);
    if (start == NULL)
        goto failed;
    PyTuple_SET_ITEM(messages, 0, start);
    PyObject *body = PyDict_Copy(plan->pixel_body); /* (it has no headers) */
    if (body == NULL)
        goto failed;
    PyTuple_SET_ITEM(messages, 1, body);
    *out = call_new(NULL, send, messages, NULL, NULL);
    if (*out == NULL)
        goto failed;
    taken = TAKEN;
    goto done;
failed:
    /* Counted already (an allocation failed after count_beacon)? Then the Python path
     * may count the hit again: only on a MemoryError, and logged. */
    taken = report_failure(plan);
done:
    Py_XDECREF(messages);
    Py_XDECREF(status);
    Py_XDECREF(now);
    return taken;
}

/* TrackingMiddleware.__call__: the common case above, else its Python __call__. */
typedef struct {
    PyObject_HEAD
    PyObject *func; /* the Python __call__ (an async function) */
    vectorcallfunc vectorcall;
} Entry;

static PyObject *
entry_vectorcall(Entry *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (self->func == NULL) { /* cleared by the collector: unreachable but in its cycle */
        PyErr_SetString(PyExc_RuntimeError, "trackmw: this __call__ was cleared");
        return NULL;
    }
    if (kwnames == NULL && PyVectorcall_NARGS(nargsf) == 4) {
        PyObject *found = optional_attr(args[0], str_plan);
        if (found == NULL && PyErr_Occurred())
            return NULL; /* reading _plan failed: as reading any attribute would */
        PyObject *first_app = NULL; /* the app of the call that settled, held */
        if (found != NULL && Py_IS_TYPE(found, &PlanType) && ((Plan *)found)->settle != NULL) {
            /* The first call: settle, once (the plan lets go of it first). This call
             * goes on with the plan it came with, and its app, whichever path takes
             * it; the plan settle leaves (it may make another) is for later calls. */
            PyObject *settle = ((Plan *)found)->settle;
            ((Plan *)found)->settle = NULL;
            PyObject *done = PyObject_CallFunctionObjArgs(settle, args[0], args[1], NULL);
            Py_DECREF(settle);
            if (done == NULL) {
                Py_DECREF(found);
                return NULL;
            }
            Py_DECREF(done);
            first_app = Py_XNewRef(((Plan *)found)->app);
        }
        if (found != NULL && Py_IS_TYPE(found, &PlanType) && ((Plan *)found)->app != NULL) {
            /* The pixel first: it costs a page one compare of its path, and spares the
             * beacon the page's checks, which its path (under the prefix) fails. */
            PyObject *awaitable = NULL;
            int taken = entry_pixel((Plan *)found, args, &awaitable);
            if (taken == NOT_TAKEN)
                taken = entry_fast((Plan *)found, args, &awaitable);
            Py_DECREF(found);
            if (taken != NOT_TAKEN) {
                Py_XDECREF(first_app);
                return awaitable; /* NULL if the app's call raised */
            }
        }
        else /* _plan None (or none): the Python path only */
            Py_XDECREF(found);
        if (first_app != NULL) { /* the Python path, told the app this call goes on with */
            PyObject *call_args[5] = {args[0], args[1], args[2], args[3], first_app};
            PyObject *awaitable = PyObject_Vectorcall(self->func, call_args, 4, kwnames_app);
            Py_DECREF(first_app);
            return awaitable;
        }
    }
    return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
}

static PyObject *
entry_new(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
    PyObject *func;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Entry() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Entry", 1, 1, &func))
        return NULL;
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "Entry: func must be callable");
        return NULL;
    }
    Entry *self = (Entry *)cls->tp_alloc(cls, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(func);
    self->func = func;
    self->vectorcall = (vectorcallfunc)entry_vectorcall;
    return (PyObject *)self;
}

/* Read from a class, the Python __call__; from an instance, that bound to it. So
 * TrackingMiddleware().__call__ is an async method, as servers that inspect an app
 * (to tell ASGI 3 from 2) expect; calling the instance takes the C path. */
static PyObject *
entry_get(Entry *self, PyObject *obj, PyObject *type)
{
    if (self->func == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trackmw: this __call__ was cleared");
        return NULL;
    }
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self->func);
        return self->func;
    }
    return PyMethod_New(self->func, obj);
}

static int
entry_traverse(Entry *self, visitproc visit, void *arg)
{
    Py_VISIT(self->func);
    return 0;
}

static int
entry_clear(Entry *self)
{
    Py_CLEAR(self->func);
    return 0;
}

static void
entry_dealloc(Entry *self)
{
    PyObject_GC_UnTrack(self);
    entry_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef entry_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(Entry, func), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(entry_doc,
"Entry(func)\n--\n\n"
"TrackingMiddleware.__call__ with its common case in C: a request to a tracked page\n"
"whose cookie state is cached is answered without a coroutine frame (the app's\n"
"awaitable is awaited by a Call); anything else, or a middleware whose _plan is\n"
"None, goes to func, the Python __call__.");

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackmw._speedups.Entry",
    .tp_doc = entry_doc,
    .tp_basicsize = sizeof(Entry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR |
                Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = entry_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Entry, vectorcall),
    .tp_descr_get = (descrgetfunc)entry_get,
    .tp_traverse = (traverseproc)entry_traverse,
    .tp_clear = (inquiry)entry_clear,
    .tp_dealloc = (destructor)entry_dealloc,
    .tp_members = entry_members,
};

/* -- the writer's normalize loop ------------------------------------------------------ */

PyDoc_STRVAR(normalize_run_doc,
"normalize_run(items, start, fixed, lo, hi, day, hit_type, pageview_type, pageviews, /)\n"
"--\n\n"
"trackmw.normalize.normalize_batch's loop over items[start:] (a list or a tuple), for\n"
"its common case: a hit of exactly hit_type whose time is a float in [lo, hi) (a\n"
"minute whose local day is day), whose texts are str (None where a hit may have\n"
"none) and whose (page, referrer, campaign, user_agent, host) the dict fixed holds\n"
"(normalize's cache). Appends each such hit's page view (of pageview_type) to the\n"
"list pageviews, and returns the index of the first item it leaves to Python:\n"
"len(items) if none. An Exception on the way is cleared, and that item left to\n"
"Python too.");

/* Is `obj` an exact str, or None where `none_ok`? */
static int
text_or_none(PyObject *obj, int none_ok)
{
    return PyUnicode_CheckExact(obj) || (none_ok && obj == Py_None);
}

/* The writer's loops' start index and range of times, from their arguments: 0, or -1
 * with an error set. */
static int
run_args(PyObject *start, PyObject *from, PyObject *to, Py_ssize_t *i, double *lo, double *hi)
{
    *i = PyLong_AsSsize_t(start);
    if (*i == -1 && PyErr_Occurred())
        return -1;
    *lo = PyFloat_AsDouble(from);
    if (*lo == -1.0 && PyErr_Occurred())
        return -1;
    *hi = PyFloat_AsDouble(to);
    return *hi == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* A writer's loop's arguments as it takes them: `items` an exact list or tuple, `into`
 * the exact dict it fills or reads, `type` the items' tuple type. */
static int
run_shape(PyObject *items, PyObject *into, PyObject *type)
{
    return (PyList_CheckExact(items) || PyTuple_CheckExact(items)) && PyDict_CheckExact(into) &&
           tuple_type(type);
}

/* Item `i` of `seq` (an exact list or tuple), borrowed; NULL past its end. Its size is
 * read each time: a key's __eq__ (in a loop's lookup) may run any code, and change it. */
static PyObject *
run_item(PyObject *seq, Py_ssize_t i)
{
    if (PyList_CheckExact(seq))
        return i < PyList_GET_SIZE(seq) ? PyList_GET_ITEM(seq, i) : NULL;
    return i < PyTuple_GET_SIZE(seq) ? PyTuple_GET_ITEM(seq, i) : NULL;
}

/* Page view `i` of `views` (borrowed) if it is exactly of `type` with a PageView's 11
 * fields (ts, day, visitor, user, path, referrer, campaign, browser, os, device, bot);
 * NULL past the end, or for anything else. */
static PyObject *
run_view(PyObject *views, Py_ssize_t i, PyTypeObject *type)
{
    PyObject *view = run_item(views, i);
    return view == NULL || Py_TYPE(view) != type || PyTuple_GET_SIZE(view) != 11 ? NULL : view;
}

/* Where a writer's loop stopped (`i`), once any Exception on the way is cleared: the
 * Python path meets it again and reports it as it does. Anything else (a
 * KeyboardInterrupt) goes through: NULL. */
static PyObject *
run_end(Py_ssize_t i)
{
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
    }
    return PyLong_FromSsize_t(i);
}

static PyObject *
normalize_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("normalize_run", nargs, 9) < 0)
        return NULL;
    PyObject *items = args[0], *fixed = args[2], *day = args[5], *pageviews = args[8];
    PyTypeObject *hit_type = (PyTypeObject *)args[6], *pv_type = (PyTypeObject *)args[7];
    Py_ssize_t i;
    double lo, hi;
    if (run_args(args[1], args[3], args[4], &i, &lo, &hi) < 0)
        return NULL;
    if (!run_shape(items, fixed, (PyObject *)hit_type) || !PyUnicode_CheckExact(day) ||
        !PyList_CheckExact(pageviews) || !tuple_type((PyObject *)pv_type) || i < 0)
        return PyLong_FromSsize_t(i < 0 ? 0 : i); /* nothing done: Python decides */
    for (;; i++) {
        PyObject *item = run_item(items, i);
        if (item == NULL || Py_TYPE(item) != hit_type || PyTuple_GET_SIZE(item) != 8)
            break;
        PyObject *ts = PyTuple_GET_ITEM(item, 0), *visitor = PyTuple_GET_ITEM(item, 1);
        PyObject *user = PyTuple_GET_ITEM(item, 2), *page = PyTuple_GET_ITEM(item, 3);
        PyObject *referrer = PyTuple_GET_ITEM(item, 4), *campaign = PyTuple_GET_ITEM(item, 5);
        PyObject *agent = PyTuple_GET_ITEM(item, 6), *host = PyTuple_GET_ITEM(item, 7);
        if (!PyFloat_CheckExact(ts) || !(lo <= PyFloat_AS_DOUBLE(ts) && PyFloat_AS_DOUBLE(ts) < hi) ||
            !text_or_none(visitor, 1) || !text_or_none(user, 1) || !text_or_none(page, 0) ||
            !text_or_none(referrer, 1) || !text_or_none(campaign, 1) ||
            !text_or_none(agent, 0) || !text_or_none(host, 0))
            break;
        Py_INCREF(item); /* held: the lookup may run code that drops it from the list */
        PyObject *key = PyTuple_Pack(5, page, referrer, campaign, agent, host);
        PyObject *found = key == NULL ? NULL : PyDict_GetItemWithError(fixed, key);
        Py_XINCREF(found);
        Py_XDECREF(key);
        PyObject *view = NULL;
        /* found: (path, referrer, campaign, browser, os, device, bot) */
        if (found != NULL && PyTuple_CheckExact(found) && PyTuple_GET_SIZE(found) == 7 &&
            PyBool_Check(PyTuple_GET_ITEM(found, 6))) {
            /* anonymous views and bots carry no visitor, user or device data */
            int anonymous = visitor == Py_None || PyTuple_GET_ITEM(found, 6) == Py_True;
            view = pv_type->tp_alloc(pv_type, 11);
            if (view != NULL) {
                PyObject *fields[11] = {ts, day, visitor, user, NULL, NULL, NULL, NULL, NULL, NULL,
                                        NULL};
                for (int k = 0; k < 7; k++)
                    fields[4 + k] = PyTuple_GET_ITEM(found, k);
                if (anonymous)
                    fields[2] = fields[3] = fields[7] = fields[8] = fields[9] = Py_None;
                for (int k = 0; k < 11; k++) {
                    Py_INCREF(fields[k]);
                    PyTuple_SET_ITEM(view, k, fields[k]);
                }
                untrack_if_atomic(view);
            }
        }
        Py_XDECREF(found);
        Py_DECREF(item);
        int added = view == NULL ? -1 : PyList_Append(pageviews, view);
        Py_XDECREF(view);
        if (added < 0)
            break; /* not cached, not the common case, or an error (below) */
    }
    return run_end(i);
}

/* -- the SQLite store's grouping of page views ------------------------------------ */

PyDoc_STRVAR(group_run_doc,
"group_run(pageviews, start, groups, pageview_type, ms_from, ms_to, /)\n--\n\n"
"trackmw.stores.sqlite_pageviews.group's loop over pageviews[start:] (a list or a\n"
"tuple), for its common case: a page view of exactly pageview_type whose time is a\n"
"float in [ms_from, ms_to) (kept as int(ts * 1000)), whose day, ids, browser class\n"
"and texts are str (None where a view may have none) and whose bot is a bool. Adds\n"
"each such view to the dict groups as group does, and returns the index of the first\n"
"one it leaves to Python: len(pageviews) if none. An Exception on the way is cleared,\n"
"and that view left to Python too.");

static PyObject *
group_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("group_run", nargs, 6) < 0)
        return NULL;
    PyObject *views = args[0], *groups = args[2];
    PyTypeObject *pv_type = (PyTypeObject *)args[3];
    Py_ssize_t i;
    double from, to;
    if (run_args(args[1], args[4], args[5], &i, &from, &to) < 0)
        return NULL;
    if (!run_shape(views, groups, (PyObject *)pv_type) || i < 0 ||
        !(-9e15 <= from && to <= 9e15)) /* (ts * 1000 must fit a long long) */
        return PyLong_FromSsize_t(i < 0 ? 0 : i); /* nothing done: Python decides */
    for (;; i++) {
        PyObject *view = run_view(views, i, pv_type);
        if (view == NULL)
            break;
        PyObject **f = &PyTuple_GET_ITEM(view, 0);
        if (!PyFloat_CheckExact(f[0]) ||
            !(from <= PyFloat_AS_DOUBLE(f[0]) && PyFloat_AS_DOUBLE(f[0]) < to) ||
            !text_or_none(f[1], 0) || !text_or_none(f[2], 1) || !text_or_none(f[3], 1) ||
            !text_or_none(f[4], 0) || !text_or_none(f[5], 1) || !text_or_none(f[6], 1) ||
            !text_or_none(f[7], 1) || !text_or_none(f[8], 1) || !text_or_none(f[9], 1) ||
            !PyBool_Check(f[10]))
            break;
        Py_INCREF(view); /* held: the lookup may run code that drops it from the list */
        f = &PyTuple_GET_ITEM(view, 0);
        PyObject *ms = PyLong_FromLongLong((long long)(PyFloat_AS_DOUBLE(f[0]) * 1000));
        PyObject *key = ms == NULL ? NULL : PyTuple_Pack(7, f[1], f[2], f[3], f[7], f[8], f[9], f[10]);
        PyObject *found = key == NULL ? NULL : PyDict_GetItemWithError(groups, key);
        int done = -1;
        if (found != NULL && PyList_CheckExact(found)) { /* views += ms, path, referrer, campaign */
            Py_INCREF(found);
            PyObject *added[4] = {ms, f[4], f[5], f[6]};
            Py_ssize_t before = PyList_GET_SIZE(found);
            done = 0;
            for (int k = 0; k < 4 && done == 0; k++)
                done = PyList_Append(found, added[k]);
            if (done < 0) { /* all four or none: Python adds the view again */
                PyObject *type, *value, *traceback;
                PyErr_Fetch(&type, &value, &traceback);
                if (PyList_SetSlice(found, before, PyList_GET_SIZE(found), NULL) < 0)
                    PyErr_Clear(); /* (a deletion this small allocates nothing) */
                PyErr_Restore(type, value, traceback);
            }
            Py_DECREF(found);
        }
        else if (found == NULL && key != NULL && !PyErr_Occurred()) { /* a new group */
            PyObject *list = PyList_New(4);
            if (list != NULL) {
                PyObject *added[4] = {ms, f[4], f[5], f[6]};
                for (int k = 0; k < 4; k++) {
                    Py_INCREF(added[k]);
                    PyList_SET_ITEM(list, k, added[k]);
                }
                done = PyDict_SetItem(groups, key, list);
                Py_DECREF(list);
            }
        }
        Py_XDECREF(key);
        Py_XDECREF(ms);
        Py_DECREF(view);
        if (done < 0)
            break; /* a group that is not a list, or an error (below) */
    }
    return run_end(i);
}

/* -- the stores' daily counts ------------------------------------------------------ */

PyDoc_STRVAR(tally_run_doc,
"tally_run(pageviews, start, tallies, pageview_type, /)\n--\n\n"
"trackmw.stores.base.daily_counts' loop over pageviews[start:] (a list or a tuple),\n"
"for its common case: a page view of exactly pageview_type whose day and path are\n"
"str, visitor, referrer and campaign str or None, and bot a bool. Counts each in\n"
"tallies[day], a list [bots, views, anonymous views, {path: views},\n"
"{referrer: views}, {campaign: views}] (made when missing; an empty referrer or\n"
"campaign is not counted), and returns the index of the first view it leaves to\n"
"Python: len(pageviews) if none. Unlike the writer's other loops, an error raises\n"
"rather than leaving the view to Python, which would count again what was counted\n"
"of it: the caller's tallies are then to be thrown away.");

/* Adds one to a count: item k of the list `container` when `key` is NULL, else the
 * value of `key` in the dict `container` (0 when missing). Each count must be an exact
 * int; a container that is not what it was (code a lookup ran changed it) is an error. */
static int
plus_one(PyObject *container, PyObject *key, Py_ssize_t k)
{
    if (key == NULL ? !PyList_CheckExact(container) || k >= PyList_GET_SIZE(container)
                    : !PyDict_CheckExact(container)) {
        PyErr_SetString(PyExc_TypeError, "tally_run: the tallies changed while counting");
        return -1;
    }
    PyObject *old = key == NULL ? PyList_GET_ITEM(container, k)
                                : PyDict_GetItemWithError(container, key);
    if (old == NULL && PyErr_Occurred())
        return -1;
    Py_ssize_t n = 0;
    if (old != NULL) {
        if (!PyLong_CheckExact(old)) {
            PyErr_SetString(PyExc_TypeError, "tally_run: a count that is not an int");
            return -1;
        }
        n = PyLong_AsSsize_t(old);
        if (n == -1 && PyErr_Occurred())
            return -1;
    }
    PyObject *value = PyLong_FromSsize_t(n + 1);
    if (value == NULL)
        return -1;
    if (key == NULL)
        return PyList_SetItem(container, k, value); /* (steals value, drops old) */
    int result = PyDict_SetItem(container, key, value);
    Py_DECREF(value);
    return result;
}

/* tallies[day], made if missing (borrowed); NULL with no error: not a tally's shape. */
static PyObject *
tally_of(PyObject *tallies, PyObject *day)
{
    PyObject *entry = PyDict_GetItemWithError(tallies, day);
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        entry = PyList_New(6);
        if (entry == NULL)
            return NULL;
        for (int k = 0; k < 6; k++) {
            PyObject *item = k < 3 ? PyLong_FromLong(0) : PyDict_New();
            if (item == NULL) {
                Py_DECREF(entry);
                return NULL;
            }
            PyList_SET_ITEM(entry, k, item);
        }
        int added = PyDict_SetItem(tallies, day, entry);
        Py_DECREF(entry); /* the dict's now */
        return added < 0 ? NULL : entry;
    }
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 6)
        return NULL;
    for (int k = 3; k < 6; k++)
        if (!PyDict_CheckExact(PyList_GET_ITEM(entry, k)))
            return NULL;
    return entry;
}

static PyObject *
tally_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("tally_run", nargs, 4) < 0)
        return NULL;
    PyObject *views = args[0], *tallies = args[2];
    PyTypeObject *pv_type = (PyTypeObject *)args[3];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (!run_shape(views, tallies, (PyObject *)pv_type) || i < 0)
        return PyLong_FromSsize_t(i < 0 ? 0 : i); /* nothing done: Python decides */
    for (;; i++) {
        PyObject *view = run_view(views, i, pv_type);
        if (view == NULL)
            break;
        PyObject **f = &PyTuple_GET_ITEM(view, 0);
        if (!text_or_none(f[1], 0) || !text_or_none(f[2], 1) || !text_or_none(f[4], 0) ||
            !text_or_none(f[5], 1) || !text_or_none(f[6], 1) ||
            (f[10] != Py_True && f[10] != Py_False))
            break;
        /* Held, with the tally and its dicts, until the view is counted: a key the
         * dicts already hold may be of a kind whose __eq__ runs code (as may the
         * collector, on an allocation), and that code could drop any of them. */
        Py_INCREF(view);
        f = &PyTuple_GET_ITEM(view, 0);
        PyObject *entry = tally_of(tallies, f[1]);
        if (entry == NULL) {
            Py_DECREF(view);
            if (PyErr_Occurred())
                return NULL;
            break; /* not a tally's shape: nothing counted, Python decides */
        }
        PyObject *held[4] = {entry, PyList_GET_ITEM(entry, 3), PyList_GET_ITEM(entry, 4),
                             PyList_GET_ITEM(entry, 5)};
        for (int k = 0; k < 4; k++)
            Py_INCREF(held[k]);
        int failed;
        if (f[10] == Py_True)
            failed = plus_one(entry, NULL, 0) < 0;
        else {
            failed = plus_one(entry, NULL, 1) < 0 ||
                     (f[2] == Py_None && plus_one(entry, NULL, 2) < 0) ||
                     plus_one(held[1], f[4], 0) < 0 ||
                     (f[5] != Py_None && PyUnicode_GET_LENGTH(f[5]) > 0 &&
                      plus_one(held[2], f[5], 0) < 0) ||
                     (f[6] != Py_None && PyUnicode_GET_LENGTH(f[6]) > 0 &&
                      plus_one(held[3], f[6], 0) < 0);
        }
        for (int k = 0; k < 4; k++)
            Py_DECREF(held[k]);
        Py_DECREF(view);
        if (failed)
            return NULL;
    }
    return PyLong_FromSsize_t(i);
}

/* -- the SQLite store's JSON of a group's page views -------------------------------- */

PyDoc_STRVAR(views_json_doc,
"views_json(views, quote, quoted, /)\n--\n\n"
"What json.dumps(views) writes (with its default separators) for a list of exact\n"
"ints, exact strs and None, as trackmw.stores.sqlite_pageviews.group makes them: each\n"
"int as its repr, None as null, each str as quote(text) (the json module's\n"
"encode_basestring_ascii), kept in the dict quoted so that a text the batch repeats\n"
"(a page, a referrer) is quoted once. None when views holds anything else, or a\n"
"quoted text is not ASCII: the caller then asks json.");

/* A growing ASCII buffer. */
typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int
buffer_add(Buffer *b, const char *text, Py_ssize_t size)
{
    if (size == 0)
        return 0; /* (memcpy to a buffer not yet allocated is undefined, even of nothing) */
    if (b->size + size > b->capacity) {
        Py_ssize_t capacity = (b->size + size) * 2;
        char *data = PyMem_Realloc(b->data, capacity);
        if (data == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = data;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, text, size);
    b->size += size;
    return 0;
}

/* Writes `value` in decimal, as str(value) writes it, to end at `end` (24 bytes
 * before it are enough); where it starts. */
static char *
decimal(long long value, char *end)
{
    char *at = end;
    unsigned long long n = value < 0 ? -(unsigned long long)value : (unsigned long long)value;
    do
        *--at = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    if (value < 0)
        *--at = '-';
    return at;
}

/* Adds `value` in decimal. */
static int
buffer_decimal(Buffer *b, long long value)
{
    char digits[24], *end = digits + sizeof digits, *at = decimal(value, end);
    return buffer_add(b, at, end - at);
}

/* The buffer's text as a str (it is ASCII): a new reference, or NULL. */
static PyObject *
buffer_text(const Buffer *b)
{
    PyObject *text = PyUnicode_New(b->size, 127);
    if (text != NULL && b->size > 0)
        memcpy(PyUnicode_1BYTE_DATA(text), b->data, b->size);
    return text;
}

/* Adds quote(text) for an exact str `text`, kept in the dict `quoted`: 0, 1 when what
 * quote gives is not an ASCII str (nothing added), -1 on error. */
static int
buffer_quoted(Buffer *b, PyObject *item, PyObject *quote, PyObject *quoted)
{
    PyObject *text = PyDict_GetItemWithError(quoted, item);
    if (text != NULL && PyUnicode_CheckExact(text) && PyUnicode_IS_ASCII(text))
        return buffer_add(b, (const char *)PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text));
    if (text == NULL && PyErr_Occurred())
        return -1;
    text = PyObject_CallOneArg(quote, item);
    if (text == NULL)
        return -1;
    int result = 1; /* not an ASCII str: the caller decides */
    if (PyUnicode_CheckExact(text) && PyUnicode_IS_ASCII(text)) {
        result = PyDict_SetItem(quoted, item, text);
        if (result == 0)
            result = buffer_add(b, (const char *)PyUnicode_1BYTE_DATA(text),
                                PyUnicode_GET_LENGTH(text));
    }
    Py_DECREF(text);
    return result;
}

/* Adds an ASCII str's text: 0, 1 when it is not one, -1 on error. */
static int
buffer_ascii(Buffer *b, PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return 1;
    return buffer_add(b, (const char *)PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text));
}

/* Adds one item's JSON: 0, 1 when the item is not the common case, -1 on error. */
static int
view_json(Buffer *b, PyObject *item, PyObject *quote, PyObject *quoted)
{
    if (item == Py_None)
        return buffer_add(b, "null", 4);
    if (PyLong_CheckExact(item)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (value == -1 && PyErr_Occurred())
            return -1;
        if (overflow)
            return 1; /* json writes it (no page view's time is that large) */
        return buffer_decimal(b, value);
    }
    if (!PyUnicode_CheckExact(item))
        return 1;
    return buffer_quoted(b, item, quote, quoted);
}

static PyObject *
views_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("views_json", nargs, 3) < 0)
        return NULL;
    PyObject *views = args[0], *quote = args[1], *quoted = args[2];
    if (!PyList_CheckExact(views) || !PyDict_CheckExact(quoted))
        Py_RETURN_NONE;
    Buffer b = {NULL, 0, 0};
    int result = buffer_add(&b, "[", 1);
    /* The list is read again at each step: quote may be Python code that changes it. */
    for (Py_ssize_t i = 0; result == 0 && i < PyList_GET_SIZE(views); i++) {
        PyObject *item = PyList_GET_ITEM(views, i);
        Py_INCREF(item);
        if (i > 0)
            result = buffer_add(&b, ", ", 2);
        if (result == 0)
            result = view_json(&b, item, quote, quoted);
        Py_DECREF(item);
    }
    if (result == 0)
        result = buffer_add(&b, "]", 1);
    PyObject *json = result == 0 ? buffer_text(&b) : NULL;
    PyMem_Free(b.data);
    if (result > 0)
        Py_RETURN_NONE; /* not the common case: nothing done */
    return json;
}

/* -- the Redis store's plan ---------------------------------------------------------- */

PyDoc_STRVAR(plan_run_doc,
"plan_run(pageviews, start, day, lists, pageview_type, quote, quoted, /)\n--\n\n"
"trackmw.stores.redis_plan.plan's loop over pageviews[start:] (a list or a tuple), for\n"
"its common case: a page view of exactly pageview_type, of the day (an exact str) of\n"
"day, the loop's _Day, whose time is a float under 1e15 in size, whose path is a str,\n"
"visitor, user, referrer, campaign and browser class str or None, and bot a bool. Adds\n"
"each such view to day (a new visit as day.visit(key, lists) adds it) and lists (an\n"
"exact dict) as the loop does, texts written as quote (json's encode_basestring_ascii)\n"
"writes them, kept in the dict quoted; returns the index of the first view it leaves\n"
"to Python: len(pageviews) if none, start if day or lists are not as the loop makes\n"
"them (nothing done). An error raises, as tally_run's do: what was added of a view is\n"
"not undone, and the caller's plan is to be thrown away.");

static PyObject *str_day, *str_paths, *str_refs, *str_visits, *str_members, *str_bots,
    *str_r_colon, *str_c_colon;

/* Adds "," and each of `n` texts `f` (exact strs or None) as JSON: quoted, or null.
 * 0, 1 when a quoted text is not ASCII, -1 on error. */
static int
buffer_fields(Buffer *b, PyObject *const *f, int n, PyObject *quote, PyObject *quoted)
{
    int result = 0;
    for (int k = 0; k < n && result == 0; k++) {
        result = buffer_add(b, ",", 1);
        if (result == 0)
            result = f[k] == Py_None ? buffer_add(b, "null", 4)
                                     : buffer_quoted(b, f[k], quote, quoted);
    }
    return result;
}

/* The texts of a new visit (fields `f`) of the day `day`, as _Day.visit writes them:
 * ',"DAY",USER,' (*head) and ',BROWSER,OS,DEVICE]' (*tail), made in `b`. 0, 1 when a
 * quoted text is not ASCII (nothing made), -1 on error. */
static int
visit_texts(PyObject *const *f, PyObject *day, PyObject *quote, PyObject *quoted, Buffer *b,
            PyObject **head, PyObject **tail)
{
    PyObject *user[2] = {day, f[3]};
    b->size = 0;
    int result = buffer_fields(b, user, 2, quote, quoted);
    if (result == 0)
        result = buffer_add(b, ",", 1);
    if (result != 0 || (*head = buffer_text(b)) == NULL)
        return result != 0 ? result : -1;
    b->size = 0;
    result = buffer_fields(b, f + 7, 3, quote, quoted);
    if (result == 0)
        result = buffer_add(b, "]", 1);
    if (result != 0 || (*tail = buffer_text(b)) == NULL) {
        Py_CLEAR(*head);
        return result != 0 ? result : -1;
    }
    return 0;
}

/* A new visit's record [entries, head, tail], its entries added to lists[visitor] (a
 * list made when missing) and the record to `visits` under `key`: a new reference, or
 * NULL on error. */
static PyObject *
add_visit(PyObject *visits, PyObject *key, PyObject *visitor, PyObject *lists, PyObject *head,
          PyObject *tail)
{
    PyObject *entries = PyList_New(0), *fresh = PyList_New(0), *rec = NULL;
    PyObject *groups = entries == NULL || fresh == NULL ? NULL
                                                        : PyDict_SetDefault(lists, visitor, fresh);
    Py_XINCREF(groups); /* held: appending may not run code, but a dict may change */
    if (groups != NULL && !PyList_CheckExact(groups))
        PyErr_SetString(PyExc_TypeError, "plan_run: a visitor's groups are not a list");
    else if (groups != NULL && PyList_Append(groups, entries) == 0 &&
             (rec = PyList_New(3)) != NULL) {
        PyObject *items[3] = {entries, head, tail};
        for (int k = 0; k < 3; k++) {
            Py_INCREF(items[k]);
            PyList_SET_ITEM(rec, k, items[k]);
        }
        if (PyDict_SetItem(visits, key, rec) < 0)
            Py_CLEAR(rec);
    }
    Py_XDECREF(groups);
    Py_XDECREF(fresh);
    Py_XDECREF(entries);
    return rec; /* a new reference: a value visits replaced may run code that drops it */
}

/* Adds `prefix` + `text` to the list `refs`. */
static int
append_named(PyObject *refs, PyObject *prefix, PyObject *text)
{
    PyObject *name = PyUnicode_Concat(prefix, text);
    int result = name == NULL ? -1 : PyList_Append(refs, name);
    Py_XDECREF(name);
    return result;
}

/* Adds `visitor` to the page's visitors, members[page]: a set, made when missing. */
static int
add_member(PyObject *members, PyObject *page, PyObject *visitor)
{
    PyObject *seen = PyDict_GetItemWithError(members, page);
    if (seen != NULL) {
        if (!PySet_CheckExact(seen)) {
            PyErr_SetString(PyExc_TypeError, "plan_run: a page's visitors are not a set");
            return -1;
        }
        Py_INCREF(seen); /* held: adding may run an element's __eq__, which may drop it */
        int added = PySet_Add(seen, visitor);
        Py_DECREF(seen);
        return added;
    }
    if (PyErr_Occurred())
        return -1;
    PyObject *one = PySet_New(NULL);
    int result = one == NULL ? -1 : PySet_Add(one, visitor);
    if (result == 0)
        result = PyDict_SetItem(members, page, one);
    Py_XDECREF(one);
    return result;
}

/* One view of the common case (fields `f`, checked) added to the day (`into`: its day,
 * paths, refs, visits, members) and `lists`, with two scratch buffers. 0, 1 when a
 * quoted text is not ASCII (nothing added), -1 on error. */
static int
plan_view(PyObject *const *f, PyObject *const *into, PyObject *lists, PyObject *quote,
          PyObject *quoted, Buffer *b, Buffer *entry)
{
    PyObject *visits = into[3], *key = NULL, *rec = NULL, *head = NULL, *tail = NULL;
    /* First what may leave the view to Python, with nothing added: its texts. */
    b->size = 0;
    int result = buffer_quoted(b, f[4], quote, quoted);
    if (result == 0)
        result = buffer_fields(b, f + 5, 2, quote, quoted); /* path, referrer, campaign */
    if (result == 0 && f[2] != Py_None) {
        key = PyTuple_Pack(5, f[2], f[7], f[8], f[9], f[3]); /* visitor, classes, user */
        rec = key == NULL ? NULL : PyDict_GetItemWithError(visits, key);
        if (rec != NULL)
            Py_INCREF(rec);
        else if (key == NULL || PyErr_Occurred())
            result = -1;
        else
            result = visit_texts(f, into[0], quote, quoted, entry, &head, &tail);
    }
    if (result == 0 && (PyList_Append(into[1], f[4]) < 0 ||
                        (f[5] != Py_None && append_named(into[2], str_r_colon, f[5]) < 0) ||
                        (f[6] != Py_None && append_named(into[2], str_c_colon, f[6]) < 0)))
        result = -1;
    if (result == 0 && rec == NULL && key != NULL) {
        rec = add_visit(visits, key, f[2], lists, head, tail);
        result = rec == NULL ? -1 : 0;
    }
    if (result == 0 && rec != NULL) { /* the entry: ["p",SECONDS + head + texts + tail */
        if (!(PyList_CheckExact(rec) && PyList_GET_SIZE(rec) >= 3 &&
              PyList_CheckExact(PyList_GET_ITEM(rec, 0)))) {
            PyErr_SetString(PyExc_TypeError, "plan_run: a visit is not [entries, head, tail]");
            result = -1;
        }
        entry->size = 0;
        if (result == 0)
            result = buffer_add(entry, "[\"p\",", 5);
        if (result == 0) /* int(ts): |ts| < 1e15, checked */
            result = buffer_decimal(entry, (long long)PyFloat_AS_DOUBLE(f[0]));
        if (result == 0)
            result = buffer_ascii(entry, PyList_GET_ITEM(rec, 1));
        if (result == 0)
            result = buffer_add(entry, b->data, b->size);
        if (result == 0)
            result = buffer_ascii(entry, PyList_GET_ITEM(rec, 2));
        if (result > 0) {
            PyErr_SetString(PyExc_TypeError, "plan_run: a visit's texts are not ASCII strs");
            result = -1;
        }
        PyObject *text = result == 0 ? buffer_text(entry) : NULL;
        if (text == NULL || PyList_Append(PyList_GET_ITEM(rec, 0), text) < 0 ||
            add_member(into[4], f[4], f[2]) < 0)
            result = -1;
        Py_XDECREF(text);
    }
    Py_XDECREF(rec);
    Py_XDECREF(key);
    Py_XDECREF(head);
    Py_XDECREF(tail);
    return result;
}

static PyObject *
plan_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("plan_run", nargs, 7) < 0)
        return NULL;
    PyObject *views = args[0], *day = args[2], *lists = args[3], *quote = args[5],
             *quoted = args[6];
    PyTypeObject *pv_type = (PyTypeObject *)args[4];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (!run_shape(views, lists, args[4]) || !PyDict_CheckExact(quoted) || i < 0)
        return PyLong_FromSsize_t(i < 0 ? 0 : i); /* nothing done: Python decides */
    /* The day's text and containers, held: a key's lookup may run code (none of the
     * common case's keys does, but the dicts may hold others). */
    PyObject *names[5] = {str_day, str_paths, str_refs, str_visits, str_members};
    PyObject *into[5] = {NULL, NULL, NULL, NULL, NULL};
    int ok = 1;
    for (int k = 0; k < 5 && ok; k++)
        ok = (into[k] = PyObject_GetAttr(day, names[k])) != NULL;
    if (!ok || !(PyUnicode_CheckExact(into[0]) && PyList_CheckExact(into[1]) &&
                 PyList_CheckExact(into[2]) && PyDict_CheckExact(into[3]) &&
                 PyDict_CheckExact(into[4]))) { /* not a day as the loop makes them */
        for (int k = 0; k < 5; k++)
            Py_XDECREF(into[k]);
        return run_end(i); /* nothing done: Python decides */
    }
    long long bots = 0;
    Buffer b = {NULL, 0, 0}, entry = {NULL, 0, 0};
    for (; ok; i++) {
        PyObject *view = run_view(views, i, pv_type);
        if (view == NULL)
            break;
        PyObject **f = &PyTuple_GET_ITEM(view, 0);
        if (!PyUnicode_CheckExact(f[1]) ||
            (f[1] != into[0] && PyUnicode_Compare(f[1], into[0]) != 0) || !PyBool_Check(f[10]))
            break; /* another day (or not a str), or not a bool */
        if (f[10] == Py_True) {
            bots++;
            continue;
        }
        if (!PyFloat_CheckExact(f[0]) || !(fabs(PyFloat_AS_DOUBLE(f[0])) < 1e15) ||
            !text_or_none(f[2], 1) || !text_or_none(f[3], 1) || !text_or_none(f[4], 0) ||
            !text_or_none(f[5], 1) || !text_or_none(f[6], 1) || !text_or_none(f[7], 1) ||
            !text_or_none(f[8], 1) || !text_or_none(f[9], 1))
            break;
        Py_INCREF(view); /* held: a lookup may run code that drops it from the list */
        int result = plan_view(&PyTuple_GET_ITEM(view, 0), into, lists, quote, quoted, &b, &entry);
        Py_DECREF(view);
        if (result != 0) {
            ok = result > 0; /* 1: a text json writes otherwise, left to Python */
            break;
        }
    }
    PyMem_Free(b.data);
    PyMem_Free(entry.data);
    if (ok && bots > 0) { /* day.bots += bots */
        PyObject *before = PyObject_GetAttr(day, str_bots);
        PyObject *added = before == NULL ? NULL : PyLong_FromLongLong(bots);
        PyObject *after = added == NULL ? NULL : PyNumber_Add(before, added);
        ok = after != NULL && PyObject_SetAttr(day, str_bots, after) == 0;
        Py_XDECREF(before);
        Py_XDECREF(added);
        Py_XDECREF(after);
    }
    for (int k = 0; k < 5; k++)
        Py_XDECREF(into[k]);
    return ok ? PyLong_FromSsize_t(i) : NULL;
}

/* -- PostgreSQL's binary formats (the PostgreSQL store's COPY and rollup arrays) ------ */

/* Adds `value` as 4 bytes, most significant first (PostgreSQL's network order). */
static int
buffer_be32(Buffer *b, uint32_t value)
{
    char bytes[4] = {(char)(value >> 24), (char)(value >> 16), (char)(value >> 8), (char)value};
    return buffer_add(b, bytes, 4);
}

/* Adds `value` as 8 bytes, most significant first. */
static int
buffer_be64(Buffer *b, uint64_t value)
{
    return buffer_be32(b, (uint32_t)(value >> 32)) < 0 ? -1 : buffer_be32(b, (uint32_t)value);
}

/* Adds a NULL field. Binary COPY rows and binary arrays give a field as its length,
 * then its bytes, and NULL as the length -1 alone. */
static int
pg_null(Buffer *b)
{
    return buffer_be32(b, 0xFFFFFFFFu);
}

/* Adds a text field: an exact str's UTF-8, or NULL for None (`*nulls` set). 0, 1 when
 * `item` is anything else or has no UTF-8 form (nothing added), -1 on error. */
static int
pg_text(Buffer *b, PyObject *item, int *nulls)
{
    if (item == Py_None) {
        *nulls = 1;
        return pg_null(b);
    }
    if (!PyUnicode_CheckExact(item))
        return 1;
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(item, &size);
    if (utf8 == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear(); /* a lone surrogate: the driver says what is wrong with it */
        return 1;
    }
    if (size > INT32_MAX)
        return 1;
    return buffer_be32(b, (uint32_t)size) < 0 || buffer_add(b, utf8, size) < 0 ? -1 : 0;
}

/* Are all of `days`' keys exact str? Then looking a str up in it runs no Python code. */
static int
str_keys(PyObject *days)
{
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(days, &at, &key, &value))
        if (!PyUnicode_CheckExact(key))
            return 0;
    return 1;
}

/* Adds a date field: the day text `item` (an exact str) looked up in `days` (its
 * PostgreSQL day number, days since 2000-01-01, an exact int). 0, 1 when it is not
 * there or not such (nothing added), -1 on error. */
static int
pg_date(Buffer *b, PyObject *item, PyObject *days)
{
    if (!PyUnicode_CheckExact(item))
        return 1;
    PyObject *number = PyDict_GetItemWithError(days, item);
    if (number == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (!PyLong_CheckExact(number))
        return 1;
    int overflow;
    long value = PyLong_AsLongAndOverflow(number, &overflow);
    if (overflow || value < INT32_MIN || value > INT32_MAX)
        return 1;
    return buffer_be32(b, 4) < 0 || buffer_be32(b, (uint32_t)(int32_t)value) < 0 ? -1 : 0;
}

/* Adds a bigint field: an exact int that fits. 0, 1 for anything else, -1 on error. */
static int
pg_bigint(Buffer *b, PyObject *item)
{
    if (!PyLong_CheckExact(item))
        return 1;
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow)
        return 1;
    if (value == -1 && PyErr_Occurred())
        return -1;
    return buffer_be32(b, 8) < 0 || buffer_be64(b, (uint64_t)value) < 0 ? -1 : 0;
}

PyDoc_STRVAR(copy_pageviews_doc,
"copy_pageviews(views, pageview_type, days, /)\n--\n\n"
"The whole of a binary COPY of views into the PostgreSQL store's pageviews (ts float8,\n"
"day date, eight texts, bot bool), as bytes: PostgreSQL's signature, a row a page view,\n"
"the trailer. views is an exact list or tuple of exact pageview_type tuples; days maps\n"
"each view's day text to its PostgreSQL day number (days since 2000-01-01). None when a\n"
"view is anything else (a time that is not a float, a text that is not a str or has no\n"
"UTF-8 form, a day not in days): the caller then copies through the driver, row by row.\n"
"The texts go as UTF-8, so only for a connection whose client encoding is UTF8.");

static PyObject *
copy_pageviews(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("copy_pageviews", nargs, 3) < 0)
        return NULL;
    PyObject *views = args[0], *days = args[2];
    if (!run_shape(views, days, args[1]) || !str_keys(days))
        Py_RETURN_NONE;
    PyTypeObject *type = (PyTypeObject *)args[1];
    static const char signature[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
    Buffer b = {NULL, 0, 0};
    int status = buffer_add(&b, signature, sizeof signature - 1); /* 11 + flags + extension */
    int nulls = 0;
    /* Nothing below runs Python code (exact types; days' keys are compared as str), so
     * the borrowed items stay alive. */
    for (Py_ssize_t i = 0; status == 0; i++) {
        PyObject *view = run_item(views, i);
        if (view == NULL)
            break;
        if (Py_TYPE(view) != type || PyTuple_GET_SIZE(view) != 11) {
            status = 1;
            break;
        }
        PyObject *const *f = &PyTuple_GET_ITEM(view, 0);
        if (!PyFloat_CheckExact(f[0]) || (f[10] != Py_True && f[10] != Py_False)) {
            status = 1;
            break;
        }
        double ts = PyFloat_AS_DOUBLE(f[0]);
        uint64_t bits;
        memcpy(&bits, &ts, sizeof bits);
        char fields[2] = {0, 11};
        status = buffer_add(&b, fields, 2) < 0 || buffer_be32(&b, 8) < 0 ||
                         buffer_be64(&b, bits) < 0
                     ? -1
                     : pg_date(&b, f[1], days);
        for (int k = 2; k < 10 && status == 0; k++)
            status = pg_text(&b, f[k], &nulls);
        if (status == 0)
            status = buffer_be32(&b, 1) < 0 || buffer_add(&b, f[10] == Py_True ? "\1" : "\0", 1) < 0
                         ? -1
                         : 0;
    }
    PyObject *result = NULL;
    if (status == 0 && buffer_add(&b, "\377\377", 2) == 0)
        result = PyBytes_FromStringAndSize(b.data, b.size);
    else if (status == 1) {
        result = Py_None;
        Py_INCREF(result);
    }
    PyMem_Free(b.data);
    return result;
}

PyDoc_STRVAR(pg_columns_doc,
"pg_columns(rows, types, days, /)\n--\n\n"
"The columns of rows as PostgreSQL binary one-dimensional arrays (bytes), one for each\n"
"letter of types: d a date (a day text, looked up in days as copy_pageviews does), t a\n"
"text (a str, or None for NULL), i a bigint (an int). rows is a dict: a row is its key\n"
"(an exact tuple) followed by its value, an int, or an exact list's items. None when a\n"
"row is anything else, or has another number of fields: the caller then sends lists.");

#define PG_COLUMNS 16

static PyObject *
pg_columns(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("pg_columns", nargs, 3) < 0)
        return NULL;
    PyObject *rows = args[0], *types = args[1], *days = args[2];
    if (!PyDict_Check(rows) || !PyUnicode_CheckExact(types) || !PyUnicode_IS_ASCII(types) ||
        !PyDict_CheckExact(days) || !str_keys(days))
        Py_RETURN_NONE;
    Py_ssize_t columns = PyUnicode_GET_LENGTH(types), count = PyDict_GET_SIZE(rows);
    const char *letters = (const char *)PyUnicode_1BYTE_DATA(types);
    if (columns < 1 || columns > PG_COLUMNS || count > INT32_MAX)
        Py_RETURN_NONE;
    for (Py_ssize_t c = 0; c < columns; c++)
        if (letters[c] != 'd' && letters[c] != 't' && letters[c] != 'i')
            Py_RETURN_NONE;
    Buffer data[PG_COLUMNS] = {{NULL, 0, 0}};
    int nulls[PG_COLUMNS] = {0};
    int status = 0;
    Py_ssize_t at = 0;
    PyObject *key, *value;
    /* As in copy_pageviews, nothing in the loop runs Python code. */
    while (status == 0 && PyDict_Next(rows, &at, &key, &value)) {
        if (!PyTuple_CheckExact(key)) {
            status = 1;
            break;
        }
        Py_ssize_t keys = PyTuple_GET_SIZE(key);
        Py_ssize_t more = PyList_CheckExact(value) ? PyList_GET_SIZE(value) : 1;
        if (keys + more != columns || (more == 1 && !PyList_CheckExact(value) &&
                                       !PyLong_CheckExact(value))) {
            status = 1;
            break;
        }
        for (Py_ssize_t c = 0; c < columns && status == 0; c++) {
            PyObject *item = c < keys ? PyTuple_GET_ITEM(key, c)
                             : PyList_CheckExact(value) ? PyList_GET_ITEM(value, c - keys)
                                                        : value;
            status = letters[c] == 'd'   ? pg_date(&data[c], item, days)
                     : letters[c] == 't' ? pg_text(&data[c], item, &nulls[c])
                                         : pg_bigint(&data[c], item);
        }
    }
    PyObject *result = NULL;
    if (status == 0)
        result = PyList_New(columns);
    for (Py_ssize_t c = 0; result != NULL && c < columns; c++) {
        /* ndim, has NULLs, element type, then (one dimension) its length and lower bound */
        uint32_t element = letters[c] == 'd' ? 1082 : letters[c] == 't' ? 25 : 20;
        Buffer head = {NULL, 0, 0};
        int failed = buffer_be32(&head, count > 0) < 0 || buffer_be32(&head, nulls[c]) < 0 ||
                     buffer_be32(&head, element) < 0 ||
                     (count > 0 && (buffer_be32(&head, (uint32_t)count) < 0 ||
                                    buffer_be32(&head, 1) < 0)) ||
                     buffer_add(&head, data[c].data, data[c].size) < 0;
        PyObject *array = failed ? NULL : PyBytes_FromStringAndSize(head.data, head.size);
        PyMem_Free(head.data);
        if (array == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, c, array);
    }
    if (status == 1) {
        result = Py_None;
        Py_INCREF(result);
    }
    for (Py_ssize_t c = 0; c < columns; c++)
        PyMem_Free(data[c].data);
    return result;
}

/* -- a new visitor's token ------------------------------------------------------- */

static PyObject *str_copy, *str_update, *str_digest;

/* base64url without padding, as itsdangerous writes it: the length for n bytes (as a
 * uint64_t: for the largest n it is more than a Py_ssize_t holds) */
static uint64_t
base64url_size(Py_ssize_t n)
{
    uint64_t u = (uint64_t)n;
    return u / 3 * 4 + (u % 3 ? u % 3 + 1 : 0);
}

static char *
base64url_write(char *out, const unsigned char *in, Py_ssize_t n)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    /* each 3 bytes as 4 characters; the last 1 or 2 bytes as 2 or 3 (no padding) */
    for (Py_ssize_t i = 0; i < n; i += 3) {
        Py_ssize_t left = n - i < 3 ? n - i : 3;
        uint32_t v = (uint32_t)in[i] << 16 | (left > 1 ? (uint32_t)in[i + 1] << 8 : 0) |
                     (left > 2 ? in[i + 2] : 0);
        for (Py_ssize_t k = 0; k <= left; k++)
            *out++ = alphabet[v >> (18 - 6 * k) & 63];
    }
    return out;
}

#ifdef TRACKMW_OPENSSL
/* A key's HMAC as OpenSSL hash states (built when setup.py finds OpenSSL's libcrypto):
 * the keyed inner and outer states, and a state to work in. Copying one is a copy of
 * a few words where a hashlib object's copy() makes a Python object: a token costs
 * about a third of what it costs through hmac's states (0.20 against 0.54 us). */
#include <openssl/err.h>
#include <openssl/evp.h>

#define HMAC_KEY_CAPSULE "trackmw._speedups.hmac_key"

typedef struct {
    EVP_MD_CTX *inner, *outer, *work;
} HMACKey;

static void
hmac_key_free(HMACKey *key)
{
    EVP_MD_CTX_free(key->inner);
    EVP_MD_CTX_free(key->outer);
    EVP_MD_CTX_free(key->work);
    PyMem_Free(key);
}

static void
hmac_key_destroy(PyObject *capsule)
{
    hmac_key_free(PyCapsule_GetPointer(capsule, HMAC_KEY_CAPSULE));
}

/* The HMAC of value (n bytes) into mac (EVP_MAX_MD_SIZE bytes): its size, or -1 with
 * an exception set. */
static int
hmac_key_mac(HMACKey *key, const char *value, Py_ssize_t n, unsigned char *mac)
{
    unsigned int size = 0;
    if (!EVP_MD_CTX_copy_ex(key->work, key->inner) || !EVP_DigestUpdate(key->work, value, n) ||
        !EVP_DigestFinal_ex(key->work, mac, &size) ||
        !EVP_MD_CTX_copy_ex(key->work, key->outer) || !EVP_DigestUpdate(key->work, mac, size) ||
        !EVP_DigestFinal_ex(key->work, mac, &size)) {
        ERR_clear_error(); /* OpenSSL's reason, which no later caller must find */
        PyErr_SetString(PyExc_RuntimeError, "trackmw: OpenSSL could not compute an HMAC");
        return -1;
    }
    return (int)size;
}
#endif

PyDoc_STRVAR(hmac_key_doc,
"hmac_key(name, key, /)\n--\n\n"
"The HMAC of key over the hash OpenSSL knows as name (\"sha1\", \"sha256\", ...), set up\n"
"once, for sign_token and sign_ids to sign with in place of a MAC's inner and outer\n"
"states; None when this build has no OpenSSL or OpenSSL does not know the hash (the\n"
"caller then passes the states). Its MAC is hmac.new(key, value, name).digest().");

static PyObject *
hmac_key(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("hmac_key", nargs, 2) < 0)
        return NULL;
    if (!PyUnicode_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hmac_key() takes a str and bytes");
        return NULL;
    }
    Py_ssize_t length;
    const char *name = PyUnicode_AsUTF8AndSize(args[0], &length);
    if (name == NULL)
        return NULL;
    if ((size_t)length != strlen(name)) /* a NUL inside: no hash's name */
        Py_RETURN_NONE;
#ifdef TRACKMW_OPENSSL
    const EVP_MD *md = EVP_get_digestbyname(name);
    int block = md == NULL ? 0 : EVP_MD_block_size(md);
    /* Every hash hmac keys by one block's pads (sha1 to sha512); any other is left to it. */
    if (block <= 0 || block > 256 || EVP_MD_size(md) > EVP_MAX_MD_SIZE)
        Py_RETURN_NONE;
    HMACKey *key = PyMem_Calloc(1, sizeof(HMACKey));
    if (key == NULL)
        return PyErr_NoMemory();
    key->inner = EVP_MD_CTX_new();
    key->outer = EVP_MD_CTX_new();
    key->work = EVP_MD_CTX_new();
    /* As RFC 2104 and the hmac module: a key longer than a block is hashed first, then
     * zero-padded to a block; the inner state has hashed it XOR 0x36, the outer XOR 0x5c. */
    unsigned char padded[256] = {0}, pad[256];
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
    unsigned int hashed = 0;
    int ok = key->inner != NULL && key->outer != NULL && key->work != NULL;
    if (ok && n > block)
        ok = EVP_DigestInit_ex(key->work, md, NULL) && EVP_DigestUpdate(key->work, raw, n) &&
             EVP_DigestFinal_ex(key->work, padded, &hashed);
    else if (ok)
        memcpy(padded, raw, n);
    for (int i = 0; ok && i < block; i++)
        pad[i] = padded[i] ^ 0x36;
    ok = ok && EVP_DigestInit_ex(key->inner, md, NULL) && EVP_DigestUpdate(key->inner, pad, block);
    for (int i = 0; ok && i < block; i++)
        pad[i] = padded[i] ^ 0x5c;
    ok = ok && EVP_DigestInit_ex(key->outer, md, NULL) && EVP_DigestUpdate(key->outer, pad, block);
    if (!ok) { /* out of memory, or a hash this OpenSSL refuses to use (FIPS): leave it */
        ERR_clear_error();
        hmac_key_free(key);
        Py_RETURN_NONE;
    }
    PyObject *capsule = PyCapsule_New(key, HMAC_KEY_CAPSULE, hmac_key_destroy);
    if (capsule == NULL)
        hmac_key_free(key);
    return capsule;
#else
    Py_RETURN_NONE;
#endif
}

/* state.copy(), updated with data: its digest() (a new reference to bytes), or NULL */
static PyObject *
digest_after(PyObject *state, PyObject *data)
{
    PyObject *copy = PyObject_CallMethodNoArgs(state, str_copy);
    if (copy == NULL)
        return NULL;
    PyObject *digest = NULL, *done = PyObject_CallMethodOneArg(copy, str_update, data);
    if (done != NULL) {
        Py_DECREF(done);
        digest = PyObject_CallMethodNoArgs(copy, str_digest);
    }
    Py_DECREF(copy);
    if (digest != NULL && !PyBytes_Check(digest)) {
        PyErr_SetString(PyExc_TypeError, "trackmw: a MAC's digest() did not return bytes");
        Py_CLEAR(digest);
    }
    return digest;
}

/* Is `bytes` exact bytes, all ASCII? (A token's stamp and separator must be.) */
static int
ascii_bytes(PyObject *bytes)
{
    if (!PyBytes_CheckExact(bytes))
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(bytes);
    for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(bytes); i++)
        if (p[i] > 127)
            return 0;
    return 1;
}

/* The token for a payload's text (n bytes at text): base64url(text) + stamp, sep, and the
 * base64url MAC (inner, outer: as sign_token takes them) of what comes before it. stamp
 * and sep: ASCII bytes. A new reference to a str, or NULL. */
static PyObject *
make_token(PyObject *inner, PyObject *outer, const char *text, Py_ssize_t n, PyObject *stamp,
           PyObject *sep)
{
    Py_ssize_t n_stamp = PyBytes_GET_SIZE(stamp);
    uint64_t value_size = base64url_size(n) + (uint64_t)n_stamp;
    if (value_size > (uint64_t)PY_SSIZE_T_MAX)
        return PyErr_NoMemory();
    Py_ssize_t n_value = (Py_ssize_t)value_size;
    PyObject *value = PyBytes_FromStringAndSize(NULL, n_value);
    if (value == NULL)
        return NULL;
    char *end = base64url_write(PyBytes_AS_STRING(value), (const unsigned char *)text, n);
    memcpy(end, PyBytes_AS_STRING(stamp), n_stamp);
    PyObject *mac;
#ifdef TRACKMW_OPENSSL
    if (PyCapsule_IsValid(inner, HMAC_KEY_CAPSULE)) {
        unsigned char raw[EVP_MAX_MD_SIZE];
        int size = hmac_key_mac(PyCapsule_GetPointer(inner, HMAC_KEY_CAPSULE),
                                PyBytes_AS_STRING(value), n_value, raw);
        mac = size < 0 ? NULL : PyBytes_FromStringAndSize((const char *)raw, size);
    }
    else
#endif
    {
        mac = digest_after(inner, value);
        if (mac != NULL && outer != Py_None)
            Py_SETREF(mac, digest_after(outer, mac));
    }
    PyObject *token = NULL;
    if (mac != NULL) {
        Py_ssize_t n_sep = PyBytes_GET_SIZE(sep), n_mac = PyBytes_GET_SIZE(mac);
        uint64_t size = (uint64_t)n_value + (uint64_t)n_sep + base64url_size(n_mac);
        token = size > (uint64_t)PY_SSIZE_T_MAX ? PyErr_NoMemory()
                                                : PyUnicode_New((Py_ssize_t)size, 127);
        if (token != NULL) {
            char *out = (char *)PyUnicode_1BYTE_DATA(token);
            memcpy(out, PyBytes_AS_STRING(value), n_value);
            memcpy(out + n_value, PyBytes_AS_STRING(sep), n_sep);
            base64url_write(out + n_value + n_sep, (const unsigned char *)PyBytes_AS_STRING(mac),
                            n_mac);
        }
        Py_DECREF(mac);
    }
    Py_DECREF(value);
    return token;
}

PyDoc_STRVAR(sign_token_doc,
"sign_token(inner, outer, text, stamp, sep, /)\n--\n\n"
"CookieSigner._signed's token, in one call: base64url(text) + stamp, then sep and the\n"
"base64url HMAC of what came before it, as a str. inner and outer: the HMAC's keyed\n"
"inner and outer hash states, each copied, never changed (the MAC is\n"
"outer(inner(value)), as the hmac module composes them); or an HMAC object, copied,\n"
"and None; or hmac_key()'s key, and None. Their digest() must give bytes (or a\n"
"subclass). None when text, stamp or sep is not exact bytes, or stamp or sep not\n"
"ASCII: the caller then signs in Python.");

/* sign_token's and sign_ids' five arguments (inner, outer, what to sign, stamp, sep):
 * -1 with an exception when they are not five, 0 when stamp or sep is not ASCII bytes
 * (the caller then signs in Python), 1 otherwise. */
static int
signing_args(const char *name, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs(name, nargs, 5) < 0)
        return -1;
    return ascii_bytes(args[3]) && ascii_bytes(args[4]);
}

static PyObject *
sign_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int usable = signing_args("sign_token", args, nargs);
    if (usable < 0)
        return NULL;
    PyObject *text = args[2];
    if (!usable || !PyBytes_CheckExact(text))
        Py_RETURN_NONE;
    return make_token(args[0], args[1], PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text), args[3],
                      args[4]);
}

/* An id that JSON writes as it is and a cookie takes as it is: 1 to 64 characters of
 * A-Z, a-z, 0-9, - and _ (Core.new_id's are 22). */
#define ID_MAX 64

static int
plain_id(PyObject *id)
{
    if (!PyUnicode_CheckExact(id) || !PyUnicode_IS_ASCII(id))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(id);
    const unsigned char *p = PyUnicode_1BYTE_DATA(id);
    if (n < 1 || n > ID_MAX)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

PyDoc_STRVAR(sign_ids_doc,
"sign_ids(inner, outer, ids, stamp, sep, /)\n--\n\n"
"sign_token's token of each visitor id's payload, the JSON [id], as a list: what\n"
"CookieSigner.new_id_token signs ahead. None when ids is not a list of ids of 1 to 64\n"
"characters of A-Z, a-z, 0-9, - and _ (JSON writes no other as it is), or stamp or sep\n"
"is not ASCII bytes: the caller then signs in Python.");

static PyObject *
sign_ids(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int usable = signing_args("sign_ids", args, nargs);
    if (usable < 0)
        return NULL;
    PyObject *inner = args[0], *outer = args[1], *ids = args[2], *stamp = args[3];
    PyObject *sep = args[4];
    if (!usable || !PyList_CheckExact(ids))
        Py_RETURN_NONE;
    /* The ids are copied first, into a tuple: the MAC's methods may run code that
     * changes the list, and none can change a tuple (even one it finds). */
    PyObject *held = PyList_AsTuple(ids);
    if (held == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!plain_id(PyTuple_GET_ITEM(held, i))) {
            Py_DECREF(held);
            Py_RETURN_NONE;
        }
    }
    PyObject *tokens = PyList_New(count);
    for (Py_ssize_t i = 0; tokens != NULL && i < count; i++) {
        PyObject *id = PyTuple_GET_ITEM(held, i);
        Py_ssize_t n = PyUnicode_GET_LENGTH(id);
        char text[ID_MAX + 4] = "[\"";
        memcpy(text + 2, PyUnicode_1BYTE_DATA(id), n);
        memcpy(text + 2 + n, "\"]", 2);
        PyObject *token = make_token(inner, outer, text, n + 4, stamp, sep);
        if (token == NULL)
            Py_CLEAR(tokens);
        else
            PyList_SET_ITEM(tokens, i, token);
    }
    Py_DECREF(held);
    return tokens;
}

/* -- the module ---------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"cached_state", (PyCFunction)(void (*)(void))cached_state, METH_FASTCALL, cached_state_doc},
    {"state_key", state_key, METH_O, state_key_doc},
    {"beacon_headers", (PyCFunction)beacon_headers, METH_O, beacon_headers_doc},
    {"beacon", (PyCFunction)(void (*)(void))beacon, METH_FASTCALL, beacon_doc},
    {"allow", (PyCFunction)(void (*)(void))allow_hook, METH_FASTCALL, allow_doc},
    {"add", (PyCFunction)(void (*)(void))add_hook, METH_FASTCALL, add_doc},
    {"add_cookies", (PyCFunction)(void (*)(void))add_cookies, METH_FASTCALL, add_cookies_doc},
    {"normalize_run", (PyCFunction)(void (*)(void))normalize_run, METH_FASTCALL,
     normalize_run_doc},
    {"group_run", (PyCFunction)(void (*)(void))group_run, METH_FASTCALL, group_run_doc},
    {"views_json", (PyCFunction)(void (*)(void))views_json, METH_FASTCALL, views_json_doc},
    {"tally_run", (PyCFunction)(void (*)(void))tally_run, METH_FASTCALL, tally_run_doc},
    {"plan_run", (PyCFunction)(void (*)(void))plan_run, METH_FASTCALL, plan_run_doc},
    {"copy_pageviews", (PyCFunction)(void (*)(void))copy_pageviews, METH_FASTCALL,
     copy_pageviews_doc},
    {"pg_columns", (PyCFunction)(void (*)(void))pg_columns, METH_FASTCALL, pg_columns_doc},
    {"hmac_key", (PyCFunction)(void (*)(void))hmac_key, METH_FASTCALL, hmac_key_doc},
    {"sign_token", (PyCFunction)(void (*)(void))sign_token, METH_FASTCALL, sign_token_doc},
    {"sign_ids", (PyCFunction)(void (*)(void))sign_ids, METH_FASTCALL, sign_ids_doc},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackmw._speedups",
    .m_doc = "The ASGI middleware's common case in C (optional; see trackmw.asgi).",
    .m_size = -1,
    .m_methods = module_methods,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern(&str_type, "type") < 0 || intern(&str_http, "http") < 0 ||
        intern(&str_path, "path") < 0 || intern(&str_headers, "headers") < 0 ||
        intern(&str_trackmw, "trackmw") < 0 || intern(&str_send_full, "send_full") < 0 ||
        intern(&str_visitor, "visitor") < 0 || intern(&str_send, "_send") < 0 ||
        intern(&str_method, "method") < 0 || intern(&str_GET, "GET") < 0 ||
        intern(&str_query_string, "query_string") < 0 ||
        intern(&str_p, "p") < 0 ||
        intern(&str_r, "r") < 0 || intern(&str_c, "c") < 0 ||
        intern(&str_allow, "allow") < 0 || intern(&str_add, "add") < 0 ||
        intern(&str_settings, "settings") < 0 ||
        intern(&str_pixel_rate_limit_status, "pixel_rate_limit_status") < 0 ||
        intern(&str_plan, "_plan") < 0 || intern(&str_time, "_time") < 0 ||
        intern(&str_quiet, "quiet") < 0 || intern(&str_fresh, "fresh") < 0 ||
        intern(&str_send_quiet, "send_quiet") < 0 || intern(&str_send_fresh, "send_fresh") < 0 ||
        intern(&str_throw, "throw") < 0 || intern(&str_close, "close") < 0 ||
        intern(&str_status, "status") < 0 || intern(&str_day, "day") < 0 ||
        intern(&str_paths, "paths") < 0 || intern(&str_refs, "refs") < 0 ||
        intern(&str_visits, "visits") < 0 || intern(&str_members, "members") < 0 ||
        intern(&str_bots, "bots") < 0 ||
        intern(&str_r_colon, "r:") < 0 || intern(&str_c_colon, "c:") < 0 ||
        intern(&str_copy, "copy") < 0 || intern(&str_update, "update") < 0 ||
        intern(&str_digest, "digest") < 0)
        return NULL;
    kwnames_app = Py_BuildValue("(s)", "_app");
    if (kwnames_app == NULL)
        return NULL;
    PyObject *time_module = PyImport_ImportModule("time");
    time_time = time_module == NULL ? NULL : PyObject_GetAttrString(time_module, "time");
    Py_XDECREF(time_module);
    if (time_time == NULL)
        return NULL;
    /* What quick_allow and quick_add mirror, the deque the pipeline buffers in, and the
     * cookie state count_beacon reads. */
    const char *found[4][2] = {{"collections", "deque"}, {"trackmw.ratelimit", "RateLimiter"},
                               {"trackmw.pipeline", "Pipeline"},
                               {"trackmw.cookiestate", "CookieState"}};
    PyObject *objects[4];
    for (int i = 0; i < 4; i++) {
        PyObject *module = PyImport_ImportModule(found[i][0]);
        objects[i] = module == NULL ? NULL : PyObject_GetAttrString(module, found[i][1]);
        Py_XDECREF(module);
        if (objects[i] == NULL)
            return NULL;
    }
    deque_type = (PyTypeObject *)objects[0];
    limiter_type = (PyTypeObject *)objects[1];
    pipeline_type = (PyTypeObject *)objects[2];
    state_type = (PyTypeObject *)objects[3];
    limiter_allow = PyObject_GetAttrString(objects[1], "allow"); /* the plain functions */
    pipeline_add = PyObject_GetAttrString(objects[2], "add");
    if (limiter_allow == NULL || pipeline_add == NULL)
        return NULL;
    const char *const limiter_names[] = {"limit", "max_keys", "_since", "_until", "_counts"};
    Py_ssize_t *const limiter_offsets[] = {&off_limit, &off_max_keys, &off_since, &off_until,
                                           &off_counts};
    const char *const pipeline_names[] = {"_thread", "buffer_size", "_buffer", "batch_size"};
    Py_ssize_t *const pipeline_offsets[] = {&off_thread, &off_buffer_size, &off_buffer,
                                            &off_batch_size};
    const char *const state_names[] = {"beacon_id", "user_id", "quiet", "fresh"};
    Py_ssize_t *const state_offsets[] = {&off_beacon_id, &off_user_id, &off_quiet, &off_fresh};
    limiter_slots = slot_offsets(limiter_type, 5, limiter_names, limiter_offsets);
    pipeline_slots = slot_offsets(pipeline_type, 4, pipeline_names, pipeline_offsets);
    state_slots = slot_offsets(state_type, 4, state_names, state_offsets);
    if (limiter_slots < 0 || pipeline_slots < 0 || state_slots < 0)
        return NULL;
    deque_append = PyObject_GetAttrString(objects[0], "append");
    if (deque_append == NULL)
        return NULL;
    bytes_empty = PyBytes_FromStringAndSize("", 0);
    int_200 = PyLong_FromLong(200);
    int_1 = PyLong_FromLong(1);
    if (bytes_empty == NULL || int_200 == NULL || int_1 == NULL)
        return NULL;
    bytes_set_cookie = PyBytes_FromString("set-cookie");
    if (bytes_set_cookie == NULL)
        return NULL;
    if (PyType_Ready(&LazyType) < 0 || PyType_Ready(&PlanType) < 0 ||
        PyType_Ready(&CallType) < 0 || PyType_Ready(&EntryType) < 0)
        return NULL;
    lazy_send_quiet_method = PyDict_GetItemWithError(LazyType.tp_dict, str_send_quiet);
    if (lazy_send_quiet_method == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trackmw: LazyBase.send_quiet is missing");
        return NULL;
    }
    Py_INCREF(lazy_send_quiet_method);
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddType(module, &LazyType) < 0 || PyModule_AddType(module, &PlanType) < 0 ||
        PyModule_AddType(module, &EntryType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
