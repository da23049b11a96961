/* shmbus._hotpath: the compiled hot path of shmbus (see shmbus/hotpath.py).
 *
 * One small type per concept, like CPython's own _struct or _queue:
 *
 *   Sequencer   the producer's cursor (write position, next seq, limit) and its
 *               send(): one record written and published in C;
 *   spin_above  the spin phase of waiting: a word read in a loop without the GIL;
 *   Reader      a consumer's read cursor (position, released position, cached write
 *               position, expected seq) and its recv(): one record checked and
 *               handed out as a Message (zero-copy: a memoryview slice of the ring).
 *
 * Every case this code does not take (a record that would wrap or needs room, a
 * checkpoint due, an unusual argument, a closed or claimed producer) is handed, with
 * the very same arguments, to the pure-Python send it stands in front of, which
 * shares this cursor: both paths write the same bytes (layout: shmbus/layout.py,
 * which passes every offset in; nothing here hard-codes the header).
 *
 * Memory ordering: the write position is published with a release store after the
 * record is written, so a consumer that loads it with acquire sees the whole record,
 * on weakly ordered CPUs too; a reader loads it with acquire before it reads records.
 * Memory safety: the segment is held as a buffer export (it cannot be unmapped while
 * this object holds it; release() lets go, and every call that may have run Python
 * code, which may have closed the owner, re-checks before it touches the segment
 * again); each length, offset and cursor read from shared memory is copied once and
 * checked against the ring before it is used.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmbus rings are little-endian; this CPU is not"
#endif

#define RECORD_HEADER 24 /* u32 length, u16 key length, u16 flags, u64 seq, u64 time */
#define RECORD_FORMAT "<IHHQQ"  /* the same, as shmbus.layout.RECORD: hotpath.py checks */
#define KEY_MAX 0xFFFF
#define CHECKPOINTS 64          /* entries of the checkpoint table (layout.CHECKPOINTS) */
#define SPIN_CHUNK 4096         /* most reads of a spin without a look at Python */

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "8-byte atomics must be lock-free: they are "
               "shared with other processes");

typedef _Atomic uint64_t atomic_u64;

static inline void
store_release(unsigned char *at, uint64_t value)
{
    atomic_store_explicit((atomic_u64 *)at, value, memory_order_release);
}

static inline uint64_t
load_relaxed(const unsigned char *at)
{
    return atomic_load_explicit((const atomic_u64 *)at, memory_order_relaxed);
}

static inline uint64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* what time.monotonic_ns() reads on Linux */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A mapped segment held as a buffer export: it cannot be unmapped while held. */
typedef struct {
    Py_buffer view;
    int held;
} Hold;

/* Hold ``segment`` (writable, 8-byte aligned) with a data area of ``capacity`` bytes
 * at ``data_offset`` after every one of the ``n`` header words in ``words``. */
static int
hold_segment(Hold *h, PyObject *segment, Py_ssize_t data_offset, uint64_t capacity,
             const Py_ssize_t *words, int n)
{
    if (h->held) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(segment, &h->view, PyBUF_WRITABLE) < 0)
        return -1;
    int ok = data_offset >= 0 && (uint64_t)(h->view.len - data_offset) >= capacity &&
             h->view.len >= data_offset && ((uintptr_t)h->view.buf & 7) == 0;
    for (int i = 0; i < n; i++)
        ok = ok && words[i] >= 0 && 8 * (words[i] + 1) <= data_offset;
    if (!ok) {
        PyBuffer_Release(&h->view);
        PyErr_SetString(PyExc_ValueError, "segment too small for its header words and "
                        "data area, or not 8-byte aligned");
        return -1;
    }
    h->held = 1;
    return 0;
}

static void
let_go(Hold *h)
{
    if (h->held) {
        h->held = 0;
        PyBuffer_Release(&h->view);
    }
}

static inline unsigned char *
word_at(Hold *h, Py_ssize_t word)
{
    return (unsigned char *)h->view.buf + 8 * word;
}

/* A read-write u64 attribute of an object type. */
#define U64_FIELD(Type, field)                                                       \
    static PyObject *Type##_get_##field(Type *self, void *c)                        \
    {                                                                                \
        return PyLong_FromUnsignedLongLong(self->field);                             \
    }                                                                                \
    static int Type##_set_##field(Type *self, PyObject *v, void *c)                 \
    {                                                                                \
        if (v == NULL) {                                                             \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #field);         \
            return -1;                                                               \
        }                                                                            \
        unsigned long long x = PyLong_AsUnsignedLongLong(v);                         \
        if (x == (unsigned long long)-1 && PyErr_Occurred())                         \
            return -1;                                                               \
        self->field = x;                                                             \
        return 0;                                                                    \
    }

/* ------------------------------------------------------------------------------- */
/* Sequencer                                                                        */

typedef struct {
    PyObject_HEAD
    Hold hold;                /* the whole mapped segment (let go by release()) */
    unsigned char *data;      /* the data area */
    unsigned char *write_at;  /* header word: WRITE */
    unsigned char *last_at;   /* header word: LAST */
    unsigned char *sleepers_at; /* header word: SLEEPERS (8 flag bytes) */
    unsigned char *checkpoints_at; /* header words: the CHECKPOINTS table */
    uint64_t capacity, mask, max_record;
    int shift;                /* log2 of a checkpoint block */
    uint64_t write, seq, limit, room, cp_next;
    PyObject *fallback;       /* the pure-Python send (same arguments) */
    PyObject *reserve;        /* the slow path: reserve(size, klen, n, timeout, None) */
    PyObject *wake;           /* called after a publish when a sleeper is flagged */
} Sequencer;

static int
Sequencer_init(Sequencer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "data_offset", "capacity", "max_record",
                             "write_word", "last_word", "sleepers_word",
                             "checkpoints_word", "shift", "write", "seq", "limit",
                             "room", "cp_next", "fallback", "wake", "reserve", NULL};
    PyObject *segment, *fallback, *wake, *reserve;
    Py_ssize_t data_offset, write_word, last_word, sleepers_word, checkpoints_word;
    int shift;
    unsigned long long capacity, max_record, write, seq, limit, room, cp_next;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OnKKnnnniKKKKKOOO:Sequencer", kwlist, &segment, &data_offset,
            &capacity, &max_record, &write_word, &last_word, &sleepers_word,
            &checkpoints_word, &shift, &write, &seq, &limit, &room, &cp_next, &fallback,
            &wake, &reserve))
        return -1;
    if (!PyCallable_Check(fallback) || !PyCallable_Check(wake) ||
            !PyCallable_Check(reserve)) {
        PyErr_SetString(PyExc_TypeError, "fallback, wake and reserve must be callable");
        return -1;
    }
    if (capacity < 4096 || (capacity & (capacity - 1)) || max_record > capacity / 2 ||
            max_record < RECORD_HEADER || shift < 1 || shift > 63 ||
            (capacity >> shift) != CHECKPOINTS) {
        PyErr_Format(PyExc_ValueError, "capacity %llu / max_record %llu are not a "
                     "shmbus ring's", capacity, max_record);
        return -1;
    }
    Py_ssize_t words[] = {write_word, last_word, sleepers_word, checkpoints_word,
                          checkpoints_word + CHECKPOINTS - 1};
    if (hold_segment(&self->hold, segment, data_offset, capacity, words, 5) < 0)
        return -1;
    self->checkpoints_at = word_at(&self->hold, checkpoints_word);
    self->shift = shift;
    self->room = room;
    self->cp_next = cp_next;
    self->data = word_at(&self->hold, 0) + data_offset;
    self->write_at = word_at(&self->hold, write_word);
    self->last_at = word_at(&self->hold, last_word);
    self->sleepers_at = word_at(&self->hold, sleepers_word);
    self->capacity = capacity;
    self->mask = capacity - 1;
    self->max_record = max_record;
    self->write = write;
    self->seq = seq;
    self->limit = limit;
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    Py_INCREF(wake);
    Py_XSETREF(self->wake, wake);
    Py_INCREF(reserve);
    Py_XSETREF(self->reserve, reserve);
    return 0;
}

static int
Sequencer_traverse(Sequencer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->wake);
    Py_VISIT(self->reserve);
    return 0;
}

static int
Sequencer_clear(Sequencer *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->wake);
    Py_CLEAR(self->reserve);
    return 0;
}

static void
Sequencer_dealloc(Sequencer *self)
{
    PyObject_GC_UnTrack(self);
    let_go(&self->hold);
    Sequencer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The payload as (pointer, length), for bytes and C-contiguous buffers; 0 if this
 * path does not take it (the fallback then says what is wrong). */
static int
payload_of(PyObject *data, Py_buffer *view, const char **p, Py_ssize_t *n)
{
    if (PyBytes_CheckExact(data)) {
        *p = PyBytes_AS_STRING(data);
        *n = PyBytes_GET_SIZE(data);
        view->obj = NULL;
        return 1;
    }
    if (PyObject_GetBuffer(data, view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 0;
    }
    *p = view->buf;
    *n = view->len;
    return 1;
}

static int
key_of(PyObject *key, const char **p, Py_ssize_t *n)
{
    if (key == Py_None) {
        *p = NULL;
        *n = 0;
        return 1;
    }
    if (PyBytes_CheckExact(key)) {
        *p = PyBytes_AS_STRING(key);
        *n = PyBytes_GET_SIZE(key);
    }
    else if (PyUnicode_CheckExact(key)) {
        *p = PyUnicode_AsUTF8AndSize(key, n);
        if (*p == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    else
        return 0;
    return *n <= KEY_MAX;
}

PyDoc_STRVAR(Sequencer_send__doc__,
"send($self, data, /, key=None, *, timeout=None)\n--\n\n"
"Publish one message; return its seq.  Producer.send's compiled fast path: any case\n"
"it does not take goes to the pure-Python send with the same arguments.");

static PyObject *
Sequencer_send(Sequencer *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    PyObject *key = Py_None, *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2 || !self->hold.held)
        goto slow;
    if (nargs == 2)
        key = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "key") == 0 && nargs == 1)
            key = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0)
            timeout = args[nargs + i];
        else
            goto slow;  /* the fallback raises the TypeError */
    }
    const char *kp, *dp;
    Py_ssize_t klen, n;
    if (!key_of(key, &kp, &klen))
        goto slow;
    Py_buffer view;
    if (!payload_of(args[0], &view, &dp, &n))
        goto slow;
    if (!self->hold.held) {  /* closed meanwhile: getting those buffers may run Python code */
        if (view.obj)
            PyBuffer_Release(&view);
        goto slow;
    }
    uint64_t size = ((uint64_t)RECORD_HEADER + 7 + (uint64_t)klen + (uint64_t)n) & ~(uint64_t)7;
    uint64_t pos = self->write, idx = pos & self->mask;
    if (n > UINT32_MAX || size > self->max_record) {  /* the fallback explains */
        if (view.obj)
            PyBuffer_Release(&view);
        goto slow;
    }
    if (idx + size > self->capacity || (pos + size > self->limit &&
                                         (self->limit == 0 || pos + size > self->room))) {
        /* Wrapping, a full ring (room), a closed or claimed producer (limit 0): the
         * Python slow path pads, makes room (waiting up to timeout), checkpoints or
         * refuses, and says where the record goes; it is then written here. */
        PyObject *at = PyObject_CallFunction(self->reserve, "KnnOO", size, klen, n,
                                             timeout, Py_None);
        if (at == NULL) {
            if (view.obj)
                PyBuffer_Release(&view);
            return NULL;
        }
        pos = PyLong_AsUnsignedLongLong(at);
        Py_DECREF(at);
        idx = pos & self->mask;
        if ((pos == (uint64_t)-1 && PyErr_Occurred()) || !self->hold.held ||
                pos != self->write || idx + size > self->capacity) {
            if (view.obj)
                PyBuffer_Release(&view);
            if (PyErr_Occurred())
                return NULL;
            goto slow;  /* closed meanwhile: the fallback refuses */
        }
    }
    else if (pos >= self->cp_next) {  /* as ring.checkpoint: pos for each block up to pos's */
        uint64_t block = pos >> self->shift, first = self->cp_next >> self->shift;
        if (block - first >= CHECKPOINTS)
            first = block - (CHECKPOINTS - 1);  /* every entry gets pos anyway */
        for (uint64_t b = first; b <= block; b++)
            store_release(self->checkpoints_at + 8 * (b & (CHECKPOINTS - 1)), pos);
        self->cp_next = (block + 1) << self->shift;
    }
    if (pos + size > self->limit && self->limit)
        self->limit = self->room < self->cp_next ? self->room : self->cp_next;
    unsigned char *rec = self->data + idx;
    uint32_t length = (uint32_t)n;
    uint16_t k16 = (uint16_t)klen, flags = 0;
    uint64_t seq = self->seq, now = monotonic_ns();
    memcpy(rec, &length, 4);
    memcpy(rec + 4, &k16, 2);
    memcpy(rec + 6, &flags, 2);
    memcpy(rec + 8, &seq, 8);
    memcpy(rec + 16, &now, 8);
    /* memmove: the payload may be a view of this very ring (msg.data sent again). */
    if (klen)
        memmove(rec + RECORD_HEADER, kp, (size_t)klen);
    memmove(rec + RECORD_HEADER + klen, dp, (size_t)n);
    self->seq = seq + 1;
    self->write = pos + size;
    store_release(self->write_at, pos + size);  /* publishes the record */
    store_release(self->last_at, pos);
    /* Releasing the payload's buffer may run Python code (and a close): only after
     * the last access to the segment. */
    if (view.obj)
        PyBuffer_Release(&view);
    /* No fence between the store above and this load: a sleeper falling asleep at
     * this moment can be missed, which shmbus/wait.py bounds (its first sleeps are
     * short), as the pure-Python path does.  (Held: the release above may have run a
     * close; then nobody is left to wake through this producer.) */
    if (self->hold.held && load_relaxed(self->sleepers_at)) {
        PyObject *r = PyObject_CallNoArgs(self->wake);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    return PyLong_FromUnsignedLongLong(seq);
slow:
    if (self->fallback == NULL || self->reserve == NULL) {
        PyErr_SetString(PyExc_TypeError, "Sequencer was not initialised");
        return NULL;
    }
    return PyObject_Vectorcall(self->fallback, args, nargs, kwnames);
}

PyDoc_STRVAR(Sequencer_release__doc__,
"release($self, /)\n--\n\n"
"Let go of the segment (idempotent); later sends go to the fallback.");

static PyObject *
Sequencer_release(Sequencer *self, PyObject *Py_UNUSED(ignored))
{
    let_go(&self->hold);
    Py_RETURN_NONE;
}

U64_FIELD(Sequencer, write)
U64_FIELD(Sequencer, seq)
U64_FIELD(Sequencer, limit)
U64_FIELD(Sequencer, room)
U64_FIELD(Sequencer, cp_next)

static PyGetSetDef Sequencer_getset[] = {
    {"write", (getter)Sequencer_get_write, (setter)Sequencer_set_write,
     "Byte position where the next record goes (end of the last one published).", NULL},
    {"seq", (getter)Sequencer_get_seq, (setter)Sequencer_set_seq,
     "The seq the next message will carry.", NULL},
    {"limit", (getter)Sequencer_get_limit, (setter)Sequencer_set_limit,
     "min(room, cp_next), or 0 while sends must go to the slow path.", NULL},
    {"room", (getter)Sequencer_get_room, (setter)Sequencer_set_room,
     "Records may end at or below it without making room (tail + capacity).", NULL},
    {"cp_next", (getter)Sequencer_get_cp_next, (setter)Sequencer_set_cp_next,
     "Start of the next checkpoint block to record.", NULL},
    {NULL}
};

static PyMethodDef Sequencer_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Sequencer_send, METH_FASTCALL | METH_KEYWORDS,
     Sequencer_send__doc__},
    {"release", (PyCFunction)Sequencer_release, METH_NOARGS, Sequencer_release__doc__},
    {NULL}
};

PyDoc_STRVAR(Sequencer__doc__,
"Sequencer(segment, data_offset, capacity, max_record, write_word, last_word,\n"
"          sleepers_word, checkpoints_word, shift, write, seq, limit, room, cp_next,\n"
"          fallback, wake, reserve)\n--\n\n"
"The producer's cursor over a mapped ring segment, with a compiled send().");

static PyTypeObject SequencerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._hotpath.Sequencer",
    .tp_basicsize = sizeof(Sequencer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Sequencer__doc__,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sequencer_init,
    .tp_dealloc = (destructor)Sequencer_dealloc,
    .tp_traverse = (traverseproc)Sequencer_traverse,
    .tp_clear = (inquiry)Sequencer_clear,
    .tp_methods = Sequencer_methods,
    .tp_getset = Sequencer_getset,
};

/* ------------------------------------------------------------------------------- */
/* Reader                                                                           */

typedef struct {
    PyObject_HEAD
    Hold hold;                /* the whole mapped segment (let go by release()) */
    unsigned char *data;      /* the data area */
    unsigned char *write_at;  /* header word: WRITE */
    unsigned char *psleep_at; /* header word: the producer's SLEEP epoch */
    unsigned char *read_at;   /* this consumer's slot: READ */
    uint64_t mask, pad_limit, safe_from;
    uint64_t pos, committed, wcache, expect;
    int has_expect;           /* expect is known (else the Python path decides) */
    Py_ssize_t spins;         /* reads of WRITE before an empty recv goes to Python */
    PyObject *data_view;      /* memoryview of the data area: payloads slice it */
    PyTypeObject *message_type;
    PyObject *owner;          /* the Consumer, as each Message names it */
    PyObject *take;           /* the pure-Python slow path: take(timeout) */
    PyObject *wake;           /* wakes a sleeping producer: wake(epoch) */
} Reader;

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "data_view", "data_offset", "capacity",
                             "pad_limit", "write_word", "producer_sleep_word",
                             "read_word", "safe_from", "pos", "committed", "expect",
                             "message_type", "owner", "take", "wake", "spins", NULL};
    PyObject *segment, *data_view, *expect, *message_type, *owner, *take, *wake;
    PyObject *safe_from;
    Py_ssize_t data_offset, write_word, psleep_word, read_word, spins = 0;
    unsigned long long capacity, pad_limit, pos, committed;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OOnKKnnnOKKOOOOO|n:Reader", kwlist, &segment, &data_view,
            &data_offset, &capacity, &pad_limit, &write_word, &psleep_word, &read_word,
            &safe_from, &pos, &committed, &expect, &message_type, &owner, &take, &wake,
            &spins))
        return -1;
    if (!PyType_Check(message_type) ||
            !PyType_IsSubtype((PyTypeObject *)message_type, &PyTuple_Type) ||
            !PyCallable_Check(take) || !PyCallable_Check(wake) ||
            !PyMemoryView_Check(data_view)) {
        PyErr_SetString(PyExc_TypeError, "message_type must be a tuple subclass, "
                        "data_view a memoryview, take and wake callables");
        return -1;
    }
    if (capacity < 4096 || (capacity & (capacity - 1)) ||
            pad_limit + RECORD_HEADER > capacity) {
        PyErr_SetString(PyExc_ValueError, "capacity / pad_limit are not a ring's");
        return -1;
    }
    /* safe_from may be "never" (2**64 - 1 or more): every read is then checked. */
    unsigned long long safe = PyLong_AsUnsignedLongLong(safe_from);
    if (safe == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        safe = UINT64_MAX;
    }
    if (PyObject_Length(data_view) != (Py_ssize_t)capacity) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "data_view is not the data area");
        return -1;
    }
    Py_ssize_t words[] = {write_word, psleep_word, read_word};
    if (hold_segment(&self->hold, segment, data_offset, capacity, words, 3) < 0)
        return -1;
    Py_buffer *dv = PyMemoryView_GET_BUFFER(data_view);
    if (dv->buf != word_at(&self->hold, 0) + data_offset || dv->itemsize != 1 ||
            dv->len != (Py_ssize_t)capacity) {
        let_go(&self->hold);
        PyErr_SetString(PyExc_ValueError, "data_view is not the segment's data area");
        return -1;
    }
    self->data = word_at(&self->hold, 0) + data_offset;
    self->write_at = word_at(&self->hold, write_word);
    self->psleep_at = word_at(&self->hold, psleep_word);
    self->read_at = word_at(&self->hold, read_word);
    self->mask = capacity - 1;
    self->pad_limit = pad_limit;
    self->safe_from = safe;
    self->pos = pos;
    self->committed = committed;
    self->wcache = 0;
    self->spins = spins < 0 ? 0 : (spins > SPIN_CHUNK ? SPIN_CHUNK : spins);
    if (expect == Py_None)
        self->has_expect = 0;
    else {
        self->expect = PyLong_AsUnsignedLongLong(expect);
        if (self->expect == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        self->has_expect = 1;
    }
    Py_INCREF(data_view);
    Py_XSETREF(self->data_view, data_view);
    Py_INCREF(message_type);
    Py_XSETREF(self->message_type, (PyTypeObject *)message_type);
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    Py_INCREF(take);
    Py_XSETREF(self->take, take);
    Py_INCREF(wake);
    Py_XSETREF(self->wake, wake);
    return 0;
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data_view);
    Py_VISIT(self->message_type);
    Py_VISIT(self->owner);
    Py_VISIT(self->take);
    Py_VISIT(self->wake);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    Py_CLEAR(self->data_view);
    Py_CLEAR(self->message_type);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->take);
    Py_CLEAR(self->wake);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    let_go(&self->hold);
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whether ``timeout`` says not to wait at all (a number <= 0: try_recv, recv(0)). */
static int
no_wait(PyObject *timeout)
{
    if (timeout == Py_None)
        return 0;
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();  /* not a number: the Python path says so */
        return 1;
    }
    return t <= 0.0;
}

/* Read WRITE up to self->spins times, without the GIL, until it is past pos; 1 if it
 * is (and the segment is still held).  A second export of the segment keeps it
 * mapped even if another thread closes the consumer meanwhile. */
static int
spin_until_above(Reader *self, uint64_t pos)
{
    Py_buffer keep;
    if (PyObject_GetBuffer(self->hold.view.obj, &keep, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    const atomic_u64 *at = (const atomic_u64 *)self->write_at;
    Py_ssize_t spins = self->spins;
    int above = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < spins; i++) {
        if (atomic_load_explicit(at, memory_order_acquire) > pos) {
            above = 1;
            break;
        }
        cpu_relax();
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&keep);
    return above && self->hold.held;
}

PyDoc_STRVAR(Reader_recv__doc__,
"recv($self, /, timeout=None)\n--\n\n"
"Release the previous message and return the next one.  Consumer.recv's compiled\n"
"fast path: any case it does not take goes to the pure-Python take(timeout).");

static PyObject *
Reader_recv(Reader *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
            (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                                     "timeout") != 0)) {
        PyErr_SetString(PyExc_TypeError, "recv() takes one argument, timeout");
        return NULL;
    }
    PyObject *timeout = nargs + nkw ? args[0] : Py_None;
    if (self->take == NULL || self->owner == NULL || self->data_view == NULL ||
            self->message_type == NULL || self->wake == NULL) {
        PyErr_SetString(PyExc_TypeError, "Reader was not initialised");
        return NULL;
    }
    if (!self->hold.held)
        goto slow;
    uint64_t pos = self->pos;
    if (pos != self->committed) {  /* release the previous message */
        store_release(self->read_at, pos);
        self->committed = pos;
        uint64_t epoch = load_relaxed(self->psleep_at);  /* no fence: see Sequencer */
        if (epoch & 1) {
            PyObject *epoch_o = PyLong_FromUnsignedLongLong(epoch);
            if (epoch_o == NULL)
                return NULL;
            PyObject *r = PyObject_CallOneArg(self->wake, epoch_o);
            Py_DECREF(epoch_o);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            if (!self->hold.held)
                goto slow;
        }
    }
    /* wcache: the write position, clipped to the end of pos's lap of the data area:
     * a record ending at or before it is published and inside the ring. */
    uint64_t wcache = self->wcache;
    if (pos >= wcache) {
        uint64_t write = atomic_load_explicit((atomic_u64 *)self->write_at,
                                              memory_order_acquire);
        uint64_t lap_end = (pos | self->mask) + 1;
        wcache = self->wcache = write < lap_end ? write : lap_end;
        if (pos >= wcache) {  /* nothing published: spin a little, then Python waits */
            if (!self->spins || no_wait(timeout) || !spin_until_above(self, pos))
                goto slow;
            write = atomic_load_explicit((atomic_u64 *)self->write_at,
                                         memory_order_acquire);
            wcache = self->wcache = write < lap_end ? write : lap_end;
        }
    }
    uint64_t idx = pos & self->mask;
    if (pos < self->safe_from || idx > self->pad_limit)
        goto slow;  /* a checked read, or padding without a header */
    const unsigned char *rec = self->data + idx;
    uint32_t plen;
    uint16_t klen, flags;
    uint64_t seq, ts;
    memcpy(&plen, rec, 4);
    memcpy(&klen, rec + 4, 2);
    memcpy(&flags, rec + 6, 2);
    memcpy(&seq, rec + 8, 8);
    memcpy(&ts, rec + 16, 8);
    uint64_t end = pos + (((uint64_t)RECORD_HEADER + 7 + klen + plen) & ~(uint64_t)7);
    /* Padding, flags, a size the ring cannot hold, a seq out of turn: the Python path
     * skips, checks, or raises CorruptRing. */
    if (flags || end > wcache || !self->has_expect || seq != self->expect)
        goto slow;
    PyObject *key = Py_None, *payload = NULL, *msg = NULL;
    if (klen) {
        key = PyBytes_FromStringAndSize(NULL, klen);
        if (key == NULL)
            return NULL;
        if (!self->hold.held) {  /* closed meanwhile (the allocation ran Python code) */
            Py_DECREF(key);
            goto slow;
        }
        memcpy(PyBytes_AS_STRING(key), rec + RECORD_HEADER, klen);  /* fresh bytes */
    }
    else
        Py_INCREF(key);
    Py_ssize_t start = (Py_ssize_t)idx + RECORD_HEADER + klen;
    payload = PySequence_GetSlice(self->data_view, start, start + (Py_ssize_t)plen);
    if (payload == NULL)
        goto error;
    msg = self->message_type->tp_alloc(self->message_type, 7);
    if (msg == NULL)
        goto error;
    PyObject *seq_o = PyLong_FromUnsignedLongLong(seq);
    PyObject *ts_o = PyLong_FromUnsignedLongLong(ts);
    PyObject *end_o = PyLong_FromUnsignedLongLong(end);
    PyObject *flags_o = PyLong_FromLong(0);
    if (!seq_o || !ts_o || !end_o || !flags_o) {
        Py_XDECREF(seq_o);
        Py_XDECREF(ts_o);
        Py_XDECREF(end_o);
        Py_XDECREF(flags_o);
        goto error;
    }
    PyTuple_SET_ITEM(msg, 0, payload);
    PyTuple_SET_ITEM(msg, 1, key);
    PyTuple_SET_ITEM(msg, 2, seq_o);
    PyTuple_SET_ITEM(msg, 3, ts_o);
    Py_INCREF(self->owner);
    PyTuple_SET_ITEM(msg, 4, self->owner);
    PyTuple_SET_ITEM(msg, 5, end_o);
    PyTuple_SET_ITEM(msg, 6, flags_o);
    self->expect = seq + 1;
    self->pos = end;
    return msg;
error:
    Py_XDECREF(key);
    Py_XDECREF(payload);
    Py_XDECREF(msg);
    return NULL;
slow:
    return PyObject_CallOneArg(self->take, timeout);
}

PyDoc_STRVAR(Reader_release__doc__,
"release($self, /)\n--\n\n"
"Let go of the segment (idempotent); later receives go to the slow path.");

static PyObject *
Reader_release(Reader *self, PyObject *Py_UNUSED(ignored))
{
    let_go(&self->hold);
    Py_RETURN_NONE;
}

U64_FIELD(Reader, pos)
U64_FIELD(Reader, committed)
U64_FIELD(Reader, wcache)

static PyObject *
Reader_get_expect(Reader *self, void *c)
{
    if (!self->has_expect)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->expect);
}

static int
Reader_set_expect(Reader *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete expect");
        return -1;
    }
    if (v == Py_None) {
        self->has_expect = 0;
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    self->expect = x;
    self->has_expect = 1;
    return 0;
}

static PyGetSetDef Reader_getset[] = {
    {"pos", (getter)Reader_get_pos, (setter)Reader_set_pos,
     "Byte position of the next message to receive.", NULL},
    {"committed", (getter)Reader_get_committed, (setter)Reader_set_committed,
     "The read position last stored in the slot (what is released).", NULL},
    {"wcache", (getter)Reader_get_wcache, (setter)Reader_set_wcache,
     "The write position last read, clipped to the end of the lap.", NULL},
    {"expect", (getter)Reader_get_expect, (setter)Reader_set_expect,
     "The seq the next record must carry, or None when not known.", NULL},
    {NULL}
};

static PyMethodDef Reader_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))Reader_recv, METH_FASTCALL | METH_KEYWORDS,
     Reader_recv__doc__},
    {"release", (PyCFunction)Reader_release, METH_NOARGS, Reader_release__doc__},
    {NULL}
};

PyDoc_STRVAR(Reader__doc__,
"Reader(segment, data_view, data_offset, capacity, pad_limit, write_word,\n"
"       producer_sleep_word, read_word, safe_from, pos, committed, expect,\n"
"       message_type, owner, take, wake)\n--\n\n"
"A consumer's read cursor over a mapped ring segment, with a compiled recv().");

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._hotpath.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Reader__doc__,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

/* ------------------------------------------------------------------------------- */
/* Spinning                                                                         */

PyDoc_STRVAR(spin_above__doc__,
"spin_above($module, segment, word, value, spins, /)\n--\n\n"
"Read the 8-byte word at index ``word`` of ``segment`` until it is greater than\n"
"``value``, at most ``spins`` times, without the GIL (other threads run meanwhile);\n"
"return whether it became greater.  The spin phase of a wait strategy: callers spin in\n"
"bounded chunks and check signals, deadlines and closing between them.");

static PyObject *
spin_above(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "spin_above(segment, word, value, spins)");
        return NULL;
    }
    Py_ssize_t word = PyLong_AsSsize_t(args[1]);
    if (word == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long value = PyLong_AsUnsignedLongLong(args[2]);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t spins = PyLong_AsSsize_t(args[3]);
    if (spins == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (word < 0 || 8 * (word + 1) > view.len || ((uintptr_t)view.buf & 7)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "word is outside the segment");
        return NULL;
    }
    /* The export keeps the segment mapped while the GIL is released. */
    const atomic_u64 *at = (const atomic_u64 *)((unsigned char *)view.buf + 8 * word);
    int above = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < spins; i++) {
        if (atomic_load_explicit(at, memory_order_acquire) > value) {
            above = 1;
            break;
        }
        cpu_relax();
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(above);
}

static PyMethodDef hotpath_functions[] = {
    {"spin_above", (PyCFunction)(void (*)(void))spin_above, METH_FASTCALL,
     spin_above__doc__},
    {NULL}
};

/* ------------------------------------------------------------------------------- */

#ifndef SHMBUS_SOURCE_HASH
#define SHMBUS_SOURCE_HASH "unknown"
#endif

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmbus._hotpath",
    .m_doc = "shmbus's compiled hot path (see shmbus/hotpath.py).",
    .m_size = -1,
    .m_methods = hotpath_functions,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    PyObject *m = PyModule_Create(&hotpath_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddType(m, &SequencerType) < 0 || PyModule_AddType(m, &ReaderType) < 0 ||
            PyModule_AddStringConstant(m, "SOURCE_HASH", SHMBUS_SOURCE_HASH) < 0 ||
            PyModule_AddStringConstant(m, "RECORD_FORMAT", RECORD_FORMAT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
