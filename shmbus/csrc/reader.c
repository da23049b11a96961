/* Reader: a consumer's read cursor and its recv() (see hotpath.h). */

#include "hotpath.h"

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segment", "data_view", "data_offset", "capacity",
                             "pad_limit", "write_word", "tail_word",
                             "producer_sleep_word", "read_word", "next_word", "safe_from",
                             "pos", "committed", "expect", "owner", "take", "take_next",
                             "try_take", "wake", "spins", NULL};
    PyObject *segment, *data_view, *expect, *owner, *take, *take_next, *try_take, *wake;
    PyObject *safe_from;
    Py_ssize_t data_offset, write_word, tail_word, psleep_word, read_word, next_word;
    Py_ssize_t spins = 0;
    unsigned long long capacity, pad_limit, pos, committed;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OOnKKnnnnnOKKOOOOOO|n:Reader", kwlist, &segment, &data_view,
            &data_offset, &capacity, &pad_limit, &write_word, &tail_word, &psleep_word,
            &read_word, &next_word, &safe_from, &pos, &committed, &expect, &owner, &take,
            &take_next, &try_take, &wake, &spins))
        return -1;
    if (!PyCallable_Check(take) || !PyCallable_Check(take_next) ||
            !PyCallable_Check(try_take) || !PyCallable_Check(wake) ||
            !PyMemoryView_Check(data_view)) {
        PyErr_SetString(PyExc_TypeError, "data_view must be a memoryview; take, "
                        "take_next, try_take and wake callables");
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
    /* next_word 0: no next-seq word (block rings); word 0 is the magic, never a slot's */
    Py_ssize_t words[] = {write_word, tail_word, psleep_word, read_word, next_word};
    if (hold_segment(&self->hold, segment, data_offset, capacity, words, 5) < 0)
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
    self->tail_at = word_at(&self->hold, tail_word);
    self->psleep_at = word_at(&self->hold, psleep_word);
    self->read_at = word_at(&self->hold, read_word);
    self->next_at = next_word ? word_at(&self->hold, next_word) : NULL;
    self->mask = capacity - 1;
    self->pad_limit = pad_limit;
    self->safe_from = safe;
    self->pos = pos;
    self->committed = committed;
    self->wcache = 0;
    self->lapped = self->loose = 0;
    self->spins = spins < 0 ? 0 : (spins > SPIN_CHUNK ? SPIN_CHUNK : spins);
    if (expect == Py_None)
        self->has_expect = 0;
    else {
        self->expect = PyLong_AsUnsignedLongLong(expect);
        if (self->expect == (unsigned long long)-1 && PyErr_Occurred()) {
            let_go(&self->hold);
            return -1;
        }
        self->has_expect = 1;
    }
    Py_INCREF(data_view);
    Py_XSETREF(self->data_view, data_view);
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    Py_INCREF(take);
    Py_XSETREF(self->take, take);
    Py_INCREF(take_next);
    Py_XSETREF(self->take_next, take_next);
    Py_INCREF(try_take);
    Py_XSETREF(self->try_take, try_take);
    Py_INCREF(wake);
    Py_XSETREF(self->wake, wake);
    return 0;
}

/* Release views (memoryview.release()) of kept entries; a view with exports of its
 * own (a numpy array made from it) cannot be: it stays the user's to drop. */
static void
release_views(Kept *kept, Py_ssize_t n)
{
    static PyObject *release;  /* memoryview.release: every kept view is a memoryview */
    if (release == NULL && (release = PyObject_GetAttrString(
                                (PyObject *)&PyMemoryView_Type, "release")) == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyObject_CallOneArg(release, kept[i].view);
        if (r == NULL)
            PyErr_Clear();  /* BufferError: exports of its own */
        Py_XDECREF(r);
        Py_DECREF(kept[i].view);
    }
    PyErr_Restore(type, value, tb);
}

/* Let go of the kept views of messages that end at or before ``upto``. */
static void
release_kept(Reader *self, uint64_t upto)
{
    Py_ssize_t n = self->nkept, gone = 0, stay = 0;
    if (n == 0)
        return;
    Kept small[16];
    Kept *out = n <= 16 ? small : PyMem_Malloc(n * sizeof(Kept));
    if (out == NULL) {  /* no memory: release them later */
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (self->kept[i].end <= upto)
            out[gone++] = self->kept[i];
        else
            self->kept[stay++] = self->kept[i];
    }
    self->nkept = stay;  /* before any release: it runs no Python code, but be sure */
    release_views(out, gone);
    if (out != small)
        PyMem_Free(out);
}

int
reader_keep(Reader *self, uint64_t end, PyObject *view)
{
    if (self->nkept == self->kept_room) {
        Py_ssize_t room = self->kept_room ? 2 * self->kept_room : 8;
        Kept *kept = PyMem_Realloc(self->kept, room * sizeof(Kept));
        if (kept == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->kept = kept;
        self->kept_room = room;
    }
    Py_INCREF(view);
    self->kept[self->nkept].end = end;
    self->kept[self->nkept].view = view;
    self->nkept++;
    return 0;
}

/* Release up to ``end``: store the next seq (overwrite rings: before the position, see
 * Consumer._store_read) and the read position, release the views of the messages that
 * end there or before, wake a sleeping producer.  -1 if the wake-up raised. */
int
reader_commit(Reader *self, uint64_t end, int has_next, uint64_t next_seq)
{
    if (end <= self->committed)
        return 0;
    self->committed = end;
    if (self->hold.held) {
        if (self->next_at != NULL && has_next)
            store_release(self->next_at, next_seq + 1);
        store_release(self->read_at, end);
    }
    release_kept(self, end);
    if (!self->hold.held)
        return 0;
    uint64_t epoch = load_relaxed(self->psleep_at);  /* no fence: see Sequencer */
    if (epoch & 1) {
        PyObject *epoch_o = PyLong_FromUnsignedLongLong(epoch);
        if (epoch_o == NULL)
            return -1;
        PyObject *r = PyObject_CallOneArg(self->wake, epoch_o);
        Py_DECREF(epoch_o);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data_view);
    Py_VISIT(self->owner);
    Py_VISIT(self->take);
    Py_VISIT(self->take_next);
    Py_VISIT(self->try_take);
    Py_VISIT(self->wake);
    for (Py_ssize_t i = 0; i < self->nkept; i++)
        Py_VISIT(self->kept[i].view);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    Py_CLEAR(self->data_view);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->take);
    Py_CLEAR(self->take_next);
    Py_CLEAR(self->try_take);
    Py_CLEAR(self->wake);
    Py_ssize_t n = self->nkept;
    self->nkept = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(self->kept[i].view);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    let_go(&self->hold);
    Reader_clear(self);
    PyMem_Free(self->kept);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ready(Reader *self)
{
    if (self->take == NULL || self->owner == NULL || self->data_view == NULL ||
            self->take_next == NULL || self->try_take == NULL || self->wake == NULL) {
        PyErr_SetString(PyExc_TypeError, "Reader was not initialised");
        return 0;
    }
    return 1;
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

enum { TAKEN = 1, EMPTY = 0, UNUSUAL = 2, FAILED = -1 };

/* The next message if it is an ordinary record (TAKEN, *out set); EMPTY if nothing is
 * published; UNUSUAL for everything the Python path decides (padding, flags, a size
 * the ring cannot hold, a seq out of turn or not known, a lapped reader, a checked
 * read the producer overwrote meanwhile, a released segment).  Never waits.
 *
 * Each header field is copied from shared memory once; a record is used only if it
 * ends at or before wcache (the write position clipped to the end of this lap of the
 * data area), so every byte read lies inside the data area.  Checked reads (below
 * safe_from: overwrite rings, and data a new consumer found unprotected) copy key and
 * payload, then re-read TAIL: if the producer passed pos meanwhile, the copy may be
 * torn and is dropped.  Any allocation may run Python code (a collection: __del__ that
 * closes the consumer), so the segment is re-checked after each. */
static int
take_fast(Reader *self, PyObject **out)
{
    if (!self->hold.held)
        return UNUSUAL;
    uint64_t pos = self->pos, wcache = self->wcache;
    if (pos >= wcache) {
        uint64_t write = atomic_load_explicit((atomic_u64 *)self->write_at,
                                              memory_order_acquire);
        uint64_t lap_end = (pos | self->mask) + 1;
        wcache = self->wcache = write < lap_end ? write : lap_end;
        if (pos >= wcache)
            return pos > write ? UNUSUAL : EMPTY;  /* past WRITE: Python says corrupt */
    }
    uint64_t idx = pos & self->mask;
    if (idx > self->pad_limit || !self->has_expect)
        return UNUSUAL;  /* padding without a header; a first seq to judge */
    int checked = pos < self->safe_from;
    if (checked && (self->lapped || self->loose ||
                    pos < atomic_load_explicit((atomic_u64 *)self->tail_at,
                                               memory_order_acquire)))
        return UNUSUAL;  /* lapped: Python jumps to the oldest record and counts */
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
    if (flags || end > wcache || seq != self->expect)
        return UNUSUAL;
    PyObject *key = Py_None, *copy = NULL;
    if (klen) {
        key = PyBytes_FromStringAndSize(NULL, klen);
        if (key == NULL)
            return FAILED;
        if (!self->hold.held) {
            Py_DECREF(key);
            return UNUSUAL;
        }
        memcpy(PyBytes_AS_STRING(key), rec + RECORD_HEADER, klen);  /* fresh bytes */
    }
    else
        Py_INCREF(key);
    if (checked) {
        copy = PyBytes_FromStringAndSize(NULL, plen);
        if (copy == NULL) {
            Py_DECREF(key);
            return FAILED;
        }
        if (!self->hold.held) {
            Py_DECREF(key);
            Py_DECREF(copy);
            return UNUSUAL;
        }
        memcpy(PyBytes_AS_STRING(copy), rec + RECORD_HEADER + klen, plen);
        /* The copies happen before the second look at TAIL (a seqlock's reader). */
        atomic_thread_fence(memory_order_acquire);
        if (load_relaxed(self->tail_at) > pos) {  /* overwritten while we copied */
            Py_DECREF(key);
            Py_DECREF(copy);
            return UNUSUAL;
        }
    }
    PyObject *msg = message_make(self, key, copy, (Py_ssize_t)(idx + RECORD_HEADER + klen),
                                 (Py_ssize_t)plen, seq, ts, end);
    if (msg == NULL)
        return FAILED;
    if (!self->hold.held) {  /* closed meanwhile: the Python path says so */
        Py_DECREF(msg);
        return UNUSUAL;
    }
    self->expect = seq + 1;
    self->pos = end;
    *out = msg;
    return TAKEN;
}

/* take_fast, and if the ring is empty a bounded spin (unless told not to wait) and one
 * more look. */
static int
take_fast_or_spin(Reader *self, PyObject **out, PyObject *timeout)
{
    int got = take_fast(self, out);
    if (got != EMPTY || !self->spins || no_wait(timeout) ||
            !spin_until_above(self, self->pos))
        return got;
    return take_fast(self, out);
}

/* Arguments by position or keyword: ``names[i]`` into ``out[i]`` (left as is when not
 * given), the first ``required`` of them required; else TypeError ``usage``. */
static int
parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           const char *const *names, int count, int required, const char *usage,
           PyObject **out)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > count)
        goto bad;
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = nargs;
        while (i < count && PyUnicode_CompareWithASCIIString(name, names[i]) != 0)
            i++;
        if (i == count || out[i] != NULL)
            goto bad;
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < required; i++)
        if (out[i] == NULL)
            goto bad;
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError, usage);
    return -1;
}

/* Release what was received so far (the previous message or batch). */
static int
commit_pos(Reader *self)
{
    if (self->pos == self->committed)
        return 0;
    return reader_commit(self, self->pos, self->has_expect, self->expect);
}

PyDoc_STRVAR(Reader_recv__doc__,
"recv($self, /, timeout=None)\n--\n\n"
"Release the previous message and return the next one.  Consumer.recv's compiled\n"
"fast path: any case it does not take goes to the pure-Python take(timeout).");

static PyObject *
Reader_recv(Reader *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout = NULL, *msg = NULL;
    if (parse_args(args, nargs, kwnames, names, 1, 0,
                   "recv() takes one argument, timeout", &timeout) < 0 || !ready(self))
        return NULL;
    if (timeout == NULL)
        timeout = Py_None;
    if (commit_pos(self) < 0)
        return NULL;
    int got = take_fast_or_spin(self, &msg, timeout);
    if (got == TAKEN)
        return msg;
    if (got == FAILED)
        return NULL;
    return PyObject_CallOneArg(self->take, timeout);
}

PyDoc_STRVAR(Reader_try_recv__doc__,
"try_recv($self, /)\n--\n\n"
"Release the previous message and return the next one, or None if there is none\n"
"now (never waits, never calls Python for an empty ring).  Unusual cases go to the\n"
"pure-Python try_take().");

static PyObject *
Reader_try_recv(Reader *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *msg = NULL;
    if (!ready(self) || commit_pos(self) < 0)
        return NULL;
    int got = take_fast(self, &msg);
    if (got == TAKEN)
        return msg;
    if (got == FAILED)
        return NULL;
    if (got == EMPTY)  /* nothing published (a closed reader is UNUSUAL: Python raises) */
        Py_RETURN_NONE;
    return PyObject_CallNoArgs(self->try_take);
}

PyDoc_STRVAR(Reader_recv_many__doc__,
"recv_many($self, max_messages, /, timeout=None)\n--\n\n"
"Release the previous batch; wait up to timeout for a message (through take), then\n"
"return every message available now, at most max_messages.  Records the fast path\n"
"does not take go to take_next() (None: stop the batch before it).");

static PyObject *
Reader_recv_many(Reader *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    static const char *const names[] = {"max_messages", "timeout"};
    PyObject *given[2] = {NULL, NULL}, *msg = NULL;
    if (parse_args(args, nargs, kwnames, names, 2, 1,
                   "recv_many() takes max_messages and timeout", given) < 0 ||
            !ready(self))
        return NULL;
    PyObject *timeout = given[1] ? given[1] : Py_None;
    if (!PyLong_Check(given[0])) {
        PyErr_Format(PyExc_TypeError, "max_messages must be an int, got %R", given[0]);
        return NULL;
    }
    Py_ssize_t most = PyLong_AsSsize_t(given[0]);
    if (most == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        most = PY_SSIZE_T_MAX;
    }
    if (most < 1) {
        PyErr_Format(PyExc_ValueError, "max_messages must be >= 1, got %R", given[0]);
        return NULL;
    }
    if (commit_pos(self) < 0)
        return NULL;
    int got = take_fast_or_spin(self, &msg, timeout);
    if (got == FAILED)
        return NULL;
    if (got != TAKEN && (msg = PyObject_CallOneArg(self->take, timeout)) == NULL)
        return NULL;
    PyObject *batch = PyList_New(1);
    if (batch == NULL) {
        Py_DECREF(msg);
        return NULL;
    }
    PyList_SET_ITEM(batch, 0, msg);
    for (Py_ssize_t n = 1; n < most; n++) {
        got = take_fast(self, &msg);
        if (got == EMPTY)
            break;
        if (got == FAILED)
            goto error;
        if (got == UNUSUAL) {  /* padding, checked, corrupt: the Python path decides */
            if ((msg = PyObject_CallNoArgs(self->take_next)) == NULL)
                goto error;
            if (msg == Py_None) {  /* the next call waits, or raises */
                Py_DECREF(msg);
                break;
            }
        }
        int r = PyList_Append(batch, msg);
        Py_DECREF(msg);
        if (r < 0)
            goto error;
    }
    return batch;
error:
    Py_DECREF(batch);
    return NULL;
}

PyDoc_STRVAR(Reader_commit__doc__,
"commit($self, end, next_seq=None, /)\n--\n\n"
"Release every message that ends at or before end: store the next seq (if known, on\n"
"rings that keep it) and the read position, release their data views, wake a\n"
"sleeping producer.  Nothing if end is not past the committed position.");

static PyObject *
Reader_commit(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "commit(end, next_seq=None)");
        return NULL;
    }
    if (!ready(self))
        return NULL;
    unsigned long long end = PyLong_AsUnsignedLongLong(args[0]);
    if (end == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    unsigned long long next = 0;
    int has_next = nargs == 2 && args[1] != Py_None;
    if (has_next) {
        next = PyLong_AsUnsignedLongLong(args[1]);
        if (next == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    if (reader_commit(self, end, has_next, next) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Reader_release__doc__,
"release($self, /)\n--\n\n"
"Let go of the segment and release every data view handed out (idempotent); later\n"
"receives go to the slow path.");

static PyObject *
Reader_release(Reader *self, PyObject *Py_UNUSED(ignored))
{
    let_go(&self->hold);
    release_kept(self, UINT64_MAX);
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

#define FLAG_FIELD(field)                                                            \
    static PyObject *Reader_get_##field(Reader *self, void *c)                      \
    {                                                                                \
        return PyBool_FromLong(self->field);                                         \
    }                                                                                \
    static int Reader_set_##field(Reader *self, PyObject *v, void *c)               \
    {                                                                                \
        int x = v == NULL ? -1 : PyObject_IsTrue(v);                                 \
        if (x < 0) {                                                                 \
            if (v == NULL)                                                           \
                PyErr_SetString(PyExc_AttributeError, "cannot delete " #field);     \
            return -1;                                                               \
        }                                                                            \
        self->field = x;                                                             \
        return 0;                                                                    \
    }

FLAG_FIELD(lapped)
FLAG_FIELD(loose)

static PyGetSetDef Reader_getset[] = {
    {"pos", (getter)Reader_get_pos, (setter)Reader_set_pos,
     "Byte position of the next message to receive.", NULL},
    {"committed", (getter)Reader_get_committed, (setter)Reader_set_committed,
     "The read position last stored in the slot (what is released).", NULL},
    {"wcache", (getter)Reader_get_wcache, (setter)Reader_set_wcache,
     "The write position last read, clipped to the end of the lap.", NULL},
    {"expect", (getter)Reader_get_expect, (setter)Reader_set_expect,
     "The seq the next record must carry, or None when not known.", NULL},
    {"lapped", (getter)Reader_get_lapped, (setter)Reader_set_lapped,
     "Jumped over overwritten records: the next seq is judged in Python.", NULL},
    {"loose", (getter)Reader_get_loose, (setter)Reader_set_loose,
     "A resumed cursor whose next seq is judged in Python.", NULL},
    {NULL}
};

static PyMethodDef Reader_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))Reader_recv, METH_FASTCALL | METH_KEYWORDS,
     Reader_recv__doc__},
    {"try_recv", (PyCFunction)Reader_try_recv, METH_NOARGS, Reader_try_recv__doc__},
    {"recv_many", (PyCFunction)(void (*)(void))Reader_recv_many,
     METH_FASTCALL | METH_KEYWORDS, Reader_recv_many__doc__},
    {"commit", (PyCFunction)(void (*)(void))Reader_commit, METH_FASTCALL,
     Reader_commit__doc__},
    {"release", (PyCFunction)Reader_release, METH_NOARGS, Reader_release__doc__},
    {NULL}
};

PyDoc_STRVAR(Reader__doc__,
"Reader(segment, data_view, data_offset, capacity, pad_limit, write_word, tail_word,\n"
"       producer_sleep_word, read_word, next_word, safe_from, pos, committed, expect,\n"
"       owner, take, take_next, try_take, wake, spins=0)\n--\n\n"
"A consumer's read cursor over a mapped ring segment, with a compiled recv().");

PyTypeObject ReaderType = {
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

