/* Reader: a consumer's read cursor and its recv() (see hotpath.h). */

#include "hotpath.h"

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

