/* Message: one received message (see hotpath.h; the pure twin is shmbus/message.py).
 *
 * A message is released once its consumer's committed read position reaches its end
 * (positions only grow): by the next recv()/recv_many(), Message.release(),
 * Consumer.release() or close.  From then on ``data`` and ``bytes(msg)`` raise
 * shmbus.Released (the producer may have written another message there), and the
 * memoryview ``data`` returned earlier has been released by the reader (reader_commit):
 * using it raises ValueError instead of reading another message's bytes.
 *
 * ``data`` is made on first use (a slice of the reader's data view, or a view of the
 * checked read's copy), so a message whose payload is only copied (bytes(msg)) or not
 * looked at costs no memoryview at all.
 */

#include "hotpath.h"

static int
released(Message *self)
{
    return self->cur->committed >= self->end;
}

/* Raise shmbus.Released for this message (its text is shmbus.message's). */
static void
raise_released(Message *self)
{
    PyObject *mod = PyImport_ImportModule("shmbus.message");
    if (mod == NULL)
        return;
    PyObject *err = PyObject_CallMethod(mod, "released_error", "O", (PyObject *)self);
    Py_DECREF(mod);
    if (err == NULL)
        return;
    PyErr_SetObject((PyObject *)Py_TYPE(err), err);
    Py_DECREF(err);
}

PyObject *
message_make(Reader *cur, PyObject *key, PyObject *copy, Py_ssize_t start,
             Py_ssize_t length, uint64_t seq, uint64_t ts, uint64_t end)
{
    /* Steals key and copy (NULL: none), also on failure. */
    Message *m = PyObject_GC_New(Message, &MessageType);
    if (m == NULL) {
        Py_DECREF(key);
        Py_XDECREF(copy);
        return NULL;
    }
    m->view = NULL;
    m->copy = copy;
    m->key = key;
    Py_INCREF(cur);
    m->cur = cur;
    m->start = start;
    m->length = length;
    m->seq = seq;
    m->ts = ts;
    m->end = end;
    m->flags = 0;
    m->kept = 0;
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

static PyObject *
Message_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "key", "seq", "timestamp_ns", "consumer", "end",
                             "flags", NULL};
    PyObject *data, *key, *consumer;
    unsigned long long seq, ts, end;
    unsigned int flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOKKOK|I:Message", kwlist, &data, &key,
                                     &seq, &ts, &consumer, &end, &flags))
        return NULL;
    if (!PyMemoryView_Check(data) || (key != Py_None && !PyBytes_Check(key))) {
        PyErr_SetString(PyExc_TypeError, "Message(data: memoryview, key: bytes | None, "
                        "seq, timestamp_ns, consumer, end, flags=0)");
        return NULL;
    }
    PyObject *cur = PyObject_GetAttrString(consumer, "_cur");
    if (cur == NULL)
        return NULL;
    if (!PyObject_TypeCheck(cur, &ReaderType) || ((Reader *)cur)->owner != consumer) {
        Py_DECREF(cur);
        PyErr_SetString(PyExc_TypeError, "a compiled Message needs a consumer whose "
                        "cursor is a compiled Reader");
        return NULL;
    }
    Message *m = (Message *)type->tp_alloc(type, 0);
    if (m == NULL) {
        Py_DECREF(cur);
        return NULL;
    }
    Py_INCREF(data);
    m->view = data;
    Py_INCREF(key);
    m->key = key;
    m->cur = (Reader *)cur;
    m->length = PyObject_Length(data);
    m->seq = seq;
    m->ts = ts;
    m->end = end;
    m->flags = flags;
    if (m->length < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static int
Message_traverse(Message *self, visitproc visit, void *arg)
{
    Py_VISIT(self->view);
    Py_VISIT(self->copy);
    Py_VISIT(self->cur);
    return 0;
}

static int
Message_clear(Message *self)
{
    Py_CLEAR(self->view);
    Py_CLEAR(self->copy);
    Py_CLEAR(self->key);
    Py_CLEAR(self->cur);
    return 0;
}

static void
Message_dealloc(Message *self)
{
    PyObject_GC_UnTrack(self);
    Message_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Message_get_data(Message *self, void *c)
{
    if (self->cur == NULL || released(self)) {
        raise_released(self);
        return NULL;
    }
    if (self->view == NULL) {
        if (self->copy != NULL)
            self->view = PyMemoryView_FromObject(self->copy);
        else
            self->view = PySequence_GetSlice(self->cur->data_view, self->start,
                                             self->start + self->length);
        if (self->view == NULL)
            return NULL;
    }
    if (!self->kept) {
        if (reader_keep(self->cur, self->end, self->view) < 0)
            return NULL;
        self->kept = 1;
    }
    Py_INCREF(self->view);
    return self->view;
}

static PyObject *
Message_bytes(Message *self, PyObject *Py_UNUSED(ignored))
{
    if (self->cur == NULL || released(self)) {
        raise_released(self);
        return NULL;
    }
    if (self->copy != NULL) {  /* immutable: the copy itself */
        Py_INCREF(self->copy);
        return self->copy;
    }
    if (self->view != NULL)
        return PyBytes_FromObject(self->view);
    if (!self->cur->hold.held) {  /* cannot be while unreleased; never read unmapped */
        raise_released(self);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)self->cur->data + self->start,
                                     self->length);
}

static Py_ssize_t
Message_length(Message *self)
{
    if (self->cur == NULL || released(self)) {
        raise_released(self);
        return -1;
    }
    return self->length;
}

static PyObject *
Message_release(Message *self, PyObject *Py_UNUSED(ignored))
{
    if (self->cur == NULL || self->cur->owner == NULL)
        Py_RETURN_NONE;
    return PyObject_CallMethod(self->cur->owner, "_commit_to", "KK",
                               (unsigned long long)self->end,
                               (unsigned long long)self->seq + 1);
}

static PyObject *
Message_repr(Message *self)
{
    if (self->cur == NULL || released(self))
        return PyUnicode_FromFormat("<Message seq=%llu key=%R released>",
                                    (unsigned long long)self->seq,
                                    self->key ? self->key : Py_None);
    return PyUnicode_FromFormat("<Message seq=%llu key=%R %zd bytes>",
                                (unsigned long long)self->seq,
                                self->key ? self->key : Py_None, self->length);
}

static PyObject *
Message_get_key(Message *self, void *c)
{
    PyObject *key = self->key ? self->key : Py_None;
    Py_INCREF(key);
    return key;
}

static PyObject *
Message_get_seq(Message *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->seq);
}

static PyObject *
Message_get_timestamp_ns(Message *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->ts);
}

static PyObject *
Message_get_deliveries(Message *self, void *c)
{
    return PyLong_FromUnsignedLong((self->flags >> REC_REDELIVERY_SHIFT) + 1);
}

static PyObject *
Message_get_consumer(Message *self, void *c)
{
    PyObject *owner = self->cur && self->cur->owner ? self->cur->owner : Py_None;
    Py_INCREF(owner);
    return owner;
}

static PyObject *
Message_get_sender(Message *self, void *c)
{
    if (self->cur == NULL || self->cur->owner == NULL)
        Py_RETURN_NONE;
    return PyObject_GetAttrString(self->cur->owner, "sender");
}

static PyObject *
Message_get_end(Message *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->end);
}

static PyObject *
Message_get_flags(Message *self, void *c)
{
    return PyLong_FromUnsignedLong(self->flags);
}

static PyGetSetDef Message_getset[] = {
    {"data", (getter)Message_get_data, NULL,
     "The payload: a memoryview (into the ring: valid until the message is released;\n"
     "then it raises shmbus.Released, and a view taken before is released).", NULL},
    {"key", (getter)Message_get_key, NULL, "The key (bytes), or None.", NULL},
    {"seq", (getter)Message_get_seq, NULL, "The per-ring sequence number.", NULL},
    {"timestamp_ns", (getter)Message_get_timestamp_ns, NULL,
     "time.monotonic_ns() at send.", NULL},
    {"deliveries", (getter)Message_get_deliveries, NULL,
     "How many times this message has been delivered, this time included.", NULL},
    {"sender", (getter)Message_get_sender, NULL,
     "Who sent it: the receiving consumer's ``sender`` (None for a plain Consumer).",
     NULL},
    {"_consumer", (getter)Message_get_consumer, NULL, "The consumer it came from.", NULL},
    {"_end", (getter)Message_get_end, NULL, "The ring position after its record.", NULL},
    {"_flags", (getter)Message_get_flags, NULL, "Its record's flags.", NULL},
    {NULL}
};

static PyMethodDef Message_methods[] = {
    {"release", (PyCFunction)Message_release, METH_NOARGS,
     "release($self, /)\n--\n\nAcknowledge this message and every one received before "
     "it."},
    {"__bytes__", (PyCFunction)Message_bytes, METH_NOARGS,
     "__bytes__($self, /)\n--\n\nA copy of the payload (raises shmbus.Released once "
     "released)."},
    {NULL}
};

static PySequenceMethods Message_as_sequence = {
    .sq_length = (lenfunc)Message_length,
};

PyDoc_STRVAR(Message__doc__,
"Message(data, key, seq, timestamp_ns, consumer, end, flags=0)\n--\n\n"
"One received message (the compiled twin of shmbus.message.PyMessage).");

PyTypeObject MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._hotpath.Message",
    .tp_basicsize = sizeof(Message),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Message__doc__,
    .tp_new = Message_new,
    .tp_dealloc = (destructor)Message_dealloc,
    .tp_traverse = (traverseproc)Message_traverse,
    .tp_clear = (inquiry)Message_clear,
    .tp_repr = (reprfunc)Message_repr,
    .tp_as_sequence = &Message_as_sequence,
    .tp_methods = Message_methods,
    .tp_getset = Message_getset,
};
