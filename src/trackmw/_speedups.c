/* trackmw._speedups: the ASGI middleware's common case, in C.
 *
 * A tracked page whose Cookie header's state is cached (every returning visitor's
 * page, and a new visitor's) costs trackmw a pass over the request's headers, one
 * dict lookup and a per-request object. In Python that is about 1.2 us on a 2-core
 * VM; here it is a quarter of that (see the README's Performance section). A
 * returning visitor's beacon is counted here too, from the caches the Python path
 * (Core.quick_beacon) fills.
 *
 * Optional: trackmw.asgi runs the same logic in Python when this module cannot be
 * imported (no C compiler at install, another Python implementation, or the
 * TRACKMW_NO_EXTENSIONS environment variable set). Nothing here decides anything the
 * Python path does not: a request it does not recognise as the common case gets
 * None, and the Python path takes it from the start.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>

static PyObject *str_type, *str_http, *str_path, *str_headers, *str_trackmw;
static PyObject *str_send_full, *str_visitor, *str_send;

/* -- the cookie state of a tracked page ------------------------------------------ */

/* The cached CookieState of an HTTP request to a tracked page, as a new reference;
 * None (a new reference) when the request is anything else; NULL on error.
 *
 * The common case is: an "http" scope whose path starts with none of `prefixes`
 * (trackmw's own and the excluded paths), whose headers are a list of (bytes,
 * bytes) tuples with at most one "cookie" and no "dnt" or "sec-gpc", and whose
 * cookie value (or None) is a key of `states` whose window holds `now`. This is
 * the lookup CookieReader.state and Core.request_state make for such a request. */
static PyObject *
lookup_state(PyObject *scope, PyObject *prefixes, PyObject *states, double now)
{
    if (!PyDict_CheckExact(scope) || !PyTuple_CheckExact(prefixes) || !PyDict_CheckExact(states))
        Py_RETURN_NONE;
    PyObject *type = PyDict_GetItemWithError(scope, str_type);
    if (type == NULL)
        goto missing;
    if (type != str_http) { /* servers use the interned literal; compare if not */
        if (!PyUnicode_CheckExact(type))
            Py_RETURN_NONE;
        int eq = PyUnicode_Compare(type, str_http);
        if (eq == -1 && PyErr_Occurred())
            return NULL;
        if (eq != 0)
            Py_RETURN_NONE;
    }
    PyObject *path = PyDict_GetItemWithError(scope, str_path);
    if (path == NULL)
        goto missing;
    if (!PyUnicode_CheckExact(path))
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
        if (!PyUnicode_CheckExact(prefix))
            Py_RETURN_NONE;
        Py_ssize_t match = PyUnicode_Tailmatch(path, prefix, 0, PY_SSIZE_T_MAX, -1);
        if (match == -1)
            return NULL;
        if (match)
            Py_RETURN_NONE;
    }
    PyObject *headers = PyDict_GetItemWithError(scope, str_headers);
    if (headers == NULL)
        goto missing;
    if (!PyList_CheckExact(headers))
        Py_RETURN_NONE;
    PyObject *cookie = Py_None;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            Py_RETURN_NONE;
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        if (!PyBytes_CheckExact(name))
            Py_RETURN_NONE;
        Py_ssize_t size = PyBytes_GET_SIZE(name);
        const char *text = PyBytes_AS_STRING(name);
        if (size == 6 && memcmp(text, "cookie", 6) == 0) {
            PyObject *value = PyTuple_GET_ITEM(item, 1);
            if (cookie != Py_None || !PyBytes_CheckExact(value))
                Py_RETURN_NONE; /* repeated headers are joined by the Python path */
            cookie = value;
        }
        else if ((size == 3 && memcmp(text, "dnt", 3) == 0) ||
                 (size == 7 && memcmp(text, "sec-gpc", 7) == 0))
            Py_RETURN_NONE; /* a signal: its state is keyed with the signals */
    }
    /* (not_before, not_after, state): see CookieReader.states */
    PyObject *cached = PyDict_GetItemWithError(states, cookie);
    if (cached == NULL)
        goto missing;
    if (!PyTuple_CheckExact(cached) || PyTuple_GET_SIZE(cached) != 3 ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 0)) ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 1)))
        Py_RETURN_NONE;
    if (PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 0)) <= now &&
        now <= PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 1))) {
        PyObject *state = PyTuple_GET_ITEM(cached, 2);
        Py_INCREF(state);
        return state;
    }
    Py_RETURN_NONE;
missing:
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* Check the count of positional arguments and read `now`, the fourth. */
static int
unpack_lookup_args(const char *name, Py_ssize_t nargs, Py_ssize_t expected,
                   PyObject *const *args, double *now)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
        return -1;
    }
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
    return lookup_state(args[0], args[1], args[2], now);
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
"else, which the Python pass (trackmw.asgi.beacon_headers) decides.");

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
static PyObject *str_beacon_id, *str_user_id, *str_p, *str_r, *str_c;
static PyObject *str_rate_limiter, *str_allow, *str_pipeline, *str_add;
static PyObject *str_settings, *str_pixel_rate_limit_status, *int_200;

/* `key`'s value in the exact dict `d`, borrowed; NULL if absent or on error. */
#define LOOKUP(d, key) PyDict_GetItemWithError((d), (key))

PyDoc_STRVAR(beacon_doc,
"beacon(scope, caches, core, now, /)\n--\n\n"
"Core.quick_beacon for an ASGI scope: the hit counted and the status to answer\n"
"with, or None when the request is not the common case this decides from the\n"
"caches alone (then nothing is done, and the Python path decides).\n\n"
"caches: Core.beacon_caches, (states, queries, agents, hosts, hit type); core: the\n"
"Core, whose rate_limiter.allow and pipeline.add are called as quick_beacon calls\n"
"them; now: the time (a float, the hit's timestamp).");

static PyObject *
beacon(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "beacon() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *scope = args[0], *caches = args[1], *core = args[2], *now_obj = args[3];
    if (!PyDict_CheckExact(scope) || !PyTuple_CheckExact(caches) || PyTuple_GET_SIZE(caches) != 5 ||
        !PyFloat_CheckExact(now_obj))
        Py_RETURN_NONE;
    PyObject *states = PyTuple_GET_ITEM(caches, 0), *queries = PyTuple_GET_ITEM(caches, 1);
    PyObject *agents = PyTuple_GET_ITEM(caches, 2), *hosts = PyTuple_GET_ITEM(caches, 3);
    PyTypeObject *hit_type = (PyTypeObject *)PyTuple_GET_ITEM(caches, 4);
    if (!PyDict_CheckExact(states) || !PyDict_CheckExact(queries) || !PyDict_CheckExact(agents) ||
        !PyDict_CheckExact(hosts) || !PyType_Check(hit_type) ||
        !PyType_IsSubtype(hit_type, &PyTuple_Type) ||
        hit_type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        hit_type->tp_itemsize != PyTuple_Type.tp_itemsize)
        Py_RETURN_NONE;
    double now = PyFloat_AS_DOUBLE(now_obj);

    PyObject *method = LOOKUP(scope, str_method);
    if (method == NULL)
        goto missing;
    if (method != str_GET) {
        if (!PyUnicode_CheckExact(method))
            Py_RETURN_NONE;
        int eq = PyUnicode_Compare(method, str_GET);
        if (eq == -1 && PyErr_Occurred())
            return NULL;
        if (eq != 0)
            Py_RETURN_NONE;
    }
    PyObject *headers = LOOKUP(scope, str_headers);
    if (headers == NULL)
        goto missing;
    PyObject *query = LOOKUP(scope, str_query_string);
    if (query == NULL) {
        if (PyErr_Occurred())
            return NULL;
        query = bytes_empty;
    }
    if (!PyBytes_CheckExact(query))
        Py_RETURN_NONE;
    PyObject *cookie, *agent, *host;
    if (!scan_beacon(headers, &cookie, &agent, &host) || cookie == Py_None)
        Py_RETURN_NONE; /* without a cookie there is no visitor to count */

    /* Everything below is read from caches that hold what the Python path would
     * compute, or this returns None before doing anything. Each value is held, since
     * the calls further down may run any code (and change those caches). */
    PyObject *cached = LOOKUP(states, cookie); /* (not_before, not_after, state) */
    if (cached == NULL)
        goto missing;
    if (!PyTuple_CheckExact(cached) || PyTuple_GET_SIZE(cached) != 3 ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 0)) ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(cached, 1)) ||
        !(PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 0)) <= now &&
          now <= PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(cached, 1))))
        Py_RETURN_NONE;
    PyObject *state = PyTuple_GET_ITEM(cached, 2);
    PyObject *params = LOOKUP(queries, query); /* parse_pixel_query's cache */
    if (params == NULL)
        goto missing;
    if (!PyDict_CheckExact(params))
        Py_RETURN_NONE;
    PyObject *page = LOOKUP(params, str_p);
    if (page == NULL) /* the general path takes the page from Referer */
        goto missing;
    PyObject *referrer = LOOKUP(params, str_r);
    if (referrer == NULL && PyErr_Occurred())
        return NULL;
    PyObject *campaign = LOOKUP(params, str_c);
    if (campaign == NULL && PyErr_Occurred())
        return NULL;
    PyObject *agent_text = LOOKUP(agents, agent);
    if (agent_text == NULL)
        goto missing;
    PyObject *site = LOOKUP(hosts, host);
    if (site == NULL)
        goto missing;

    PyObject *held[8] = {now_obj, NULL, NULL, page, referrer ? referrer : Py_None,
                         campaign ? campaign : Py_None, agent_text, site};
    for (int i = 3; i < 8; i++)
        Py_INCREF(held[i]);
    PyObject *hit = NULL, *result = NULL, *owner = NULL;
    Py_INCREF(state);
    /* CookieState.beacon_id: the id the beacon counts without a cookie (or None) */
    held[1] = PyObject_GetAttr(state, str_beacon_id);
    if (held[1] == NULL)
        goto done;
    if (held[1] == Py_None) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    held[2] = PyObject_GetAttr(state, str_user_id);
    if (held[2] == NULL)
        goto done;
    owner = PyObject_GetAttr(core, str_rate_limiter);
    if (owner == NULL)
        goto done;
    PyObject *call_args[3] = {owner, held[1], now_obj};
    PyObject *allowed = PyObject_VectorcallMethod(
        str_allow, call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_CLEAR(owner);
    if (allowed == NULL)
        goto done;
    int ok = PyObject_IsTrue(allowed);
    Py_DECREF(allowed);
    if (ok < 0)
        goto done;
    if (!ok) { /* over the rate limit: answered, not counted */
        PyObject *settings = PyObject_GetAttr(core, str_settings);
        if (settings != NULL) {
            result = PyObject_GetAttr(settings, str_pixel_rate_limit_status);
            Py_DECREF(settings);
        }
        goto done;
    }
    hit = hit_type->tp_alloc(hit_type, 8); /* Hit(now, visitor_id, user_id, page, ...) */
    if (hit == NULL)
        goto done;
    for (int i = 0; i < 8; i++) {
        Py_INCREF(held[i]);
        PyTuple_SET_ITEM(hit, i, held[i]);
    }
    owner = PyObject_GetAttr(core, str_pipeline);
    if (owner == NULL)
        goto done;
    PyObject *add_args[2] = {owner, hit};
    PyObject *added = PyObject_VectorcallMethod(
        str_add, add_args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_CLEAR(owner);
    if (added == NULL)
        goto done;
    Py_DECREF(added);
    result = int_200;
    Py_INCREF(result);
done:
    Py_XDECREF(hit);
    Py_DECREF(state);
    for (int i = 1; i < 8; i++)
        Py_XDECREF(held[i]);
    return result;
missing:
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
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
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "add_cookies() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
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

PyDoc_STRVAR(enter_doc,
"enter(scope, prefixes, states, now, core, send, /)\n--\n\n"
"A new instance for a request to a tracked page whose cookie state is cached\n"
"(set as scope[\"trackmw\"] too), or None when the request is not that case.\n\n"
"prefixes: the paths that may be trackmw's own or excluded; states: the cached\n"
"states by Cookie header (CookieReader.states); now: the time, for their window.");

static PyObject *
lazy_enter(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    double now;
    if (unpack_lookup_args("enter", nargs, 6, args, &now) < 0)
        return NULL;
    PyObject *state = lookup_state(args[0], args[1], args[2], now);
    if (state == NULL || state == Py_None)
        return state;
    Lazy *self = lazy_alloc((PyTypeObject *)cls, args[4], args[0], state, args[5]);
    Py_DECREF(state);
    if (self == NULL)
        return NULL;
    if (PyDict_SetItem(args[0], str_trackmw, (PyObject *)self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
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

/* -- the module ---------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"cached_state", (PyCFunction)(void (*)(void))cached_state, METH_FASTCALL, cached_state_doc},
    {"beacon_headers", (PyCFunction)beacon_headers, METH_O, beacon_headers_doc},
    {"beacon", (PyCFunction)(void (*)(void))beacon, METH_FASTCALL, beacon_doc},
    {"add_cookies", (PyCFunction)(void (*)(void))add_cookies, METH_FASTCALL, add_cookies_doc},
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
        intern(&str_query_string, "query_string") < 0 || intern(&str_beacon_id, "beacon_id") < 0 ||
        intern(&str_user_id, "user_id") < 0 || intern(&str_p, "p") < 0 ||
        intern(&str_r, "r") < 0 || intern(&str_c, "c") < 0 ||
        intern(&str_rate_limiter, "rate_limiter") < 0 || intern(&str_allow, "allow") < 0 ||
        intern(&str_pipeline, "pipeline") < 0 || intern(&str_add, "add") < 0 ||
        intern(&str_settings, "settings") < 0 ||
        intern(&str_pixel_rate_limit_status, "pixel_rate_limit_status") < 0)
        return NULL;
    bytes_empty = PyBytes_FromStringAndSize("", 0);
    int_200 = PyLong_FromLong(200);
    if (bytes_empty == NULL || int_200 == NULL)
        return NULL;
    bytes_set_cookie = PyBytes_FromString("set-cookie");
    if (bytes_set_cookie == NULL)
        return NULL;
    if (PyType_Ready(&LazyType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    Py_INCREF(&LazyType);
    if (PyModule_AddObject(module, "LazyBase", (PyObject *)&LazyType) < 0) {
        Py_DECREF(&LazyType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
