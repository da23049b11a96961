/* Forwarding whole records from one ring to another (shmbus/forward.py's compiled
 * twin), and routing them by key (the balancer's consistent hash):
 *
 *   Sequencer.forward  copy records of a run taken from an input ring into the
 *                    producer's ring, with the ring's next seqs and given flags,
 *                    checkpointed and published as Room._reserve and send do;
 *   scan_records     take a run: walk the records a consumer may take at once;
 *   hash64           BLAKE2b with an 8-byte digest, as an int read little-endian:
 *                    exactly shmbus.balancer.policies.hash64;
 *   KeyRouter        a consistent-hash ring (sorted points, an owner index per
 *                    point) and route(): each record's owner, from its key.
 */

#include "hotpath.h"

/* -- BLAKE2b (RFC 7693), unkeyed, 8-byte digest ------------------------------------- */

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define B2B_G(a, b, c, d, x, y)                   \
    do {                                          \
        v[a] = v[a] + v[b] + (x);                 \
        v[d] = ROTR64(v[d] ^ v[a], 32);           \
        v[c] = v[c] + v[d];                       \
        v[b] = ROTR64(v[b] ^ v[c], 24);           \
        v[a] = v[a] + v[b] + (y);                 \
        v[d] = ROTR64(v[d] ^ v[a], 16);           \
        v[c] = v[c] + v[d];                       \
        v[b] = ROTR64(v[b] ^ v[c], 63);           \
    } while (0)

static void
blake2b_compress(uint64_t h[8], const unsigned char block[128], uint64_t counted,
                 int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= counted;  /* the counter's high word stays 0: keys are < 2**64 bytes */
    if (last)
        v[14] = ~v[14];
    memcpy(m, block, 128);  /* little-endian words: this CPU is (hotpath.h) */
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = blake2b_sigma[r];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* hashlib.blake2b(data, digest_size=8).digest(), read as a little-endian u64. */
static uint64_t
hash64_of(const unsigned char *data, size_t n)
{
    uint64_t h[8];
    unsigned char block[128];
    memcpy(h, blake2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;  /* depth 1, fanout 1, no key, 8-byte digest */
    uint64_t counted = 0;
    while (n > 128) {
        counted += 128;
        blake2b_compress(h, data, counted, 0);
        data += 128;
        n -= 128;
    }
    memset(block, 0, sizeof block);
    if (n)
        memcpy(block, data, n);
    blake2b_compress(h, block, counted + n, 1);
    return h[0];
}

const char hash64__doc__[] =
"hash64($module, data, /)\n--\n\n"
"BLAKE2b of the bytes-like ``data`` with an 8-byte digest, read little-endian:\n"
"the same number as shmbus.balancer.policies.hash64(data).";

PyObject *
hash64(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = hash64_of(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

/* -- bounds and indexes of a run ------------------------------------------------------ */

/* bounds (a list of ints, ascending, within a buffer of ``len`` bytes) as offsets. */
static uint64_t *
bounds_of(PyObject *bounds, Py_ssize_t len, Py_ssize_t *count)
{
    if (!PyList_CheckExact(bounds) || PyList_GET_SIZE(bounds) < 1) {
        PyErr_SetString(PyExc_TypeError, "bounds must be a non-empty list of ints");
        return NULL;
    }
    Py_ssize_t m = PyList_GET_SIZE(bounds);
    uint64_t *b = PyMem_Malloc(sizeof(uint64_t) * (size_t)m);
    if (b == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        b[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(bounds, i));
        if (b[i] == (uint64_t)-1 && PyErr_Occurred())
            goto bad;
        if (b[i] > (uint64_t)len || (i && (b[i] < b[i - 1] + RECORD_HEADER ||
                                           (b[i] - b[i - 1]) & 7))) {
            PyErr_SetString(PyExc_ValueError, "bounds are not records of the run's data");
            goto bad;
        }
    }
    *count = m - 1;
    return b;
bad:
    PyMem_Free(b);
    return NULL;
}

/* -- Sequencer.forward ---------------------------------------------------------------- */

const char Sequencer_forward__doc__[] =
"forward($self, data, bounds, indexes, flags, /)\n--\n\n"
"Append records ``indexes`` (a range or list, ascending) of a run (record i is\n"
"data[bounds[i]:bounds[i + 1]]) to this ring, giving each the ring's next seq and\n"
"``flags``, and publish them; return how many (all), or None when they need the\n"
"slow path first (Room._reserve: wrapping, room, a closed producer).";

PyObject *
Sequencer_forward(Sequencer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "forward takes 4 arguments");
        return NULL;
    }
    if (self->reserve == NULL) {
        PyErr_SetString(PyExc_TypeError, "Sequencer was not initialised");
        return NULL;
    }
    PyObject *indexes = args[2], *idx_fast = NULL, *result = NULL;
    long flags = PyLong_AsLong(args[3]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    if (flags < 0 || flags > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "flags must be 0..65535");
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t m;
    uint64_t *b = bounds_of(args[1], src.len, &m);
    if (b == NULL)
        goto done;
    /* The records to copy: [lo, hi) for a range, else a list of indexes. */
    Py_ssize_t lo = 0, hi = 0, count;
    int ranged = PyRange_Check(indexes);
    if (ranged) {
        PyObject *start = PyObject_GetAttrString(indexes, "start");
        PyObject *stop = start ? PyObject_GetAttrString(indexes, "stop") : NULL;
        PyObject *step = stop ? PyObject_GetAttrString(indexes, "step") : NULL;
        if (step) {
            lo = PyLong_AsSsize_t(start);
            hi = PyLong_AsSsize_t(stop);
            if (PyLong_AsSsize_t(step) != 1 && !PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "indexes must ascend by 1");
        }
        Py_XDECREF(start);
        Py_XDECREF(stop);
        Py_XDECREF(step);
        if (PyErr_Occurred())
            goto done;
        if (hi < lo)
            hi = lo;
        count = hi - lo;
    }
    else {
        idx_fast = PySequence_Fast(indexes, "indexes must be a range or a list");
        if (idx_fast == NULL)
            goto done;
        count = PySequence_Fast_GET_SIZE(idx_fast);
    }
    uint64_t total = 0;
    Py_ssize_t prev = -1;
    Py_ssize_t *at = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    if (at == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t i = ranged ? lo + k
                              : PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(idx_fast, k));
        if (i == -1 && PyErr_Occurred())
            goto free_at;
        if (i <= prev || i >= m) {
            PyErr_SetString(PyExc_ValueError, "indexes must ascend within the run");
            goto free_at;
        }
        at[k] = prev = i;
        total += b[i + 1] - b[i];
    }
    if (count == 0) {
        result = PyLong_FromLong(0);
        goto free_at;
    }
    if (!self->hold.held || sequencer_needs_reserve(self, total)) {
        result = Py_NewRef(Py_None);
        goto free_at;
    }
    uint64_t pos = self->write, seq = self->seq;
    unsigned char *out = self->data + (pos & self->mask);
    const unsigned char *in = src.buf;
    /* One copy per stretch of records adjacent in the source. */
    for (Py_ssize_t k = 0, run = 0; k < count; k = run) {
        run = k + 1;
        while (run < count && at[run] == at[run - 1] + 1)
            run++;
        uint64_t from = b[at[k]], to = b[at[run - 1] + 1];
        memmove(out, in + from, to - from);
        out += to - from;
    }
    uint64_t rec = pos, last = pos;
    uint16_t f16 = (uint16_t)flags;
    for (Py_ssize_t k = 0; k < count; k++) {
        uint64_t size = b[at[k] + 1] - b[at[k]];
        unsigned char *r = self->data + (rec & self->mask);
        memcpy(r + 6, &f16, 2);
        memcpy(r + 8, &seq, 8);
        seq++;
        sequencer_checkpoint(self, rec, size);  /* a record starting a new block */
        last = rec;
        rec += size;
    }
    self->seq = seq;
    self->write = rec;
    if (sequencer_publish(self, rec, last) == 0)
        result = PyLong_FromSsize_t(count);
free_at:
    PyMem_Free(at);
done:
    Py_XDECREF(idx_fast);
    if (b)
        PyMem_Free(b);
    PyBuffer_Release(&src);
    return result;
}

/* -- scan_records ------------------------------------------------------------------- */

const char scan_records__doc__[] =
"scan_records($module, data, idx, limit, stop, max_records, expect, max_record,\n"
"             pad_flag, /)\n--\n\n"
"Walk up to ``max_records`` records of ``data`` (a consumer's data area) from\n"
"``idx``: each must start below ``stop``, end at or below ``limit``, be no padding,\n"
"at most ``max_record`` bytes, and carry the seq ``expect``, ``expect + 1``, ...\n"
"Return (bounds, stride, next_seq): the records' starts and the end of the last\n"
"one, their common size (0 if they differ), and the seq after the last.  No record\n"
"(bounds == [idx]) if the first one breaks a rule: the caller says why.";

PyObject *
scan_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "scan_records takes 8 arguments");
        return NULL;
    }
    unsigned long long v[7];
    for (int i = 0; i < 7; i++) {
        v[i] = PyLong_AsUnsignedLongLong(args[i + 1]);
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    uint64_t idx = v[0], limit = v[1], stop = v[2], max_records = v[3], expect = v[4];
    uint64_t max_record = v[5], pad_flag = v[6];
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *bounds = NULL, *result = NULL;
    if (limit > (uint64_t)src.len || idx > limit) {
        PyErr_SetString(PyExc_ValueError, "idx and limit must lie within data");
        goto done;
    }
    /* Every header read lies within data, whatever the caller says. */
    uint64_t header_fits = (uint64_t)src.len >= RECORD_HEADER
                               ? (uint64_t)src.len - RECORD_HEADER + 1 : 0;
    if (stop > header_fits)
        stop = header_fits;
    bounds = PyList_New(0);
    if (bounds == NULL)
        goto done;
    const unsigned char *in = src.buf;
    uint64_t stride = UINT64_MAX;
    for (uint64_t k = 0; k < max_records && idx < stop; k++) {
        uint32_t plen;
        uint16_t klen, flags;
        uint64_t seq;
        memcpy(&plen, in + idx, 4);
        memcpy(&klen, in + idx + 4, 2);
        memcpy(&flags, in + idx + 6, 2);
        memcpy(&seq, in + idx + 8, 8);
        uint64_t size = ((uint64_t)RECORD_HEADER + 7 + klen + plen) & ~(uint64_t)7;
        if ((flags & pad_flag) || size > max_record || idx + size > limit || seq != expect)
            break;
        PyObject *at = PyLong_FromUnsignedLongLong(idx);
        if (at == NULL || PyList_Append(bounds, at) < 0) {
            Py_XDECREF(at);
            goto done;
        }
        Py_DECREF(at);
        if (size != stride)
            stride = stride == UINT64_MAX ? size : 0;
        idx += size;
        expect++;
    }
    PyObject *end = PyLong_FromUnsignedLongLong(idx);
    if (end == NULL || PyList_Append(bounds, end) < 0) {
        Py_XDECREF(end);
        goto done;
    }
    Py_DECREF(end);
    result = Py_BuildValue("(OKK)", bounds, stride == UINT64_MAX ? 0 : stride, expect);
done:
    Py_XDECREF(bounds);
    PyBuffer_Release(&src);
    return result;
}

/* -- KeyRouter -------------------------------------------------------------------------- */

#define ROUTE_CACHE 4096  /* entries (direct-mapped) of key -> owner */
#define ROUTE_KEY 48      /* longest key cached; longer ones are hashed each time */

typedef struct {
    uint64_t tag;   /* a cheap hash of the key (FNV-1a), 0: empty */
    uint16_t len, owner;
    unsigned char key[ROUTE_KEY];
} RouteEntry;

typedef struct {
    PyObject_HEAD
    uint64_t *points;   /* sorted */
    uint16_t *owners;   /* owner index of each point */
    Py_ssize_t n, owner_count;
    RouteEntry *cache;
} KeyRouter;

static int
KeyRouter_init(KeyRouter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"points", "owners", NULL};
    PyObject *points, *owners;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!:KeyRouter", kwlist, &PyList_Type,
                                     &points, &PyList_Type, &owners))
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(points);
    if (n < 1 || PyList_GET_SIZE(owners) != n) {
        PyErr_SetString(PyExc_ValueError, "points and owners: one owner per point, at "
                        "least one point");
        return -1;
    }
    uint64_t *p = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
    uint16_t *o = PyMem_Malloc(sizeof(uint16_t) * (size_t)n);
    RouteEntry *c = PyMem_Calloc(ROUTE_CACHE, sizeof(RouteEntry));
    Py_ssize_t most = 0;
    if (!p || !o || !c) {
        PyErr_NoMemory();
        goto bad;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        p[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(points, i));
        long w = PyLong_AsLong(PyList_GET_ITEM(owners, i));
        if (PyErr_Occurred())
            goto bad;
        if ((i && p[i] < p[i - 1]) || w < 0 || w > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "points must ascend, owners be 0..65535");
            goto bad;
        }
        o[i] = (uint16_t)w;
        if (w + 1 > most)
            most = w + 1;
    }
    PyMem_Free(self->points);
    PyMem_Free(self->owners);
    PyMem_Free(self->cache);
    self->points = p;
    self->owners = o;
    self->cache = c;
    self->n = n;
    self->owner_count = most;
    return 0;
bad:
    PyMem_Free(p);
    PyMem_Free(o);
    PyMem_Free(c);
    return -1;
}

static void
KeyRouter_dealloc(KeyRouter *self)
{
    PyMem_Free(self->points);
    PyMem_Free(self->owners);
    PyMem_Free(self->cache);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The owner of ``key``: the first point above its hash (bisect_right), wrapping. */
static uint16_t
owner_of(KeyRouter *self, const unsigned char *key, size_t len)
{
    uint64_t tag = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < len; i++)
        tag = (tag ^ key[i]) * 0x100000001B3ULL;
    tag |= 1;  /* never 0, which marks an empty entry */
    RouteEntry *e = &self->cache[(tag >> 7) & (ROUTE_CACHE - 1)];
    if (e->tag == tag && e->len == len && memcmp(e->key, key, len) == 0)
        return e->owner;
    uint64_t h = hash64_of(key, len);
    Py_ssize_t lo = 0, hi = self->n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (h < self->points[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    uint16_t owner = self->owners[lo == self->n ? 0 : lo];
    if (len <= ROUTE_KEY) {
        e->tag = tag;
        e->len = (uint16_t)len;
        e->owner = owner;
        memcpy(e->key, key, len);
    }
    return owner;
}

PyDoc_STRVAR(KeyRouter_owner__doc__,
"owner($self, key, /)\n--\n\n"
"The owner index of ``key`` (bytes-like), as ConsistentHash.owner() names it.");

static PyObject *
KeyRouter_owner(KeyRouter *self, PyObject *key)
{
    if (self->points == NULL) {
        PyErr_SetString(PyExc_TypeError, "KeyRouter was not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint16_t owner = owner_of(self, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(owner);
}

PyDoc_STRVAR(KeyRouter_route__doc__,
"route($self, data, bounds, /)\n--\n\n"
"The owner of each record of a run (record i is data[bounds[i]:bounds[i + 1]]), by\n"
"its key: (owners, picks), owners a bytes of one native uint16 per record, picks a\n"
"list with, for each owner index, the list of its records' indexes.");

static PyObject *
KeyRouter_route(KeyRouter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "route takes 2 arguments");
        return NULL;
    }
    if (self->points == NULL) {
        PyErr_SetString(PyExc_TypeError, "KeyRouter was not initialised");
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *owners = NULL, *picks = NULL, *result = NULL;
    Py_ssize_t m;
    uint64_t *b = bounds_of(args[1], src.len, &m);
    if (b == NULL)
        goto done;
    owners = PyBytes_FromStringAndSize(NULL, m * 2);
    picks = PyList_New(self->owner_count);
    if (owners == NULL || picks == NULL)
        goto done;
    for (Py_ssize_t w = 0; w < self->owner_count; w++) {
        PyObject *l = PyList_New(0);
        if (l == NULL)
            goto done;
        PyList_SET_ITEM(picks, w, l);
    }
    uint16_t *out = (uint16_t *)PyBytes_AS_STRING(owners);
    const unsigned char *in = src.buf;
    for (Py_ssize_t i = 0; i < m; i++) {
        uint16_t klen;
        memcpy(&klen, in + b[i] + 4, 2);
        if (RECORD_HEADER + (uint64_t)klen > b[i + 1] - b[i]) {
            PyErr_SetString(PyExc_ValueError, "a record's key does not fit the record");
            goto done;
        }
        uint16_t w = owner_of(self, in + b[i] + RECORD_HEADER, klen);
        out[i] = w;
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(PyList_GET_ITEM(picks, w), index) < 0) {
            Py_XDECREF(index);
            goto done;
        }
        Py_DECREF(index);
    }
    result = PyTuple_Pack(2, owners, picks);
done:
    Py_XDECREF(owners);
    Py_XDECREF(picks);
    if (b)
        PyMem_Free(b);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef KeyRouter_methods[] = {
    {"route", (PyCFunction)(void (*)(void))KeyRouter_route, METH_FASTCALL,
     KeyRouter_route__doc__},
    {"owner", (PyCFunction)KeyRouter_owner, METH_O, KeyRouter_owner__doc__},
    {NULL}
};

PyDoc_STRVAR(KeyRouter__doc__,
"KeyRouter(points, owners)\n--\n\n"
"A consistent-hash ring: ``points`` (sorted ints) and the owner index (0..65535) of\n"
"each; keys are hashed with hash64 and owned by the first point above their hash.");

PyTypeObject KeyRouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._hotpath.KeyRouter",
    .tp_basicsize = sizeof(KeyRouter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = KeyRouter__doc__,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KeyRouter_init,
    .tp_dealloc = (destructor)KeyRouter_dealloc,
    .tp_methods = KeyRouter_methods,
};
