/*
 * tlsresume._cachecore: the table behind tlsresume.SessionCache.
 *
 * A plain CPython extension, separate from the cffi binding: a cffi call
 * gives up and takes back the GIL every time, which alone costs more
 * than a whole take() here.  Python subclasses _Core (src/tlsresume/
 * cache.py) to check its arguments and to document it; take(), put(),
 * discard() and len() run here without a Python frame.
 *
 * Layout: an open-addressing hash table of Peers, each holding one
 * peer's sessions newest first; the Peers also form a doubly linked
 * list, least recently used first.  Peers are plain C structs: nothing
 * of the table can be reached, or changed, from Python.
 *
 * Keys: a PeerKey stands for its _slot, a tuple of the PeerKey class,
 * the host, the port and the digest; any other key must be a plain
 * value (str, bytes, int, float, bool, None, or a tuple of them).  Keys
 * are hashed before the lock is taken and compared by same_key(), which
 * is C through and through (it never asks Python whether b"a" == "a",
 * which can warn under -b).
 *
 * Locking: one mutex guards the table, and no Python code runs while it
 * is held: nothing is freed, nothing garbage-collected is made and no
 * exception is raised under it; failures are noted and raised after.
 * Closing dropped sessions, making a handle for take() and reading a
 * clock happen before or after.  Python code under the lock could call
 * back into the cache (a finalizer run by a collection, say) and wait
 * for the lock forever.  Under the GIL the lock is thus never
 * contended; it is taken as Python's own locks are all the same,
 * dropping the GIL only if it has to wait.
 *
 * Ownership: the table holds one reference to every Session in it, and
 * to every Peer's key.
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
static PyObject *s_dup_open, *s_close;

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
    struct Peer *older, *newer;  /* LRU links */
    PyObject *key;               /* owned: what keys() shows */
    PyObject *slot;              /* owned: what is compared */
    Py_hash_t hash;              /* of slot */
    Py_ssize_t count;
    Item *items;                 /* newest first; room for tickets + 1 */
} Peer;

/* A table entry that once held a Peer: probing goes on past it. */
#define TOMBSTONE ((Peer *)1)

typedef struct {
    PyObject_HEAD
    Peer **table;              /* NULL, TOMBSTONE or a Peer */
    Py_ssize_t size;           /* a power of two */
    Py_ssize_t filled;         /* Peers and tombstones */
    Py_ssize_t npeers;
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

/* Things to let go of once the lock is released: sessions to close and
 * Peers to free.  Growing it only allocates memory, which runs no
 * Python code; a failure is noted in ``nomem`` and raised later. */
typedef struct {
    PyObject *small[SMALL_DROP];
    PyObject **sessions;
    Py_ssize_t n, cap;
    Peer *peers;               /* linked through ->newer */
    int nomem;
} Drop;

static void
drop_init(Drop *d)
{
    d->sessions = d->small;
    d->n = 0;
    d->cap = SMALL_DROP;
    d->peers = NULL;
    d->nomem = 0;
}

/* Keep ``session`` (a reference handed over) for closing later. */
static int
drop_session(Drop *d, PyObject *session)
{
    PyObject **grown;

    if (d->n == d->cap) {
        grown = PyMem_Malloc(sizeof(PyObject *) * (size_t)d->cap * 2);
        if (grown == NULL) {
            d->nomem = 1;
            return -1;
        }
        memcpy(grown, d->sessions, sizeof(PyObject *) * (size_t)d->n);
        if (d->sessions != d->small) {
            PyMem_Free(d->sessions);
        }
        d->sessions = grown;
        d->cap *= 2;
    }
    d->sessions[d->n++] = session;
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

/* A Peer for a new key, or NULL.  Only memory is allocated (no Python
 * code runs), so it may be called under the lock. */
static Peer *
peer_new(PyObject *key, PyObject *slot, Py_hash_t hash,
         Py_ssize_t tickets)
{
    Peer *p = PyMem_Malloc(sizeof(Peer));

    if (p == NULL) {
        return NULL;
    }
    if ((p->items = PyMem_New(Item, tickets + 1)) == NULL) {
        PyMem_Free(p);
        return NULL;
    }
    p->older = p->newer = NULL;
    p->count = 0;
    p->hash = hash;
    Py_INCREF(key);
    p->key = key;
    Py_INCREF(slot);
    p->slot = slot;
    return p;
}

static void
peer_free(Peer *p)
{
    Py_ssize_t i;

    for (i = 0; i < p->count; i++) {
        Py_XDECREF(p->items[i].session);
    }
    PyMem_Free(p->items);
    Py_XDECREF(p->key);
    Py_XDECREF(p->slot);
    PyMem_Free(p);
}

/* Close every session kept in ``d``, free its Peers; with the lock
 * released.  Returns -1, with MemoryError set, if something could not
 * be kept under the lock (it was left in the table). */
static int
drop_finish(Drop *d)
{
    Peer *p, *next;
    Py_ssize_t i;

    for (i = 0; i < d->n; i++) {
        close_quietly(d->sessions[i]);
        Py_DECREF(d->sessions[i]);
    }
    if (d->sessions != d->small) {
        PyMem_Free(d->sessions);
    }
    for (p = d->peers; p != NULL; p = next) {
        next = p->newer;
        peer_free(p);
    }
    if (d->nomem) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
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

/* Keys ---------------------------------------------------------------- */

/* A value whose hashing runs no Python code, and that same_key() can
 * compare. */
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

/* Whether two slots (plain values, or PeerKey slot tuples) are the
 * same key: equal values of the same types.  C only: no __eq__, no
 * warnings. */
static int
same_key(PyObject *a, PyObject *b)
{
    PyTypeObject *t = Py_TYPE(a);
    Py_ssize_t i, n;

    if (a == b) {
        return 1;
    }
    if (t != Py_TYPE(b)) {
        return 0;
    }
    if (t == &PyUnicode_Type) {
        n = PyUnicode_GET_LENGTH(a);
        return n == PyUnicode_GET_LENGTH(b)
               && PyUnicode_KIND(a) == PyUnicode_KIND(b)
               && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
                         (size_t)(n * PyUnicode_KIND(a))) == 0;
    }
    if (t == &PyBytes_Type) {
        n = PyBytes_GET_SIZE(a);
        return n == PyBytes_GET_SIZE(b)
               && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b),
                         (size_t)n) == 0;
    }
    if (t == &PyLong_Type) {
        /* Two exact ints: straight to int's own comparison, which
         * cannot fail (PyObject_RichCompareBool could, with
         * RecursionError near the recursion limit). */
        PyObject *r = PyLong_Type.tp_richcompare(a, b, Py_EQ);
        int eq = r == Py_True;

        Py_XDECREF(r);
        return eq;
    }
    if (t == &PyFloat_Type) {
        return PyFloat_AS_DOUBLE(a) == PyFloat_AS_DOUBLE(b);
    }
    if (t == &PyTuple_Type) {
        n = PyTuple_GET_SIZE(a);
        if (n != PyTuple_GET_SIZE(b)) {
            return 0;
        }
        for (i = 0; i < n; i++) {
            if (!same_key(PyTuple_GET_ITEM(a, i), PyTuple_GET_ITEM(b, i))) {
                return 0;
            }
        }
        return 1;
    }
    return 0;  /* None, bools and the PeerKey class: identity, above */
}

/* The __slots__ member at ``offset`` of ``obj`` (an exact Session or
 * PeerKey), borrowed; NULL if unset. */
static PyObject *
member(PyObject *obj, Py_ssize_t offset)
{
    return *(PyObject **)((char *)obj + offset);
}

/* The slot ``key`` is filed under, a new reference, and its hash. */
static PyObject *
slot_of(PyObject *key, Py_hash_t *hash)
{
    PyObject *slot = key;
    Py_ssize_t i;

    if ((PyObject *)Py_TYPE(key) == peerkey_type) {
        slot = member(key, off_slot);
        /* Checked each time: object.__setattr__ can change it. */
        if (slot == NULL || !PyTuple_CheckExact(slot)
                || PyTuple_GET_SIZE(slot) != 4
                || PyTuple_GET_ITEM(slot, 0) != peerkey_type) {
            PyErr_SetString(PyExc_TypeError, "a PeerKey with a bad _slot");
            return NULL;
        }
        for (i = 1; i < 4; i++) {
            if (!plain(PyTuple_GET_ITEM(slot, i), 1)) {
                PyErr_SetString(PyExc_TypeError,
                                "a PeerKey with a bad _slot");
                return NULL;
            }
        }
    } else if (!plain(key, 0)) {
        PyErr_Format(PyExc_TypeError,
                     "a SessionCache key is a tlsresume.PeerKey or a plain "
                     "value (str, bytes, int, float, None, or a tuple of "
                     "them), not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    if ((*hash = PyObject_Hash(slot)) == -1) {
        return NULL;
    }
    Py_INCREF(slot);
    return slot;
}

/* The table ------------------------------------------------------------ */

/* Where the Peer for ``slot`` sits, or -1. */
static Py_ssize_t
find(Core *c, PyObject *slot, Py_hash_t hash)
{
    size_t mask = (size_t)c->size - 1, i = (size_t)hash & mask;
    Peer *e;

    while ((e = c->table[i]) != NULL) {
        if (e != TOMBSTONE && e->hash == hash && same_key(e->slot, slot)) {
            return (Py_ssize_t)i;
        }
        i = (i + 1) & mask;
    }
    return -1;
}

static void
place(Peer **table, Py_ssize_t size, Peer *p)
{
    size_t mask = (size_t)size - 1, i = (size_t)p->hash & mask;

    while (table[i] != NULL && table[i] != TOMBSTONE) {
        i = (i + 1) & mask;
    }
    table[i] = p;
}

/* File ``p``; -1 (nothing set) if the table could not grow. */
static int
file_peer(Core *c, Peer *p)
{
    Py_ssize_t size = c->size, i;
    size_t mask = (size_t)size - 1, j = (size_t)p->hash & mask;
    Peer **table;

    if ((c->filled + 1) * 3 >= size * 2) {
        /* Rebuilt without tombstones, at most two-thirds full after. */
        while ((c->npeers + 1) * 3 >= size) {
            size *= 2;
        }
        table = PyMem_Calloc((size_t)size, sizeof(Peer *));
        if (table == NULL) {
            return -1;
        }
        for (i = 0; i < c->size; i++) {
            if (c->table[i] != NULL && c->table[i] != TOMBSTONE) {
                place(table, size, c->table[i]);
            }
        }
        PyMem_Free(c->table);
        c->table = table;
        c->size = size;
        c->filled = c->npeers;
        mask = (size_t)size - 1;
        j = (size_t)p->hash & mask;
    }
    while (c->table[j] != NULL && c->table[j] != TOMBSTONE) {
        j = (j + 1) & mask;
    }
    if (c->table[j] == NULL) {
        c->filled++;
    }
    c->table[j] = p;
    c->npeers++;
    return 0;
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

/* Take ``p`` out of the table and the list; it goes to ``d`` to be
 * freed (its sessions must be moved out, or into ``d``, first). */
static void
unfile(Core *c, Peer *p, Drop *d)
{
    size_t mask = (size_t)c->size - 1, i = (size_t)p->hash & mask;

    /* By the pointer itself, not by key: p is filed, on its probe
     * chain. */
    while (c->table[i] != p) {
        i = (i + 1) & mask;
    }
    c->table[i] = TOMBSTONE;
    c->npeers--;
    lru_unlink(c, p);
    p->newer = d->peers;
    d->peers = p;
}

/* Move p's sessions into ``d``; returns how many moved.  Short of
 * memory, some stay in p (p->count > 0) and d->nomem is set. */
static Py_ssize_t
empty_into(Peer *p, Drop *d)
{
    Py_ssize_t n = 0;

    while (p->count > 0) {
        if (drop_session(d, p->items[p->count - 1].session) < 0) {
            break;
        }
        p->items[--p->count].session = NULL;
        n++;
    }
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

/* Clocks ------------------------------------------------------------- */

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

/* _Core ------------------------------------------------------------- */

static PyObject *
Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Core *c;

    if (session_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "tlsresume._cachecore._setup() was not called");
        return NULL;
    }
    if ((c = (Core *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    c->lock_made = pthread_mutex_init(&c->lock, NULL) == 0;
    c->size = 8;
    c->table = PyMem_Calloc((size_t)c->size, sizeof(Peer *));
    c->max_entries = 1;
    c->tickets = 1;
    Py_INCREF(Py_None);
    c->clock = Py_None;
    Py_INCREF(Py_None);
    c->wall = Py_None;
    if (!c->lock_made || c->table == NULL) {
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

static int
Core_traverse(Core *c, visitproc visit, void *arg)
{
    /* The table's keys and sessions cannot lead back to the cache
     * (plain values, PeerKeys, Sessions), so only the clocks are
     * visited. */
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
    Peer *p, *next;

    PyObject_GC_UnTrack(c);
    Core_clear(c);
    /* No other thread can see the cache any more. */
    for (p = c->lru; p != NULL; p = next) {
        next = p->newer;
        peer_free(p);
    }
    PyMem_Free(c->table);
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
    Py_hash_t hash;
    Py_ssize_t i;
    Peer *p = NULL;
    Item *it;
    Drop drop;
    void *address = NULL;
    double now;
    int live, stuck = 0;

    if (not_ready(c) || (slot = slot_of(key, &hash)) == NULL) {
        return NULL;
    }
    if (read_clock(c->clock, &now) < 0) {
        Py_DECREF(slot);
        return NULL;
    }
    drop_init(&drop);

    lock_core(c);
    if ((i = find(c, slot, hash)) >= 0) {
        p = c->table[i];
        while (p->count) {
            it = &p->items[0];
            /* Handles are exact Sessions (put() checks), so _ptr is
             * read in C.  A handle someone closed after put() took it
             * over is dropped like an expired one. */
            ptr = member(it->session, off_ptr);
            live = ptr != NULL && ptr != Py_None;
            if (live && now < it->deadline) {
                if (it->tls13) {
                    found = it->session;
                    remove_item(p, 0);
                    c->taken++;
                } else if (raw) {
                    /* The caller's own reference, taken under the lock
                     * so that no eviction frees the session first. */
                    if (session_up_ref(it->ssl_session) == 1) {
                        address = it->ssl_session;
                    }
                } else {
                    /* A handle of the caller's own is made after the
                     * lock, by the holder (which may be closed by
                     * then: see below). */
                    holder = it->session;
                    Py_INCREF(holder);
                }
                break;
            }
            if (drop_session(&drop, it->session) < 0) {
                stuck = 1;  /* kept, and MemoryError raised below */
                break;
            }
            remove_item(p, 0);
            if (live) {
                c->expirations++;
            } else {
                c->discards++;
            }
        }
        if (p->count) {
            lru_touch(c, p);
        } else {
            unfile(c, p, &drop);
        }
    }
    if (!stuck) {
        if (found || address || holder) {
            c->hits++;
        } else {
            c->misses++;
        }
    }
    unlock_core(c);

    Py_DECREF(slot);
    if (drop_finish(&drop) < 0) {
        if (found) {
            close_quietly(found);  /* a ticket no one will get */
            Py_DECREF(found);
        }
        Py_XDECREF(holder);
        if (address) {
            session_free(address);
        }
        return NULL;
    }
    if (address != NULL) {
        if ((r = PyLong_FromVoidPtr(address)) == NULL) {
            session_free(address);
        }
        return r;
    }
    if (holder != NULL) {
        /* None if the holder was closed since (evicted by another
         * thread): then this take found nothing after all. */
        found = PyObject_CallMethodNoArgs(holder, s_dup_open);
        Py_DECREF(holder);
        if (found == Py_None) {
            lock_core(c);
            c->hits--;
            c->misses++;
            unlock_core(c);
        }
        return found;
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

/* The session's (born, lifetime, tls13, address), read from OpenSSL
 * once per handle by Session._read_facts(); None when it is closed. */
static PyObject *
facts_of(PyObject *session)
{
    PyObject *facts = member(session, off_facts);

    if (facts == NULL || facts == Py_None) {
        facts = PyObject_CallMethodNoArgs(session, s_read_facts);
    } else {
        Py_INCREF(facts);
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

/* put() once the arguments are checked and the key's slot is known.
 * NULL: the session was not stored (the caller closes it). */
static PyObject *
put_slot(Core *c, PyObject *key, PyObject *slot, Py_hash_t hash,
         PyObject *session)
{
    PyObject *scope, *sslot, *facts, *ptr, *r, *held_ptr;
    Py_hash_t shash;
    Peer *p = NULL;
    Drop drop;
    double born, life, wall, now, left;
    void *address;
    Py_ssize_t i;
    int tls13, same = 1, dup = 0, failed = 0;

    if ((scope = member(session, off_scope)) == NULL) {
        PyErr_SetString(PyExc_TypeError, "an unfinished Session");
        return NULL;
    }
    if (scope != key) {
        /* The same key as the table sees it (True is not 1 here), so
         * that one handle can never be filed under two keys. */
        if ((sslot = slot_of(scope, &shash)) == NULL) {
            PyErr_Clear();
            same = 0;
        } else {
            same = shash == hash && same_key(sslot, slot);
            Py_DECREF(sslot);
        }
    }
    if (!same) {
        /* Closes the handle and raises SessionError. */
        r = PyObject_CallFunctionObjArgs(on_mismatch, key, session, NULL);
        Py_XDECREF(r);
        return NULL;
    }

    ptr = member(session, off_ptr);
    if (ptr == NULL || ptr == Py_None) {
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
    drop_init(&drop);

    lock_core(c);
    if ((i = find(c, slot, hash)) < 0) {
        p = peer_new(key, slot, hash, c->tickets);
        if (p == NULL || file_peer(c, p) < 0) {
            if (p != NULL) {
                p->newer = drop.peers;  /* freed after the lock */
                drop.peers = p;
            }
            drop.nomem = 1;
            failed = 1;
            goto unlock;
        }
        lru_append(c, p);
        if (c->npeers > c->max_entries) {
            Peer *old = c->lru;
            c->evictions += (unsigned long long)empty_into(old, &drop);
            if (old->count > 0) {
                /* Never above max_entries: the new peer goes again. */
                unfile(c, p, &drop);
                failed = 1;
                goto unlock;
            }
            unfile(c, old, &drop);
        }
    } else {
        p = c->table[i];
        for (i = 0; i < p->count; i++) {
            if (p->items[i].ssl_session != address) {
                continue;
            }
            held_ptr = member(p->items[i].session, off_ptr);
            if (held_ptr == NULL || held_ptr == Py_None) {
                /* Closed by a former owner: its SSL_SESSION may have
                 * been freed and the address reused.  Not this one. */
                continue;
            }
            /* Already held, by this handle or another on the same
             * SSL_SESSION: filing it twice would hand one ticket out
             * twice, or (TLS 1.2) close it while it stays filed.
             * Another handle is closed below, as put() owns it. */
            c->refused++;
            dup = p->items[i].session == session ? 1 : 2;
            goto unlock;
        }
        if (!(tls13 && p->count && p->items[0].tls13)) {
            /* One TLS 1.2 session per peer, and no mixing kinds. */
            c->evictions += (unsigned long long)empty_into(p, &drop);
            if (p->count > 0) {
                failed = 1;
                goto unlock;
            }
        } else if (p->count == c->tickets) {
            /* Full: the oldest ticket makes room. */
            if (drop_session(&drop, p->items[p->count - 1].session) < 0) {
                failed = 1;
                goto unlock;
            }
            p->items[--p->count].session = NULL;
            c->evictions++;
        }
        lru_touch(c, p);
    }
    memmove(&p->items[1], &p->items[0], (size_t)p->count * sizeof(Item));
    p->count++;
    p->items[0].deadline = now + left;
    Py_INCREF(session);
    p->items[0].session = session;
    p->items[0].ssl_session = address;
    p->items[0].tls13 = tls13;
    c->stores++;
unlock:
    unlock_core(c);

    if (drop_finish(&drop) < 0 || failed) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
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
    PyObject *session, *slot, *r;
    Py_hash_t hash;

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
        /* Exactly: its slots are then read in C, which take() relies
         * on under the lock. */
        PyErr_Format(PyExc_TypeError,
                     "put() needs a tlsresume.Session, not %.100s",
                     Py_TYPE(session)->tp_name);
        return NULL;
    }
    if ((slot = slot_of(args[0], &hash)) == NULL) {
        r = NULL;
    } else {
        r = put_slot(c, args[0], slot, hash, session);
        Py_DECREF(slot);
    }
    if (r == NULL) {
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
    Py_hash_t hash;
    Py_ssize_t i, n = 0;
    Peer *p;
    Drop drop;

    if (not_ready(c) || (slot = slot_of(key, &hash)) == NULL) {
        return NULL;
    }
    drop_init(&drop);
    lock_core(c);
    if ((i = find(c, slot, hash)) >= 0) {
        p = c->table[i];
        n = empty_into(p, &drop);
        c->discards += (unsigned long long)n;
        if (p->count == 0) {
            unfile(c, p, &drop);
        }  /* else MemoryError below; the rest stays */
    }
    unlock_core(c);
    Py_DECREF(slot);

    if (drop_finish(&drop) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(clear_doc,
"clear()\n--\n\n"
"Drop and close every session; return how many there were.");

static PyObject *
Core_clear_all(Core *c, PyObject *unused)
{
    Peer **table, **old, *peers, *p;
    Py_ssize_t size = 8, i;
    unsigned long long n;
    Drop drop;

    if (not_ready(c)) {
        return NULL;
    }
    if ((table = PyMem_Calloc((size_t)size, sizeof(Peer *))) == NULL) {
        return PyErr_NoMemory();
    }
    lock_core(c);
    old = c->table;
    peers = c->lru;
    c->table = table;
    c->size = size;
    c->filled = c->npeers = 0;
    c->lru = c->mru = NULL;
    n = held(c);
    c->discards += n;
    unlock_core(c);

    /* This thread alone sees the old Peers now. */
    PyMem_Free(old);
    drop_init(&drop);
    drop.peers = peers;  /* linked through ->newer already */
    for (p = peers; p != NULL; p = p->newer) {
        for (i = 0; i < p->count; i++) {
            close_quietly(p->items[i].session);
        }
    }
    drop_finish(&drop);
    return PyLong_FromUnsignedLongLong(n);
}

PyDoc_STRVAR(expire_doc,
"expire()\n--\n\n"
"Drop and close every expired session; return how many.\n\n"
"Takes time in proportion to the number of sessions held.");

static PyObject *
Core_expire(Core *c, PyObject *unused)
{
    Peer *p, *next;
    Py_ssize_t i, n = 0;
    double now;
    Drop drop;

    if (not_ready(c) || read_clock(c->clock, &now) < 0) {
        return NULL;
    }
    drop_init(&drop);
    lock_core(c);
    for (p = c->lru; p != NULL && !drop.nomem; p = next) {
        next = p->newer;
        for (i = 0; i < p->count; ) {
            if (now < p->items[i].deadline) {
                i++;
                continue;
            }
            if (drop_session(&drop, p->items[i].session) < 0) {
                break;
            }
            remove_item(p, i);
            c->expirations++;
            n++;
        }
        if (p->count == 0) {
            unfile(c, p, &drop);
        }
    }
    unlock_core(c);

    if (drop_finish(&drop) < 0) {
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
    PyObject *out = NULL;
    Py_ssize_t n = 0, i;
    Peer *p;

    if (not_ready(c)) {
        return NULL;
    }
    for (;;) {
        /* The list is made outside the lock, big enough; filled
         * under it, or made again if the cache grew meanwhile. */
        Py_XDECREF(out);
        if ((out = PyList_New(n)) == NULL) {
            return NULL;
        }
        lock_core(c);
        if (c->npeers == n) {
            for (i = 0, p = c->lru; p != NULL; p = p->newer, i++) {
                Py_INCREF(p->key);
                PyList_SET_ITEM(out, i, p->key);
            }
            unlock_core(c);
            return out;
        }
        n = c->npeers;
        unlock_core(c);
    }
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
    v[9] = (unsigned long long)c->npeers;
    unlock_core(c);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsK}", "hits", v[0], "misses", v[1],
        "taken", v[2], "stores", v[3], "evictions", v[4],
        "expirations", v[5], "discards", v[6], "refused", v[7],
        "sessions", v[8], "peers", v[9]);
}

/* White box, for the tests: what the table really holds, counted item
 * by item rather than from the counters; -1 if the list and the table
 * disagree. */
static PyObject *
Core_count(Core *c, PyObject *unused)
{
    Py_ssize_t n = 0, peers = 0, filed = 0, i;
    Peer *p;

    if (not_ready(c)) {
        return NULL;
    }
    lock_core(c);
    for (p = c->lru; p != NULL; p = p->newer) {
        n += p->count;
        peers++;
        i = find(c, p->slot, p->hash);
        if (p->count == 0 || i < 0 || c->table[i] != p) {
            n = -1;
            break;
        }
    }
    for (i = 0; i < c->size; i++) {
        if (c->table[i] != NULL && c->table[i] != TOMBSTONE) {
            filed++;
        }
    }
    if (n >= 0 && (peers != c->npeers || filed != c->npeers)) {
        n = -1;
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
    PyMemberDef *m;

    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%R has no slot %R", type, name);
        }
        return -1;
    }
    m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != T_OBJECT_EX || m->flags & READONLY) {
        PyErr_Format(PyExc_TypeError, "%R.%U is not a plain slot", type,
                     name);
        return -1;
    }
    return m->offset;
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
    Py_ssize_t o_slot, o_scope, o_facts, o_ptr;

    if (session_type != NULL) {
        /* Offsets in use by live caches must not change. */
        PyErr_SetString(PyExc_RuntimeError,
                        "tlsresume._cachecore is set up once");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOO&O&:_setup", &session, &peerkey,
                          &mismatch, &mono, address_arg, &up_ref,
                          address_arg, &free_fn)) {
        return NULL;
    }
    if (!PyType_Check(session) || !PyType_Check(peerkey)
            || !PyCallable_Check(mismatch) || !PyCallable_Check(mono)) {
        PyErr_SetString(PyExc_TypeError,
                        "_setup(Session, PeerKey, on_mismatch, monotonic, "
                        "up_ref, free)");
        return NULL;
    }
    if (up_ref == NULL || free_fn == NULL) {
        PyErr_SetString(PyExc_ValueError, "_setup: a NULL function");
        return NULL;
    }
    if ((o_slot = member_offset(peerkey, s_slot)) < 0
            || (o_scope = member_offset(session, s_scope)) < 0
            || (o_facts = member_offset(session, s_facts)) < 0
            || (o_ptr = member_offset(session, s_ptr)) < 0) {
        return NULL;
    }
    off_slot = o_slot;
    off_scope = o_scope;
    off_facts = o_facts;
    off_ptr = o_ptr;
    session_up_ref = (int (*)(void *))up_ref;
    session_free = (void (*)(void *))free_fn;
    Py_INCREF(peerkey);
    peerkey_type = peerkey;
    Py_INCREF(mismatch);
    on_mismatch = mismatch;
    Py_INCREF(mono);
    monotonic = mono;
    Py_INCREF(session);
    session_type = session;  /* last: it marks the module set up */
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", setup, METH_VARARGS,
     "_setup(Session, PeerKey, on_mismatch, time.monotonic, addresses "
     "of SSL_SESSION_up_ref and SSL_SESSION_free): tell the core, once, "
     "what it works with."},
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
    INTERN(s_dup_open, "_dup_open");
    INTERN(s_close, "close");
    if (PyType_Ready(&CoreType) < 0) {
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
