/* Placeholder until the native inbound path lands. */
#include "rr.h"

int rr_register_inbound(PyObject *module) {
    (void)module;
    return 0;
}
