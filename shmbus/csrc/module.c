/* The module shmbus._hotpath: its types and functions, and what it was built from. */

#include "hotpath.h"

static PyMethodDef hotpath_functions[] = {
    {"spin_above", (PyCFunction)(void (*)(void))spin_above, METH_FASTCALL,
     spin_above__doc__},
    {"scan_records", (PyCFunction)(void (*)(void))scan_records, METH_FASTCALL,
     scan_records__doc__},
    {"hash64", (PyCFunction)hash64, METH_O, hash64__doc__},
    {NULL}
};

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
            PyModule_AddType(m, &MessageType) < 0 ||
            PyModule_AddType(m, &KeyRouterType) < 0 ||
            PyModule_AddStringConstant(m, "SOURCE_HASH", SHMBUS_SOURCE_HASH) < 0 ||
            PyModule_AddStringConstant(m, "RECORD_FORMAT", RECORD_FORMAT) < 0 ||
            PyModule_AddIntConstant(m, "REDELIVERY_SHIFT", REC_REDELIVERY_SHIFT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

