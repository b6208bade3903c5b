/* Placeholder until the fan-out lands: no native lanes, Python sees every packet. */
#include "rr.h"

int rr_is_fanout(PyObject *o) {
    (void)o;
    return 0;
}

int rr_fanout_push(PyObject *fanout, const rr_packet *packet) {
    (void)fanout;
    (void)packet;
    return 1;
}

int rr_register_fanout(PyObject *module) {
    (void)module;
    return 0;
}
