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

/* What Room._reserve does for a record of ``size`` bytes at ``pos`` that neither
 * wraps nor needs room: record a checkpoint when pos starts a new block (as
 * ring.checkpoint: pos for each block up to pos's), and the limit that follows. */
void
sequencer_checkpoint(Sequencer *self, uint64_t pos, uint64_t size)
{
    if (pos >= self->cp_next) {
        uint64_t block = pos >> self->shift, first = self->cp_next >> self->shift;
        if (block - first >= CHECKPOINTS)
            first = block - (CHECKPOINTS - 1);  /* every entry gets pos anyway */
        for (uint64_t b = first; b <= block; b++)
            store_release(self->checkpoints_at + 8 * (b & (CHECKPOINTS - 1)), pos);
        self->cp_next = (block + 1) << self->shift;
    }
    if (pos + size > self->limit && self->limit)
        self->limit = self->room < self->cp_next ? self->room : self->cp_next;
}

/* Whether a record of ``size`` bytes at the cursor needs the slow path (Room._reserve):
 * it would wrap, it needs room, or the producer is closed, claimed or forked
 * (limit 0). */
int
sequencer_needs_reserve(Sequencer *self, uint64_t size)
{
    uint64_t pos = self->write;
    return (pos & self->mask) + size > self->capacity || size > self->max_record ||
           (pos + size > self->limit && (self->limit == 0 || pos + size > self->room));
}

/* Store the write position (publishing every record below it) and LAST, then wake
 * the sleepers if any is flagged.  The segment must be held. */
int
sequencer_publish(Sequencer *self, uint64_t end, uint64_t last)
{
    store_release(self->write_at, end);  /* publishes the records */
    store_release(self->last_at, last);
    /* No fence between the store above and this load: a sleeper falling asleep at
     * this moment can be missed, which shmbus/wait.py bounds (its first sleeps are
     * short), as the pure-Python path does. */
    if (load_relaxed(self->sleepers_at)) {
        PyObject *r = PyObject_CallNoArgs(self->wake);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Room._reserve(size, klen, n, timeout, deadline): where a record that needs the slow
 * path goes (it pads, makes room, checkpoints or refuses).  Returns 1 with *pos set;
 * 0 if the producer was closed meanwhile (the caller's pure-Python twin refuses);
 * -1 with an exception. */
int
sequencer_reserve(Sequencer *self, uint64_t size, Py_ssize_t klen, Py_ssize_t n,
                  PyObject *timeout, PyObject *deadline, uint64_t *pos)
{
    PyObject *at = PyObject_CallFunction(self->reserve, "KnnOO", size, klen, n, timeout,
                                         deadline);
    if (at == NULL)
        return -1;
    *pos = PyLong_AsUnsignedLongLong(at);
    Py_DECREF(at);
    if (*pos == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    if (!self->hold.held || *pos != self->write ||
            (*pos & self->mask) + size > self->capacity)
        return 0;
    return 1;
}

static inline void
write_record(unsigned char *rec, uint32_t length, uint16_t klen, uint16_t flags,
             uint64_t seq, uint64_t now, const char *key, const char *payload)
{
    memcpy(rec, &length, 4);
    memcpy(rec + 4, &klen, 2);
    memcpy(rec + 6, &flags, 2);
    memcpy(rec + 8, &seq, 8);
    memcpy(rec + 16, &now, 8);
    /* memmove: the payload may be a view of this very ring (msg.data sent again). */
    if (klen)
        memmove(rec + RECORD_HEADER, key, (size_t)klen);
    memmove(rec + RECORD_HEADER + klen, payload, (size_t)length);
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
        int got = sequencer_reserve(self, size, klen, n, timeout, Py_None, &pos);
        if (got <= 0) {
            if (view.obj)
                PyBuffer_Release(&view);
            if (got < 0)
                return NULL;
            goto slow;  /* closed meanwhile: the fallback refuses */
        }
        idx = pos & self->mask;
    }
    else
        sequencer_checkpoint(self, pos, size);
    uint64_t seq = self->seq;
    write_record(self->data + idx, (uint32_t)n, (uint16_t)klen, 0, seq, monotonic_ns(),
                 kp, dp);
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

/* One message of a batch: payload and key as pointers, and what to release. */
typedef struct {
    PyObject *data, *key;  /* new references */
    Py_buffer view;        /* the payload's buffer, unless it is bytes */
    const char *dp, *kp;
    Py_ssize_t n, klen;
} Item;

static void
item_release(Item *it)
{
    if (it->view.obj)
        PyBuffer_Release(&it->view);
    Py_CLEAR(it->data);
    Py_CLEAR(it->key);
}

/* Message i of a batch (and its key), if this path takes it: 1, else 0 (the pure loop
 * takes it, and says what is wrong with it). */
static int
item_get(Item *it, PyObject *messages, PyObject *keys, Py_ssize_t i)
{
    it->view.obj = NULL;
    it->data = it->key = NULL;
    /* The lists may have changed under us (a buffer's release runs Python code). */
    if (i >= PySequence_Fast_GET_SIZE(messages) ||
            (keys != Py_None && i >= PySequence_Fast_GET_SIZE(keys)))
        return 0;
    it->data = Py_NewRef(PySequence_Fast_GET_ITEM(messages, i));
    it->key = Py_NewRef(keys == Py_None ? Py_None : PySequence_Fast_GET_ITEM(keys, i));
    if (key_of(it->key, &it->kp, &it->klen) && payload_of(it->data, &it->view, &it->dp,
                                                           &it->n) && it->n <= UINT32_MAX)
        return 1;
    item_release(it);
    return 0;
}

PyDoc_STRVAR(Sequencer_send_many__doc__,
"send_many($self, messages, keys, stamps, flags, stamp, deadline, start, /)\n--\n\n"
"Write messages[start:] (a list or tuple; keys and stamps None or one per message)\n"
"as records with ``flags`` and the timestamp ``stamp`` (or stamps[i]), publishing\n"
"them with one store of the write position, or one before each call of the slow\n"
"path reserve(size, klen, n, None, deadline); return the index of the first message\n"
"not written: len(messages), or one this path does not take (the pure-Python loop\n"
"goes on from there, writing the same bytes).");

static PyObject *
Sequencer_send_many(Sequencer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "send_many takes 7 arguments");
        return NULL;
    }
    PyObject *messages = args[0], *keys = args[1], *stamps = args[2];
    PyObject *deadline = args[5];
    if (self->fallback == NULL || self->reserve == NULL) {
        PyErr_SetString(PyExc_TypeError, "Sequencer was not initialised");
        return NULL;
    }
    if (!(PyList_CheckExact(messages) || PyTuple_CheckExact(messages)) ||
            !(keys == Py_None || PyList_CheckExact(keys) || PyTuple_CheckExact(keys)) ||
            !(stamps == Py_None || PyList_CheckExact(stamps) || PyTuple_CheckExact(stamps))) {
        PyErr_SetString(PyExc_TypeError, "messages, keys and stamps must be lists or "
                        "tuples (or None for keys and stamps)");
        return NULL;
    }
    long flags = PyLong_AsLong(args[3]);
    unsigned long long stamp = PyLong_AsUnsignedLongLong(args[4]);
    Py_ssize_t i = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (flags < 0 || flags > 0xFFFF || i < 0) {
        PyErr_SetString(PyExc_ValueError, "flags must be 0..65535 and start >= 0");
        return NULL;
    }
    uint64_t pos = self->write, last = 0;
    int pending = 0;  /* records written and not yet published */
    for (;; i++) {
        Item it;
        if (!self->hold.held || !item_get(&it, messages, keys, i))
            break;
        uint64_t now = stamp;
        if (stamps != Py_None) {
            if (i >= PySequence_Fast_GET_SIZE(stamps)) {
                item_release(&it);
                break;
            }
            now = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(stamps, i));
            if (now == (uint64_t)-1 && PyErr_Occurred()) {
                PyErr_Clear();  /* the pure loop says what is wrong */
                item_release(&it);
                break;
            }
        }
        uint64_t size = ((uint64_t)RECORD_HEADER + 7 + (uint64_t)it.klen +
                         (uint64_t)it.n) & ~(uint64_t)7;
        if (!self->hold.held) {  /* getting a buffer may run Python code (a close) */
            item_release(&it);
            break;
        }
        self->write = pos;
        if (sequencer_needs_reserve(self, size)) {
            /* As the pure loop: publish what was written, then the slow path. */
            if (pending && sequencer_publish(self, pos, last) < 0) {
                item_release(&it);
                return NULL;
            }
            pending = 0;
            int got = self->hold.held ? sequencer_reserve(self, size, it.klen, it.n,
                                                          Py_None, deadline, &pos) : 0;
            if (got <= 0) {
                item_release(&it);
                if (got < 0)
                    return NULL;
                break;  /* closed meanwhile: the pure loop refuses */
            }
        }
        else
            sequencer_checkpoint(self, pos, size);
        uint64_t seq = self->seq;
        write_record(self->data + (pos & self->mask), (uint32_t)it.n, (uint16_t)it.klen,
                     (uint16_t)flags, seq, now, it.kp, it.dp);
        self->seq = seq + 1;
        last = pos;
        pos += size;
        self->write = pos;
        pending = 1;
        item_release(&it);  /* may run Python code: checked above before the next */
    }
    if (pending && self->hold.held && sequencer_publish(self, pos, last) < 0)
        return NULL;
    return PyLong_FromSsize_t(i);
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
    {"send_many", (PyCFunction)(void (*)(void))Sequencer_send_many, METH_FASTCALL,
     Sequencer_send_many__doc__},
    {"forward", (PyCFunction)(void (*)(void))Sequencer_forward, METH_FASTCALL,
     Sequencer_forward__doc__},
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

