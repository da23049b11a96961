/* spin_above: the spin phase of waiting (see hotpath.h). */

#include "hotpath.h"

const char spin_above__doc__[] =
"spin_above($module, segment, word, value, spins, /)\n--\n\n"
"Read the 8-byte word at index ``word`` of ``segment`` until it is greater than\n"
"``value``, at most ``spins`` times, without the GIL (other threads run meanwhile);\n"
"return whether it became greater.  The spin phase of a wait strategy: callers spin in\n"
"bounded chunks and check signals, deadlines and closing between them.";

PyObject *
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
