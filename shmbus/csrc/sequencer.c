/* Sequencer: the producer's cursor and its send() (see hotpath.h). */

#include "hotpath.h"

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

PyTypeObject SequencerType = {
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

