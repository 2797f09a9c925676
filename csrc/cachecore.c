/*
 * tlsresume._cachecore: the table behind tlsresume.SessionCache.
 *
 * A plain CPython extension, separate from the cffi binding: a cffi call
 * gives up and takes back the GIL every time, which alone costs more
 * than a whole take() here.  Python subclasses _Core (src/tlsresume/
 * cache.py) to check its arguments and to document it; take(), put(),
 * discard() and len() run here without a Python frame.
 *
 * Layout: a dict from a peer's slot (PeerKey._slot, a tuple of the
 * class, str and int; or a plain key) to a Peer, which holds that peer's
 * sessions newest first; the Peers also form a doubly linked list,
 * least recently used first.
 *
 * Locking: one mutex guards the table, and no Python code runs while it
 * is held.  Keys are PeerKeys or plain values, whose hashing and
 * comparing are C; handles are exact Sessions, whose slots are read in
 * C; nothing is freed and no garbage-collected object is made.  The
 * rest (closing dropped sessions, making a handle for take(), reading
 * a clock) happens before or after.  Python code under the lock could
 * call back into the cache (a key's __eq__, a finalizer run by a
 * collection) and wait for the lock forever.  Under the GIL the lock is
 * thus never contended; it is taken as Python's own locks are all the
 * same, dropping the GIL only if it has to wait.
 *
 * Ownership: the table holds one reference to every Session in it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <pthread.h>
#include <time.h>

/* Set once by _setup(), from tlsresume.cache. */
static PyObject *session_type;   /* tlsresume.Session */
static PyObject *peerkey_type;   /* tlsresume.PeerKey */
static PyObject *on_mismatch;    /* raises SessionError for put() */
static PyObject *monotonic;      /* time.monotonic, read directly */
static int (*session_up_ref)(void *);  /* OpenSSL's SSL_SESSION_up_ref */
static void (*session_free)(void *);   /* and SSL_SESSION_free */

static PyObject *s_slot, *s_scope, *s_facts, *s_read_facts, *s_ptr;
static PyObject *s_adopt_ref, *s_close;

/* Where the __slots__ the core reads live in a Session or a PeerKey:
 * read directly, as a slot descriptor would, they cost a few
 * instructions instead of an attribute lookup. */
static Py_ssize_t off_slot, off_scope, off_facts, off_ptr;

/* How many dropped sessions fit on the stack before we allocate. */
#define SMALL_DROP 16

typedef struct {
    double deadline;    /* on the cache's clock */
    PyObject *session;  /* owned */
    void *ssl_session;  /* the SSL_SESSION the handle holds */
    int tls13;
} Item;

typedef struct Peer {
    PyObject_HEAD
    struct Peer *older, *newer;  /* LRU links; the dict owns the Peer */
    PyObject *key;               /* owned: what keys() shows */
    PyObject *slot;              /* owned: the dict key */
    Py_ssize_t count;
    Item *items;                 /* newest first; room for tickets + 1 */
} Peer;

static void
Peer_dealloc(Peer *p)
{
    Py_ssize_t i;

    for (i = 0; i < p->count; i++) {
        Py_XDECREF(p->items[i].session);
    }
    PyMem_Free(p->items);
    Py_XDECREF(p->key);
    Py_XDECREF(p->slot);
    PyObject_Free(p);
}

static PyTypeObject PeerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlsresume._cachecore._Peer",
    .tp_basicsize = sizeof(Peer),
    .tp_dealloc = (destructor)Peer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

typedef struct {
    PyObject_HEAD
    PyObject *peers;           /* dict: slot -> Peer */
    Peer *lru, *mru;
    Py_ssize_t max_entries;
    Py_ssize_t tickets;
    double ttl;                /* 0: no limit of the cache's own */
    int ready;                 /* set up by __init__, once */
    PyObject *clock;           /* monotonic seconds */
    PyObject *wall;            /* None: the system's wall clock */
    pthread_mutex_t lock;
    int lock_made;
    unsigned long long hits, misses, taken, stores;
    unsigned long long evictions, expirations, discards, refused;
} Core;

/* Sessions to close once the lock is released. */
typedef struct {
    PyObject *small[SMALL_DROP];
    PyObject **all;
    Py_ssize_t n, cap;
} Drop;

static int
drop_init(Drop *d, Py_ssize_t need)
{
    d->n = 0;
    if (need <= SMALL_DROP) {
        d->all = d->small;
        d->cap = SMALL_DROP;
        return 0;
    }
    d->all = PyMem_New(PyObject *, need);
    d->cap = need;
    if (d->all == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Close ``session``.  An exception already set is kept; a close()
 * that fails is reported as unraisable. */
static void
close_quietly(PyObject *session)
{
    PyObject *type, *value, *tb, *r;

    PyErr_Fetch(&type, &value, &tb);
    r = PyObject_CallMethodNoArgs(session, s_close);
    if (r == NULL) {
        PyErr_WriteUnraisable(session);
    }
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
}

/* Close every session in ``d`` and let go of it. */
static void
drop_close(Drop *d)
{
    Py_ssize_t i;

    for (i = 0; i < d->n; i++) {
        close_quietly(d->all[i]);
        Py_DECREF(d->all[i]);
    }
    if (d->all != d->small) {
        PyMem_Free(d->all);
    }
}

static void
lock_core(Core *c)
{
    if (pthread_mutex_trylock(&c->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->lock);
        Py_END_ALLOW_THREADS
    }
}

static void
unlock_core(Core *c)
{
    pthread_mutex_unlock(&c->lock);
}

static void
lru_unlink(Core *c, Peer *p)
{
    if (p->older) {
        p->older->newer = p->newer;
    } else {
        c->lru = p->newer;
    }
    if (p->newer) {
        p->newer->older = p->older;
    } else {
        c->mru = p->older;
    }
    p->older = p->newer = NULL;
}

static void
lru_append(Core *c, Peer *p)
{
    p->older = c->mru;
    p->newer = NULL;
    if (c->mru) {
        c->mru->newer = p;
    } else {
        c->lru = p;
    }
    c->mru = p;
}

static void
lru_touch(Core *c, Peer *p)
{
    if (c->mru != p) {
        lru_unlink(c, p);
        lru_append(c, p);
    }
}

/* Take ``p`` out of the table; the caller gets the dict's reference. */
static int
unfile(Core *c, Peer *p)
{
    Py_INCREF(p);
    if (PyDict_DelItem(c->peers, p->slot) < 0) {
        Py_DECREF(p);  /* still filed: the dict keeps it alive */
        return -1;
    }
    lru_unlink(c, p);
    return 0;
}

/* Move p's sessions into ``d`` (which has room for them). */
static Py_ssize_t
empty_into(Peer *p, Drop *d)
{
    Py_ssize_t i, n = p->count;

    for (i = 0; i < n; i++) {
        d->all[d->n++] = p->items[i].session;
        p->items[i].session = NULL;
    }
    p->count = 0;
    return n;
}

static void
remove_item(Peer *p, Py_ssize_t i)
{
    p->count--;
    memmove(&p->items[i], &p->items[i + 1],
            (size_t)(p->count - i) * sizeof(Item));
    p->items[p->count].session = NULL;
}

/* The __slots__ member at ``offset`` of ``obj`` (an exact Session or
 * PeerKey), as a new reference (``new``) or a borrowed one. */
static PyObject *
slot_value(PyObject *obj, Py_ssize_t offset, PyObject *name, int new)
{
    PyObject *v = *(PyObject **)((char *)obj + offset);

    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    if (new) {
        Py_INCREF(v);
    }
    return v;
}

/* A value whose hashing and comparing run no Python code. */
static int
plain(PyObject *v, int depth)
{
    PyTypeObject *t = Py_TYPE(v);
    Py_ssize_t i;

    if (v == Py_None || t == &PyUnicode_Type || t == &PyBytes_Type
            || t == &PyLong_Type || t == &PyBool_Type
            || t == &PyFloat_Type) {
        return 1;
    }
    if (t != &PyTuple_Type || depth >= 8) {
        return 0;
    }
    for (i = 0; i < PyTuple_GET_SIZE(v); i++) {
        if (!plain(PyTuple_GET_ITEM(v, i), depth + 1)) {
            return 0;
        }
    }
    return 1;
}

/* The dict key for ``key``: PeerKey's precomputed tuple, or a plain key
 * itself.  Keys are limited to these so that no Python code (a key's
 * __hash__ or __eq__) runs while the lock is held: it could call back
 * into the cache and wait for the lock forever. */
static PyObject *
slot_of(PyObject *key)
{
    if ((PyObject *)Py_TYPE(key) == peerkey_type) {
        return slot_value(key, off_slot, s_slot, 1);
    }
    if (!plain(key, 0)) {
        PyErr_Format(PyExc_TypeError,
                     "a SessionCache key is a tlsresume.PeerKey or a plain "
                     "value (str, bytes, int, float, None, or a tuple of "
                     "them), not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_INCREF(key);
    return key;
}

static int
not_ready(Core *c)
{
    if (!c->ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "SessionCache.__init__ has not run");
        return 1;
    }
    return 0;
}

static int
read_clock(PyObject *clock, double *out)
{
    PyObject *r;
    struct timespec ts;

    if (clock == monotonic && clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        /* What time.monotonic() reads on this platform, without the
         * call and the float object. */
        *out = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        return 0;
    }
    if (clock == NULL || clock == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "the cache has no clock");
        return -1;
    }
    if ((r = PyObject_CallNoArgs(clock)) == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(r);
    if (*out == -1.0 && PyErr_Occurred()) {
        Py_DECREF(r);
        return -1;
    }
    if (!isfinite(*out)) {
        /* A deadline of NaN or infinity would never, or always, pass. */
        PyErr_Format(PyExc_ValueError, "a SessionCache clock gave %R", r);
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static int
read_wall(Core *c, double *out)
{
    struct timespec ts;

    if (c->wall != NULL && c->wall != Py_None) {
        return read_clock(c->wall, out);
    }
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *out = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    return 0;
}

static int
check_setup(void)
{
    if (session_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "tlsresume._cachecore._setup() was not called");
        return -1;
    }
    return 0;
}

/* _Core ------------------------------------------------------------- */

static PyObject *
Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Core *c = (Core *)type->tp_alloc(type, 0);

    if (c == NULL) {
        return NULL;
    }
    c->lock_made = pthread_mutex_init(&c->lock, NULL) == 0;
    c->peers = PyDict_New();
    c->max_entries = 1;
    c->tickets = 1;
    Py_INCREF(Py_None);
    c->clock = Py_None;
    Py_INCREF(Py_None);
    c->wall = Py_None;
    if (!c->lock_made || c->peers == NULL) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    return (PyObject *)c;
}

static int
Core_init(Core *c, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"max_entries", "tickets_per_peer", "ttl",
                            "clock", NULL};
    Py_ssize_t max_entries, tickets;
    double ttl;
    PyObject *clock, *old;

    if (check_setup() < 0) {
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nndO:_Core", names,
                                     &max_entries, &tickets, &ttl,
                                     &clock)) {
        return -1;
    }
    if (max_entries < 1 || tickets < 1 || tickets > 256 || !(ttl >= 0)) {
        PyErr_SetString(PyExc_ValueError, "bad cache settings");
        return -1;
    }
    if (c->ready) {
        /* The sizes of arrays already made, and of those being made by
         * other threads, depend on tickets_per_peer. */
        PyErr_SetString(PyExc_RuntimeError,
                        "a SessionCache is set up once, when it is made");
        return -1;
    }
    c->max_entries = max_entries;
    c->tickets = tickets;
    c->ttl = ttl;
    Py_INCREF(clock);
    old = c->clock;
    c->clock = clock;
    c->ready = 1;
    Py_XDECREF(old);
    return 0;
}

static void
Core_release_all(Core *c)
{
    /* Only from dealloc: no other thread can see the cache any more. */
    Py_CLEAR(c->peers);
    c->lru = c->mru = NULL;
}

static int
Core_traverse(Core *c, visitproc visit, void *arg)
{
    Py_VISIT(c->peers);
    Py_VISIT(c->clock);
    Py_VISIT(c->wall);
    return 0;
}

static int
Core_clear(Core *c)
{
    Py_CLEAR(c->clock);
    Py_CLEAR(c->wall);
    return 0;
}

static void
Core_dealloc(Core *c)
{
    PyTypeObject *type = Py_TYPE(c);

    PyObject_GC_UnTrack(c);
    Core_clear(c);
    Core_release_all(c);
    if (c->lock_made) {
        pthread_mutex_destroy(&c->lock);
    }
    /* _Core is a static type: a subclass's dealloc drops the reference
     * to its own type after this returns. */
    type->tp_free((PyObject *)c);
}

static unsigned long long
held(Core *c)
{
    return c->stores - c->taken - c->evictions - c->expirations
           - c->discards;
}

PyDoc_STRVAR(take_doc,
"take(key)\n--\n\n"
"Return the newest live session for ``key``, or None.\n\n"
"The caller owns the returned handle.  A TLS 1.3 ticket is removed: it\n"
"is never handed out again.  A TLS 1.2 session stays (it may resume\n"
"any number of connections) and the caller gets a handle of its own\n"
"on it.  Expired sessions met on the way are dropped and closed.");

/* take(), and _take_ref() when ``raw``: see their docstrings. */
static PyObject *
take_impl(Core *c, PyObject *key, int raw)
{
    PyObject *slot, *found = NULL, *holder = NULL, *ptr, *r;
    Peer *p, *gone = NULL;
    Item *it;
    Drop drop;
    void *address = NULL;
    double now;
    int failed = 0, live;

    if (not_ready(c) || (slot = slot_of(key)) == NULL) {
        return NULL;
    }
    if (read_clock(c->clock, &now) < 0
            || drop_init(&drop, c->tickets + 1) < 0) {
        Py_DECREF(slot);
        return NULL;
    }

    lock_core(c);
    p = (Peer *)PyDict_GetItemWithError(c->peers, slot);
    if (p == NULL && PyErr_Occurred()) {
        failed = 1;
    } else if (p != NULL) {
        while (p->count) {
            it = &p->items[0];
            /* Handles are exact Sessions (put() checks), so reading
             * _ptr runs no Python code.  A handle someone closed after
             * put() took it over is dropped like an expired one. */
            if ((ptr = slot_value(it->session, off_ptr, s_ptr, 0)) == NULL) {
                failed = 1;
                break;
            }
            live = ptr != Py_None;
            if (live && now < it->deadline) {
                if (it->tls13) {
                    found = it->session;
                    remove_item(p, 0);
                    c->taken++;
                } else if (session_up_ref(it->ssl_session) == 1) {
                    /* The caller's own reference, taken under the lock
                     * so that no eviction frees the session first; the
                     * handle is made once the lock is released. */
                    address = it->ssl_session;
                    holder = it->session;
                    Py_INCREF(holder);
                }
                break;
            }
            drop.all[drop.n++] = it->session;
            remove_item(p, 0);
            if (live) {
                c->expirations++;
            } else {
                c->discards++;
            }
        }
        if (p->count) {
            lru_touch(c, p);
        } else if (unfile(c, p) == 0) {
            gone = p;
        } else {
            failed = 1;
        }
    }
    if (!failed) {
        if (found || address) {
            c->hits++;
        } else {
            c->misses++;
        }
    }
    unlock_core(c);

    drop_close(&drop);
    Py_XDECREF(gone);
    Py_DECREF(slot);
    if (!failed && address != NULL) {
        /* A bare reference (raw), or a handle on it like the held one. */
        r = PyLong_FromVoidPtr(address);
        if (r != NULL && !raw) {
            Py_SETREF(r, PyObject_CallMethodOneArg(holder, s_adopt_ref, r));
        }
        if (r == NULL) {
            session_free(address);
            failed = 1;
        }
        found = r;
    } else if (failed && address != NULL) {
        session_free(address);
    }
    Py_XDECREF(holder);
    if (failed) {
        if (found != NULL) {
            close_quietly(found);  /* a ticket no one will get */
            Py_DECREF(found);
        }
        return NULL;
    }
    if (found == NULL) {
        Py_RETURN_NONE;
    }
    return found;
}

static PyObject *
Core_take(Core *c, PyObject *key)
{
    return take_impl(c, key, 0);
}

PyDoc_STRVAR(take_ref_doc,
"_take_ref(key)\n--\n\n"
"take() for ClientContext.connect(): a TLS 1.2 session comes back as\n"
"the int address of its SSL_SESSION, with one reference the caller\n"
"must free, instead of as a new handle.  A TLS 1.3 ticket comes back\n"
"as its handle, as from take().");

static PyObject *
Core_take_ref(Core *c, PyObject *key)
{
    return take_impl(c, key, 1);
}

/* The session's (born, lifetime, tls13, address), read from OpenSSL once per
 * handle by Session._read_facts(); None when the handle is closed. */
static PyObject *
facts_of(PyObject *session)
{
    PyObject *facts = slot_value(session, off_facts, s_facts, 1);

    if (facts == Py_None) {
        Py_DECREF(facts);
        facts = PyObject_CallMethodNoArgs(session, s_read_facts);
    }
    if (facts == NULL) {
        return NULL;
    }
    if (facts != Py_None
            && !(PyTuple_CheckExact(facts) && PyTuple_GET_SIZE(facts) == 4)) {
        Py_DECREF(facts);
        PyErr_SetString(PyExc_TypeError, "bad Session._facts");
        return NULL;
    }
    return facts;
}

static PyObject *
refuse(Core *c, PyObject *session)
{
    PyObject *r = PyObject_CallMethodNoArgs(session, s_close);

    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    lock_core(c);
    c->refused++;
    unlock_core(c);
    Py_RETURN_FALSE;
}

PyDoc_STRVAR(put_doc,
"put(key, session)\n--\n\n"
"Store ``session`` for ``key``; True if it was stored.\n\n"
"The cache owns the handle from now on, whatever happens.  A closed,\n"
"non-resumable or already expired session is refused (closed, counted\n"
"in ``stats()['refused']``) and False returned.  A session the cache\n"
"already holds for ``key`` is not filed again: False (refused); the\n"
"held handle stays, once, and another handle on it is closed.\n"
"``session.scope`` must equal ``key``, else the handle is closed and\n"
"SessionError raised: a session made under one peer or configuration\n"
"is never filed under another.");

/* put() once the arguments are checked.  NULL: the session was not
 * stored (the caller closes it). */
static PyObject *
put_checked(Core *c, PyObject *key, PyObject *session)
{
    PyObject *scope, *facts, *ptr, *slot, *r;
    Peer *p, *gone = NULL;
    Drop drop;
    double born, life, wall, now, left;
    void *address;
    Py_ssize_t i;
    int tls13, same, failed = 0, dup = 0;

    if ((scope = slot_value(session, off_scope, s_scope, 1)) == NULL) {
        return NULL;
    }
    same = scope == key ? 1 : PyObject_RichCompareBool(scope, key, Py_EQ);
    Py_DECREF(scope);
    if (same <= 0) {
        if (same < 0) {
            return NULL;
        }
        /* Closes the handle and raises SessionError. */
        r = PyObject_CallFunctionObjArgs(on_mismatch, key, session, NULL);
        Py_XDECREF(r);
        return NULL;
    }

    if ((ptr = slot_value(session, off_ptr, s_ptr, 0)) == NULL) {
        return NULL;
    }
    if (ptr == Py_None) {
        return refuse(c, session);
    }
    if ((facts = facts_of(session)) == NULL) {
        return NULL;
    }
    if (facts == Py_None) {
        Py_DECREF(facts);
        return refuse(c, session);
    }
    born = PyFloat_AsDouble(PyTuple_GET_ITEM(facts, 0));
    life = PyFloat_AsDouble(PyTuple_GET_ITEM(facts, 1));
    tls13 = PyObject_IsTrue(PyTuple_GET_ITEM(facts, 2));
    address = PyLong_AsVoidPtr(PyTuple_GET_ITEM(facts, 3));
    Py_DECREF(facts);
    if (PyErr_Occurred() || tls13 < 0) {
        return NULL;
    }
    if (c->ttl > 0 && c->ttl < life) {
        life = c->ttl;
    }
    if (read_wall(c, &wall) < 0) {
        return NULL;
    }
    /* OpenSSL keeps the time a session was made in whole seconds,
     * rounded down, so the age errs on the old side; a session made
     * "in the future" has age 0. */
    left = life - (wall > born ? wall - born : 0);
    if (!(left > 0)) {
        return refuse(c, session);
    }
    if (read_clock(c->clock, &now) < 0) {
        return NULL;
    }
    if ((slot = slot_of(key)) == NULL) {
        return NULL;
    }
    if (drop_init(&drop, c->tickets + 1) < 0) {
        Py_DECREF(slot);
        return NULL;
    }

    lock_core(c);
    p = (Peer *)PyDict_GetItemWithError(c->peers, slot);
    if (p == NULL) {
        if (PyErr_Occurred()) {
            failed = 1;
            goto unlock;
        }
        p = PyObject_New(Peer, &PeerType);
        if (p == NULL) {
            failed = 1;
            goto unlock;
        }
        p->older = p->newer = NULL;
        p->count = 0;
        Py_INCREF(key);
        p->key = key;
        Py_INCREF(slot);
        p->slot = slot;
        p->items = PyMem_New(Item, c->tickets + 1);
        if (p->items == NULL || PyDict_SetItem(c->peers, slot,
                                               (PyObject *)p) < 0) {
            if (p->items == NULL) {
                PyErr_NoMemory();
            }
            Py_DECREF(p);
            failed = 1;
            goto unlock;
        }
        Py_DECREF(p);  /* the dict's now */
        lru_append(c, p);
        if (PyDict_GET_SIZE(c->peers) > c->max_entries) {
            Peer *old = c->lru;
            if (unfile(c, old) == 0) {
                gone = old;
                c->evictions += empty_into(old, &drop);
            } else {
                /* Not expected with plain keys; never leave the cache
                 * above max_entries: the new peer goes again. */
                failed = 1;
                if (unfile(c, p) == 0) {
                    gone = p;
                }
            }
        }
    } else {
        for (i = 0; i < p->count; i++) {
            if (p->items[i].ssl_session == address) {
                /* Already held, by this handle or another on the same
                 * SSL_SESSION: filing it twice would hand one ticket out
                 * twice, or (TLS 1.2) close it while it stays filed.
                 * Another handle is closed below, as put() owns it. */
                c->refused++;
                dup = p->items[i].session == session ? 1 : 2;
                goto unlock;
            }
        }
        lru_touch(c, p);
        if (!(tls13 && p->count && p->items[0].tls13)) {
            /* One TLS 1.2 session per peer, and no mixing kinds. */
            c->evictions += empty_into(p, &drop);
        }
    }
    if (failed) {
        goto unlock;
    }
    memmove(&p->items[1], &p->items[0], (size_t)p->count * sizeof(Item));
    p->count++;
    p->items[0].deadline = now + left;
    Py_INCREF(session);
    p->items[0].session = session;
    p->items[0].ssl_session = address;
    p->items[0].tls13 = tls13;
    if (p->count > c->tickets) {
        p->count--;
        drop.all[drop.n++] = p->items[p->count].session;
        p->items[p->count].session = NULL;
        c->evictions++;
    }
    c->stores++;
unlock:
    unlock_core(c);

    drop_close(&drop);
    Py_XDECREF(gone);
    Py_DECREF(slot);
    if (failed) {
        return NULL;
    }
    if (dup == 2) {
        r = PyObject_CallMethodNoArgs(session, s_close);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    if (dup) {
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Core_put(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *session, *r;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "put() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    session = args[1];
    if (not_ready(c)) {
        return NULL;
    }
    if ((PyObject *)Py_TYPE(session) != session_type) {
        /* Exactly: reading a Session's slots then runs no Python code,
         * which take() relies on under the lock. */
        PyErr_Format(PyExc_TypeError,
                     "put() needs a tlsresume.Session, not %.100s",
                     Py_TYPE(session)->tp_name);
        return NULL;
    }
    if ((r = put_checked(c, args[0], session)) == NULL) {
        close_quietly(session);  /* put() owns it, stored or not */
    }
    return r;
}

PyDoc_STRVAR(discard_doc,
"discard(key)\n--\n\n"
"Drop and close every session held for ``key``; return how many.");

static PyObject *
Core_discard(Core *c, PyObject *key)
{
    PyObject *slot;
    Peer *p;
    Py_ssize_t n = 0;
    Drop drop;
    int failed = 0;

    if (not_ready(c) || (slot = slot_of(key)) == NULL) {
        return NULL;
    }
    lock_core(c);
    p = (Peer *)PyDict_GetItemWithError(c->peers, slot);
    if (p == NULL) {
        failed = PyErr_Occurred() != NULL;
    } else if (unfile(c, p) < 0) {
        failed = 1;
        p = NULL;
    } else {
        n = p->count;
        c->discards += n;
    }
    unlock_core(c);
    Py_DECREF(slot);

    if (p != NULL) {
        /* Unfiled: this thread alone sees p now. */
        if (drop_init(&drop, p->count) == 0) {
            empty_into(p, &drop);
            drop_close(&drop);
        }
        Py_DECREF(p);  /* frees what drop_init could not take */
    }
    if (failed || PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

/* Close the sessions of every Peer in ``peers`` (a dict or list, which
 * this thread alone sees) and let go of ``peers``. */
static void
close_peers(PyObject *peers)
{
    PyObject *values = PyDict_Check(peers) ? PyDict_Values(peers)
                                           : (Py_INCREF(peers), peers);
    Py_ssize_t i;
    Drop drop;
    Peer *p;

    if (values != NULL) {
        for (i = 0; i < PyList_GET_SIZE(values); i++) {
            p = (Peer *)PyList_GET_ITEM(values, i);
            if (drop_init(&drop, p->count) == 0) {
                empty_into(p, &drop);
                drop_close(&drop);
            }
        }
        Py_DECREF(values);
    }
    Py_DECREF(peers);
}

PyDoc_STRVAR(clear_doc,
"clear()\n--\n\n"
"Drop and close every session; return how many there were.");

static PyObject *
Core_clear_all(Core *c, PyObject *unused)
{
    PyObject *fresh, *old;
    unsigned long long n;

    if (not_ready(c) || (fresh = PyDict_New()) == NULL) {
        return NULL;
    }
    lock_core(c);
    old = c->peers;
    c->peers = fresh;
    c->lru = c->mru = NULL;
    n = held(c);
    c->discards += n;
    unlock_core(c);

    close_peers(old);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(n);
}

PyDoc_STRVAR(expire_doc,
"expire()\n--\n\n"
"Drop and close every expired session; return how many.\n\n"
"Takes time in proportion to the number of sessions held.");

static PyObject *
Core_expire(Core *c, PyObject *unused)
{
    PyObject *dropped, *emptied;
    Peer *p, *next;
    Py_ssize_t i, n = 0;
    double now;
    int failed = 0;

    if (not_ready(c) || read_clock(c->clock, &now) < 0) {
        return NULL;
    }
    dropped = PyList_New(0);
    emptied = PyList_New(0);
    if (dropped == NULL || emptied == NULL) {
        Py_XDECREF(dropped);
        Py_XDECREF(emptied);
        return NULL;
    }

    lock_core(c);
    for (p = c->lru; p != NULL && !failed; p = next) {
        next = p->newer;
        for (i = 0; i < p->count; ) {
            if (now < p->items[i].deadline) {
                i++;
                continue;
            }
            if (PyList_Append(dropped, p->items[i].session) < 0) {
                failed = 1;
                break;
            }
            Py_DECREF(p->items[i].session);  /* the list holds it */
            remove_item(p, i);
            c->expirations++;
            n++;
        }
        if (p->count == 0) {
            if (PyList_Append(emptied, (PyObject *)p) < 0
                    || unfile(c, p) < 0) {
                failed = 1;
            } else {
                Py_DECREF(p);  /* the list holds it */
            }
        }
    }
    unlock_core(c);

    for (i = 0; i < PyList_GET_SIZE(dropped); i++) {
        close_quietly(PyList_GET_ITEM(dropped, i));
    }
    Py_DECREF(dropped);
    Py_DECREF(emptied);
    if (failed) {
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

static Py_ssize_t
Core_len(Core *c)
{
    unsigned long long n;

    if (not_ready(c)) {
        return -1;
    }
    lock_core(c);
    n = held(c);
    unlock_core(c);
    return (Py_ssize_t)n;
}

PyDoc_STRVAR(keys_doc,
"keys()\n--\n\n"
"The peers held, least recently used first, as a new list.");

static PyObject *
Core_keys(Core *c, PyObject *unused)
{
    PyObject *out;
    Peer *p;

    if (not_ready(c) || (out = PyList_New(0)) == NULL) {
        return NULL;
    }
    lock_core(c);
    for (p = c->lru; p != NULL; p = p->newer) {
        if (PyList_Append(out, p->key) < 0) {
            Py_CLEAR(out);
            break;
        }
    }
    unlock_core(c);
    return out;
}

static PyObject *
Core_counters(Core *c, PyObject *unused)
{
    unsigned long long v[10];

    if (not_ready(c)) {
        return NULL;
    }
    lock_core(c);
    v[0] = c->hits;
    v[1] = c->misses;
    v[2] = c->taken;
    v[3] = c->stores;
    v[4] = c->evictions;
    v[5] = c->expirations;
    v[6] = c->discards;
    v[7] = c->refused;
    v[8] = held(c);
    v[9] = (unsigned long long)PyDict_GET_SIZE(c->peers);
    unlock_core(c);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsK}", "hits", v[0], "misses", v[1],
        "taken", v[2], "stores", v[3], "evictions", v[4],
        "expirations", v[5], "discards", v[6], "refused", v[7],
        "sessions", v[8], "peers", v[9]);
}

/* White box, for the tests: what the table really holds, counted item
 * by item rather than from the counters. */
static PyObject *
Core_count(Core *c, PyObject *unused)
{
    Py_ssize_t n = 0, peers = 0;
    Peer *p;

    if (not_ready(c)) {
        return NULL;
    }
    lock_core(c);
    for (p = c->lru; p != NULL; p = p->newer) {
        n += p->count;
        peers++;
    }
    if (peers != PyDict_GET_SIZE(c->peers)) {
        n = -1;  /* the list and the dict disagree */
    }
    unlock_core(c);
    return PyLong_FromSsize_t(n);
}

static PyObject *
Core_get_max_entries(Core *c, void *unused)
{
    return PyLong_FromSsize_t(c->max_entries);
}

static PyObject *
Core_get_tickets(Core *c, void *unused)
{
    return PyLong_FromSsize_t(c->tickets);
}

static PyObject *
Core_get_ttl(Core *c, void *unused)
{
    if (c->ttl > 0) {
        return PyFloat_FromDouble(c->ttl);
    }
    Py_RETURN_NONE;
}

static PyObject *
Core_get_wall(Core *c, void *unused)
{
    PyObject *wall = c->wall ? c->wall : Py_None;

    Py_INCREF(wall);
    return wall;
}

static int
Core_set_wall(Core *c, PyObject *value, void *unused)
{
    PyObject *old = c->wall;

    if (value == NULL || (value != Py_None && !PyCallable_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "_wall must be callable or None");
        return -1;
    }
    Py_INCREF(value);
    c->wall = value;
    Py_XDECREF(old);
    return 0;
}

static PyMethodDef Core_methods[] = {
    {"take", (PyCFunction)Core_take, METH_O, take_doc},
    {"_take_ref", (PyCFunction)Core_take_ref, METH_O, take_ref_doc},
    {"put", (PyCFunction)(void (*)(void))Core_put, METH_FASTCALL, put_doc},
    {"discard", (PyCFunction)Core_discard, METH_O, discard_doc},
    {"clear", (PyCFunction)Core_clear_all, METH_NOARGS, clear_doc},
    {"expire", (PyCFunction)Core_expire, METH_NOARGS, expire_doc},
    {"keys", (PyCFunction)Core_keys, METH_NOARGS, keys_doc},
    {"_counters", (PyCFunction)Core_counters, METH_NOARGS, NULL},
    {"_count", (PyCFunction)Core_count, METH_NOARGS, NULL},
    {NULL}
};

static PyGetSetDef Core_getset[] = {
    {"max_entries", (getter)Core_get_max_entries, NULL,
     "How many peers the cache holds at most.", NULL},
    {"tickets_per_peer", (getter)Core_get_tickets, NULL,
     "How many TLS 1.3 tickets one peer keeps at most.", NULL},
    {"ttl", (getter)Core_get_ttl, NULL,
     "The cache's own lifetime limit in seconds, or None.", NULL},
    {"_wall", (getter)Core_get_wall, (setter)Core_set_wall,
     "The wall clock used to age sessions (None: the system's).", NULL},
    {NULL}
};

static PySequenceMethods Core_as_sequence = {
    .sq_length = (lenfunc)Core_len,
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlsresume._cachecore._Core",
    .tp_basicsize = sizeof(Core),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_as_sequence = &Core_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE
                | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The table behind tlsresume.SessionCache.",
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_init = (initproc)Core_init,
    .tp_new = Core_new,
};

/* The offset of ``type``'s __slots__ member ``name``, or -1. */
static Py_ssize_t
member_offset(PyObject *type, PyObject *name)
{
    PyObject *descr = PyDict_GetItemWithError(
        ((PyTypeObject *)type)->tp_dict, name);
    PyMemberDef *member;

    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%R has no slot %R", type, name);
        }
        return -1;
    }
    member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || member->flags & READONLY) {
        PyErr_Format(PyExc_TypeError, "%R.%U is not a plain slot", type,
                     name);
        return -1;
    }
    return member->offset;
}

static int
address_arg(PyObject *value, void *out)
{
    *(void **)out = PyLong_AsVoidPtr(value);
    return !PyErr_Occurred();
}

static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *session, *peerkey, *mismatch, *mono;
    void *up_ref, *free_fn;

    if (!PyArg_ParseTuple(args, "OOOOO&O&:_setup", &session, &peerkey,
                          &mismatch, &mono, address_arg, &up_ref,
                          address_arg, &free_fn)) {
        return NULL;
    }
    if (up_ref == NULL || free_fn == NULL) {
        PyErr_SetString(PyExc_ValueError, "_setup: a NULL function");
        return NULL;
    }
    if (!PyType_Check(session) || !PyType_Check(peerkey)) {
        PyErr_SetString(PyExc_TypeError, "_setup: Session and PeerKey");
        return NULL;
    }
    if ((off_slot = member_offset(peerkey, s_slot)) < 0
            || (off_scope = member_offset(session, s_scope)) < 0
            || (off_facts = member_offset(session, s_facts)) < 0
            || (off_ptr = member_offset(session, s_ptr)) < 0) {
        return NULL;
    }
    if (!PyType_Check(session) || !PyType_Check(peerkey)
            || !PyCallable_Check(mismatch) || !PyCallable_Check(mono)) {
        PyErr_SetString(PyExc_TypeError,
                        "_setup(Session, PeerKey, on_mismatch, monotonic, "
                        "up_ref)");
        return NULL;
    }
    Py_INCREF(session);
    Py_INCREF(peerkey);
    Py_INCREF(mismatch);
    Py_INCREF(mono);
    Py_XSETREF(session_type, session);
    Py_XSETREF(peerkey_type, peerkey);
    Py_XSETREF(on_mismatch, mismatch);
    Py_XSETREF(monotonic, mono);
    session_up_ref = (int (*)(void *))up_ref;
    session_free = (void (*)(void *))free_fn;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", setup, METH_VARARGS,
     "_setup(Session, PeerKey, on_mismatch, time.monotonic, addresses "
     "of SSL_SESSION_up_ref and SSL_SESSION_free): tell the core what it "
     "works with."},
    {NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tlsresume._cachecore",
    .m_doc = "The C core of tlsresume.SessionCache.",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__cachecore(void)
{
    PyObject *m;

    INTERN(s_slot, "_slot");
    INTERN(s_scope, "_scope");
    INTERN(s_facts, "_facts");
    INTERN(s_read_facts, "_read_facts");
    INTERN(s_ptr, "_ptr");
    INTERN(s_adopt_ref, "_adopt_ref");
    INTERN(s_close, "close");
    if (PyType_Ready(&PeerType) < 0 || PyType_Ready(&CoreType) < 0) {
        return NULL;
    }
    if ((m = PyModule_Create(&module_def)) == NULL) {
        return NULL;
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "_Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
