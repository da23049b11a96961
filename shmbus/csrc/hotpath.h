/* shmbus._hotpath: the compiled hot path of shmbus (see shmbus/hotpath.py).
 *
 * This header holds what every type shares (the record format, atomics, a held
 * segment); each type lives in its own file: sequencer.c, reader.c, spin.c, and
 * module.c makes the module.
 *
 * One small type per concept, like CPython's own _struct or _queue:
 *
 *   Sequencer   the producer's cursor (write position, next seq, limit) and its
 *               send(): one record written and published in C; send_many(): a
 *               batch, one publish; forward() (forward.c): records of another
 *               ring copied, restamped and published;
 *   KeyRouter   (forward.c) a consistent-hash ring: a run of records to their
 *               keys' owners, with hash64 (BLAKE2b, = balancer.policies.hash64);
 *   spin_above  the spin phase of waiting: a word read in a loop without the GIL;
 *   Reader      a consumer's read cursor (position, released position, cached write
 *               position, expected seq) and its recv(): one record checked and
 *               handed out as a Message; its recv_many() and try_recv() too, and
 *               checked reads (copy, then re-read the tail) of overwrite rings;
 *   Message     one received message: its payload is a memoryview slice of the ring
 *               made on first use, released (memoryview.release()) with the message.
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

#ifndef SHMBUS_HOTPATH_H
#define SHMBUS_HOTPATH_H

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
#define REC_REDELIVERY_SHIFT 8  /* flags bits 8-15: times delivered before (layout) */
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
static inline int
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

static inline void
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

/* A payload view handed out by Message.data, released when its message is. */
typedef struct {
    uint64_t end;             /* the message's end: released once committed >= end */
    PyObject *view;
} Kept;

typedef struct {
    PyObject_HEAD
    Hold hold;                /* the whole mapped segment (let go by release()) */
    unsigned char *data;      /* the data area */
    unsigned char *write_at;  /* header word: WRITE */
    unsigned char *tail_at;   /* header word: TAIL (checked reads) */
    unsigned char *psleep_at; /* header word: the producer's SLEEP epoch */
    unsigned char *read_at;   /* this consumer's slot: READ */
    unsigned char *next_at;   /* this consumer's slot: NEXT_SEQ (overwrite rings), or NULL */
    uint64_t mask, pad_limit, safe_from;
    uint64_t pos, committed, wcache, expect;
    int has_expect;           /* expect is known (else the Python path decides) */
    int lapped, loose;        /* the Python path must judge the next seq (consumer.py) */
    Py_ssize_t spins;         /* reads of WRITE before an empty recv goes to Python */
    Kept *kept;               /* views handed out and not yet released */
    Py_ssize_t nkept, kept_room;
    PyObject *data_view;      /* memoryview of the data area: payloads slice it */
    PyObject *owner;          /* the Consumer, as each Message names it */
    PyObject *take;           /* the pure-Python slow path: take(timeout) */
    PyObject *take_next;      /* take_next(): the next message now, or None */
    PyObject *try_take;       /* try_take(): take(0), or None on Timeout */
    PyObject *wake;           /* wakes a sleeping producer: wake(epoch) */
} Reader;

/* The cursor's steps, shared by its send, send_many and forwarding (sequencer.c). */
void sequencer_checkpoint(Sequencer *self, uint64_t pos, uint64_t size);
int sequencer_needs_reserve(Sequencer *self, uint64_t size);
int sequencer_publish(Sequencer *self, uint64_t end, uint64_t last);
int sequencer_reserve(Sequencer *self, uint64_t size, Py_ssize_t klen, Py_ssize_t n,
                      PyObject *timeout, PyObject *deadline, uint64_t *pos);

/* Message: one received message (message.c).  The payload is ``length`` bytes at
 * ``start`` in the reader's data area (zero-copy), or ``copy`` (checked reads), or the
 * ``view`` a Python caller gave; its memoryview is made on first use of ``data`` and
 * kept by the reader until the message is released. */
typedef struct {
    PyObject_HEAD
    PyObject *view;           /* the payload's memoryview, once made (or given) */
    PyObject *copy;           /* bytes: the payload of a checked read, or NULL */
    PyObject *key;            /* bytes or None */
    Reader *cur;              /* the consumer's cursor: released once committed >= end */
    Py_ssize_t start, length;
    uint64_t seq, ts, end;
    uint32_t flags;
    int kept;                 /* view is in cur's kept list */
} Message;

extern PyTypeObject MessageType;
PyObject *message_make(Reader *cur, PyObject *key, PyObject *copy, Py_ssize_t start,
                       Py_ssize_t length, uint64_t seq, uint64_t ts, uint64_t end);
int reader_keep(Reader *cur, uint64_t end, PyObject *view);
int reader_commit(Reader *cur, uint64_t end, int has_next, uint64_t next_seq);

/* The types and functions each file gives the module. */
extern PyTypeObject SequencerType;
extern PyTypeObject ReaderType;
extern PyTypeObject KeyRouterType;
PyObject *Sequencer_forward(Sequencer *self, PyObject *const *args, Py_ssize_t nargs);
extern const char Sequencer_forward__doc__[];
PyObject *scan_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char scan_records__doc__[];
PyObject *hash64(PyObject *module, PyObject *data);
extern const char hash64__doc__[];
PyObject *spin_above(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char spin_above__doc__[];

#endif
